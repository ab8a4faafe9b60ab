"""`dhat attention` as a library function: Grad-CAM IoU of a checkpoint with ground-truth
masks on every split of its dataset that has them (the measures: `dhat.eval.attention`), and
bounding boxes turned into masks."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from ..checkpoint import load_model, read_checkpoint
from ..config import AttentionConfig, resolve_device
from ..data.datasets import load_dataset
from ..errors import UserError
from ..eval.attention import attention_iou, attention_maps, attention_per_image, eps_key, iou
from ..io import write_json
from ..models.registry import cam_layer
from .overlay import save_overlay_grid, select_per_class

__all__ = [
    "iou",
    "attention_maps",
    "attention_per_image",
    "attention_iou",
    "eps_key",
    "boxes_to_masks",
    "masks_from_boxes_file",
    "analyse_checkpoint",
]


def boxes_to_masks(boxes, H: int, W: int) -> torch.Tensor:
    """Bounding boxes in pixel coordinates (x1, y1, x2, y2) -> bool masks (N, H, W).

    boxes: (N, 4), or (N, K, 4) for several objects per image (their union; a box with
    x2 <= x1 or y2 <= y1, or NaNs, is padding and ignored). A pixel is inside a box when its
    centre is: integer boxes cover exactly rows y1..y2-1 and columns x1..x2-1 (slice
    convention, as ImageNet's xmax/ymax read as exclusive).
    """
    b = torch.as_tensor(boxes, dtype=torch.float64)
    if b.dim() == 2:
        b = b[:, None]
    if b.dim() != 3 or b.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4) or (N, K, 4), got {tuple(b.shape)}")
    x1, y1, x2, y2 = (b[..., i, None, None] for i in range(4))  # (N, K, 1, 1)
    xs = torch.arange(W, dtype=torch.float64) + 0.5
    ys = torch.arange(H, dtype=torch.float64) + 0.5
    inside_x = (xs >= x1) & (xs <= x2)  # (N, K, 1, W)
    inside_y = (ys[:, None] >= y1) & (ys[:, None] <= y2)  # (N, K, H, 1)
    valid = ((x2 > x1) & (y2 > y1)).squeeze(-1).squeeze(-1)  # NaN compares False
    m = inside_x & inside_y & valid[..., None, None]
    return m.any(1)


# ----------------------------------------------------------------------------- checkpoints
def masks_from_boxes_file(path: str | Path, size) -> torch.Tensor:
    """(N, H, W) bool masks from a .pt (weights-only) or .json file of boxes."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--boxes: {p} does not exist")
    try:
        boxes = (
            json.loads(p.read_text())
            if p.suffix == ".json"
            else torch.load(p, map_location="cpu", weights_only=True)
        )
        return boxes_to_masks(boxes, *size)
    except (
        ValueError,
        TypeError,
        RuntimeError,
        json.JSONDecodeError,
        pickle.UnpicklingError,
        UnicodeDecodeError,
    ) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"--boxes: {p} is not an (N, 4) or (N, K, 4) box array ({why})") from None


def analyse_checkpoint(cfg: AttentionConfig, progress: bool = True) -> dict:
    """Grad-CAM IoU of a checkpoint on its dataset's (or `cfg.dataset`'s) test masks, and on
    every extra split with masks (e.g. fashion_scenes' mixed_same, mixed_rand, only_fg,
    only_bg): {"checkpoint", "dataset", "dataset_source", "splits": {name: attention_iou(...)}}
    plus the "test" split's numbers at the top level. Writes the JSON (and overlays) and
    returns it. `progress`: a tqdm bar per split."""
    ckpt = Path(cfg.checkpoint)
    state = read_checkpoint(ckpt)
    run = state.get("config", {})
    dataset = cfg.dataset or run.get("dataset") or "shapes"
    same = dataset == run.get("dataset")
    kwargs = dict(run.get("dataset_args", {})) if same else {}
    if "n_train" in kwargs or dataset in ("shapes", "fashion_scenes"):
        kwargs["n_train"] = 0  # the test side only: skip generating the training images
    bundle = load_dataset(
        dataset, root=cfg.data_root or (run.get("data_root") if same else None), **kwargs
    )
    if cfg.boxes:
        bundle.test_masks = masks_from_boxes_file(cfg.boxes, bundle.test_x.shape[-2:])
        bundle.test_x = bundle.test_x[: len(bundle.test_masks)]
        bundle.test_y = bundle.test_y[: len(bundle.test_masks)]
    if bundle.test_masks is None:
        raise UserError(
            f"dataset '{dataset}' has no ground-truth masks; the attention analysis "
            "needs one that has (shapes, fashion_scenes) or --boxes"
        )
    device = resolve_device(cfg.device)
    model = load_model(ckpt, device=device)
    if state["model_spec"]["num_classes"] < bundle.num_classes:
        raise UserError(
            f"the model has {state['model_spec']['num_classes']} outputs but "
            f"'{dataset}' has {bundle.num_classes} classes"
        )
    try:
        cam_layer(model, cfg.layer)
    except (AttributeError, ValueError) as e:
        raise UserError(f"Grad-CAM layer {cfg.layer!r} not found in the model: {e}") from None
    inverse = list(cfg.inverse_eps or [])
    splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]
    splits = {"test": (bundle.test_x, bundle.test_y, bundle.test_masks, None)}
    splits.update(
        {k: (v.x, v.y, v.masks, v.scene_y) for k, v in bundle.splits.items() if v.masks is not None}
    )
    results = {}
    for name, (x, y, m, scene_y) in splits.items():
        n = min(cfg.n, len(y))
        torch.manual_seed(cfg.seed)
        results[name] = attention_iou(
            model,
            x[:n],
            y[:n],
            m[:n],
            threshold=cfg.threshold,
            layer=cfg.layer,
            batch_size=cfg.batch_size,
            inverse_eps=inverse or None,
            null_seed=cfg.seed,
            scene_y=scene_y[:n] if scene_y is not None and name == "mixed_rand" else None,
            desc=f"attention {name}" if progress else None,
        )
        if bundle.class_names:
            for row in results[name]["per_class"]:
                row["name"] = bundle.class_names[row["cls"]]
    res = dict(
        checkpoint=str(ckpt),
        dataset=bundle.name,
        dataset_source="given" if cfg.dataset else "the checkpoint's",
        layer=cfg.layer,
        **results["test"],
        splits=results,
    )
    out = Path(cfg.out) if cfg.out else ckpt.parent / "attention.json"
    write_json(out, res)
    res["path"] = str(out)
    if cfg.overlay:
        x, y, m, _ = splits["test"]
        idx = torch.tensor([i for _, ix in select_per_class(y[: cfg.n].numpy(), 4) for i in ix])
        cams = attention_maps(model, x[idx], y[idx], layer=cfg.layer, batch_size=cfg.batch_size)
        save_overlay_grid(cfg.overlay, x[idx], m[idx], cams, y[idx], bundle.class_names)
    return res

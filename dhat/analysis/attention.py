"""Attention analysis: where does a model look? IoU of binarised Grad-CAM with the object.

The DHAT paper's core claim: inverse adversarial training (UIAT) moves Grad-CAM attention
from the object to the background, and DHAT removes that bias. We measure it as the spec
says: Grad-CAM of the true class (per-image min-max, upsampled, min-max again), binarised
at `threshold` (map >= threshold), then per image

    foreground IoU = |A ∩ M| / |A ∪ M|,   background IoU = |A ∩ (1-M)| / |A ∪ (1-M)|

with M the ground-truth foreground mask, averaged over images (and per class). Optionally
the same on inverse-adversarial images x̌ (inverse PGD, CE descent, step 2/255, 10 steps).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError

__all__ = ["iou", "attention_maps", "attention_per_image", "attention_iou", "boxes_to_masks", "save_overlay_grid",
           "parse_eps", "add_attention_parser", "run_attention"]


# ----------------------------------------------------------------------------- metrics
def iou(pred_mask: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of two bool masks (N, H, W) -> (N,) float. Two empty masks give 1."""
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"iou: shapes differ, {tuple(pred_mask.shape)} vs {tuple(gt_mask.shape)}")
    p, g = pred_mask.bool().flatten(1), gt_mask.bool().flatten(1)
    inter = (p & g).sum(1).double()
    union = (p | g).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


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
    x1, y1, x2, y2 = (b[..., i, None, None] for i in range(4))   # (N, K, 1, 1)
    xs = torch.arange(W, dtype=torch.float64) + 0.5
    ys = torch.arange(H, dtype=torch.float64) + 0.5
    inside_x = (xs >= x1) & (xs <= x2)       # (N, K, 1, W)
    inside_y = (ys[:, None] >= y1) & (ys[:, None] <= y2)   # (N, K, H, 1)
    valid = ((x2 > x1) & (y2 > y1)).squeeze(-1).squeeze(-1)   # NaN compares False
    m = inside_x & inside_y & valid[..., None, None]
    return m.any(1)


# ----------------------------------------------------------------------------- Grad-CAM
def _as_float_images(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float()


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def _inverse_images(model, xb, yb, eps, steps, step_size):
    from ..attacks.pgd import inverse_pgd
    return inverse_pgd(model, xb, yb, eps=eps, step_size=step_size, steps=steps, loss="ce",
                       init="uniform", bn_mode="eval")


def attention_maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   layer: str | nn.Module | None = None, batch_size: int = 256,
                   inverse_eps: float | None = None, inverse_steps: int = 10,
                   inverse_step_size: float = 2 / 255) -> torch.Tensor:
    """Grad-CAM of the true class, (N, H, W) float in [0, 1], on the CPU.

    x: (N, 3, H, W) uint8 or float in [0, 1]; with `inverse_eps` the maps are of the
    inverse-adversarial images (CE descent, `inverse_steps` steps of `inverse_step_size`).
    """
    from ..cam import grad_cam
    dev = _device_of(model)
    out = []
    for lo in range(0, len(y), batch_size):
        xb = _as_float_images(x[lo:lo + batch_size]).to(dev)
        yb = y[lo:lo + batch_size].long().to(dev)
        if inverse_eps is not None:
            xb = _inverse_images(model, xb, yb, inverse_eps, inverse_steps, inverse_step_size)
        out.append(grad_cam(model, xb, yb, layer=layer, bn_mode="eval")[:, 0].cpu())
    if not out:
        return torch.empty(0, *x.shape[-2:])
    return torch.cat(out)


def _summary(fg: torch.Tensor, bg: torch.Tensor, area: torch.Tensor, correct: torch.Tensor,
             y: torch.Tensor) -> dict:
    def m(v):
        return float(v.double().mean()) if v.numel() else float("nan")
    per_class = []
    for c in torch.unique(y).tolist():
        sel = y == c
        per_class.append(dict(cls=int(c), n=int(sel.sum()), fg_iou=m(fg[sel]), bg_iou=m(bg[sel]),
                              cam_area=m(area[sel]), accuracy=m(correct[sel])))
    return dict(fg_iou=m(fg), bg_iou=m(bg), cam_area=m(area), accuracy=m(correct),
                per_class=per_class)


def eps_key(eps: float) -> str:
    """4/255 -> '4/255' (the key of an inverse result)."""
    return f"{eps * 255:g}/255"


def attention_per_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor,
                        *, threshold: float = 0.5, layer: str | nn.Module | None = None,
                        batch_size: int = 256, inverse_eps: Sequence[float] = (),
                        inverse_steps: int = 10, inverse_step_size: float = 2 / 255
                        ) -> dict[float | None, dict[str, torch.Tensor]]:
    """Per-image attention measures, {None (natural) or ε_inv: {"fg", "bg", "area", "correct"}},
    each (N,) float64 on the CPU: foreground IoU, background IoU, attended fraction and top-1
    correctness of the Grad-CAM (true class) binarised at `threshold`."""
    from ..cam import grad_cam
    from ..models.registry import unwrap_parallel
    from ..modes import model_mode
    base = unwrap_parallel(model)
    n = len(y)
    if x.shape[0] != n or masks.shape[0] != n:
        raise UserError(f"attention_iou: {x.shape[0]} images, {n} labels, {masks.shape[0]} masks")
    if masks.shape[-2:] != x.shape[-2:]:
        raise UserError(f"attention_iou: masks are {tuple(masks.shape[-2:])}, "
                        f"images {tuple(x.shape[-2:])}")
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"threshold must lie in [0, 1], got {threshold}")
    dev = _device_of(model)
    masks = masks.bool()
    settings: list[float | None] = [None, *[float(e) for e in inverse_eps]]
    acc: dict[float | None, dict[str, list[torch.Tensor]]] = {
        s: dict(fg=[], bg=[], area=[], correct=[]) for s in settings}
    for lo in range(0, n, batch_size):
        x0 = _as_float_images(x[lo:lo + batch_size]).to(dev)
        yb = y[lo:lo + batch_size].long().to(dev)
        mb = masks[lo:lo + batch_size]
        for s in settings:
            xb = x0 if s is None else _inverse_images(model, x0, yb, s, inverse_steps,
                                                      inverse_step_size)
            cam = grad_cam(model, xb, yb, layer=layer, bn_mode="eval")[:, 0].cpu()
            with torch.no_grad(), model_mode(base, "eval"):
                pred = base(xb).argmax(1).cpu()
            att = cam >= threshold
            a = acc[s]
            a["fg"].append(iou(att, mb))
            a["bg"].append(iou(att, ~mb))
            a["area"].append(att.flatten(1).double().mean(1))
            a["correct"].append((pred == yb.cpu()).double())
    empty = torch.empty(0, dtype=torch.float64)
    return {s: {k: torch.cat(v) if v else empty for k, v in a.items()} for s, a in acc.items()}


def attention_iou(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, *,
                  threshold: float = 0.5, layer: str | nn.Module | None = None,
                  batch_size: int = 256, inverse_eps: float | Sequence[float] | None = None,
                  inverse_steps: int = 10, inverse_step_size: float = 2 / 255) -> dict:
    """Foreground/background IoU of the binarised Grad-CAM (true class) with `masks`.

    x: (N, 3, H, W) uint8 or float in [0, 1]; y: (N,); masks: (N, H, W) bool foregrounds.
    The attention region is `cam >= threshold`. Returns

        {"n", "threshold", "fg_iou", "bg_iou", "cam_area", "mask_area", "accuracy",
         "per_class": [{"cls", "n", "fg_iou", "bg_iou", "cam_area", "accuracy"}, ...],
         "inverse": {"4/255": {same metrics, "eps"}, ...}   # only with inverse_eps}

    fg_iou/bg_iou are means over images of per-image IoU; cam_area is the mean fraction of
    pixels attended; accuracy is clean (or inverse) top-1 on these images. `inverse_eps`:
    one budget or several ([0, 1] units, e.g. 4/255); the inverse images are made by
    dhat.attacks.inverse_pgd (loss "ce", uniform start) in eval mode.
    """
    if inverse_eps is None:
        eps_list: list[float] = []
    elif isinstance(inverse_eps, (int, float)):
        eps_list = [float(inverse_eps)]
    else:
        eps_list = [float(e) for e in inverse_eps]
    per = attention_per_image(model, x, y, masks, threshold=threshold, layer=layer,
                              batch_size=batch_size, inverse_eps=eps_list,
                              inverse_steps=inverse_steps, inverse_step_size=inverse_step_size)
    yc = y.long().cpu()

    def summ(s):
        a = per[s]
        return _summary(a["fg"], a["bg"], a["area"], a["correct"], yc)

    n = len(y)
    out = dict(n=n, threshold=float(threshold), **summ(None),
               mask_area=float(masks.bool().flatten(1).double().mean()) if n else float("nan"))
    if eps_list:
        out["inverse"] = {eps_key(e): dict(eps=e, **summ(e)) for e in eps_list}
    return out


# ----------------------------------------------------------------------------- overlays
def _jet(v: np.ndarray) -> np.ndarray:
    """The 'jet' colour map, (...) in [0, 1] -> (..., 3) in [0, 1]."""
    v = np.clip(v, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([r, g, b], -1)


def _to_hwc01(images) -> np.ndarray:
    x = torch.as_tensor(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def _select(labels: np.ndarray, per_class: int) -> list[tuple[int, list[int]]]:
    rows = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0][:per_class]
        rows.append((int(c), [int(i) for i in idx]))
    return rows


def save_overlay_grid(path, images, masks, cams, labels, class_names: Sequence[str] | None = None,
                      per_class: int = 4, use_matplotlib: bool | None = None) -> Path:
    """A PNG grid: one row per class, `per_class` samples each as (image | mask | CAM overlay).

    images (N, 3, H, W) uint8 or [0, 1]; masks (N, H, W) bool; cams (N, H, W) in [0, 1]
    (jet colour map blended 50/50 over the image); labels (N,). Rendered with matplotlib's
    Agg canvas when matplotlib is installed (`use_matplotlib=None`), else with Pillow.
    Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = _to_hwc01(images)
    msk = torch.as_tensor(masks).bool().cpu().numpy()
    cam = torch.as_tensor(cams).float().cpu().numpy()
    if cam.ndim == 4:
        cam = cam[:, 0]
    lab = torch.as_tensor(labels).long().cpu().numpy()
    if not (len(img) == len(msk) == len(cam) == len(lab)) or len(lab) == 0:
        raise UserError("save_overlay_grid: needs equally many (>0) images, masks, cams, labels")
    names = list(class_names or [])
    rows = _select(lab, max(1, per_class))
    overlay = 0.5 * img + 0.5 * _jet(cam)
    mask_rgb = np.repeat(msk[..., None].astype(np.float32), 3, -1)

    # The whole grid as one array: tiles of `scale`-times upsampled pixels, white gaps.
    H, W = img.shape[1:3]
    scale = max(1, 64 // max(H, W))
    th, tw, gap = H * scale, W * scale, max(2, scale)
    ncol = 3 * max(len(ix) for _, ix in rows)
    grid = np.ones((len(rows) * (th + gap), ncol * (tw + gap) + gap, 3), np.float32)
    for r, (_, ix) in enumerate(rows):
        for k, i in enumerate(ix):
            for j, arr in enumerate((img, mask_rgb, overlay)):
                tile = np.repeat(np.repeat(arr[i], scale, 0), scale, 1)
                x0 = (3 * k + j) * (tw + gap)
                y0 = r * (th + gap)
                grid[y0:y0 + th, x0:x0 + tw] = tile
    grid8 = np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)
    row_names = [names[c] if c < len(names) else str(c) for c, _ in rows]

    if use_matplotlib is None:
        try:
            import matplotlib  # noqa: F401
            use_matplotlib = True
        except ImportError:
            use_matplotlib = False
    if use_matplotlib:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, no pyplot state
        from matplotlib.figure import Figure
        dpi, label_in = 100, 1.2
        fig = Figure(figsize=(grid8.shape[1] / dpi + label_in, grid8.shape[0] / dpi + 0.3), dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((label_in / fig.get_figwidth(), 0.0,
                           1 - label_in / fig.get_figwidth(), 1 - 0.3 / fig.get_figheight()))
        ax.imshow(grid8, interpolation="nearest")
        ax.set_xticks([(j + 0.5) * (tw + gap) for j in range(ncol)])
        ax.set_xticklabels([("image", "mask", "Grad-CAM")[j % 3] for j in range(ncol)], fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks([(r + 0.5) * (th + gap) for r in range(len(rows))])
        ax.set_yticklabels(row_names, fontsize=8)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        fig.savefig(path, format="png", dpi=dpi)
        return path
    from PIL import Image, ImageDraw
    label_w, head = 90, 14
    canvas = Image.new("RGB", (label_w + grid8.shape[1], head + grid8.shape[0]), "white")
    canvas.paste(Image.fromarray(grid8), (label_w, head))
    draw = ImageDraw.Draw(canvas)
    for j in range(ncol):
        draw.text((label_w + j * (tw + gap) + 2, 1), ("image", "mask", "CAM")[j % 3], fill="black")
    for r, nm in enumerate(row_names):
        draw.text((2, head + r * (th + gap) + th // 2 - 5), nm, fill="black")
    canvas.save(path, format="PNG")
    return path


# ----------------------------------------------------------------------------- CLI
def parse_eps(text: str) -> float:
    """'4/255' -> 4/255; a plain number is in /255 units: '4' -> 4/255, '0.5' -> 0.5/255."""
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            v = float(num) / float(den)
        else:
            v = float(s) / 255.0
    except (ValueError, ZeroDivisionError):
        raise UserError(f"bad epsilon {text!r}: write it as 4/255 or 4 (in /255 units)") from None
    if not (0.0 < v <= 1.0) or math.isnan(v):
        raise UserError(f"epsilon {text!r} must lie in (0, 1] as a pixel fraction (e.g. 4/255)")
    return v


def add_attention_parser(subparsers):
    """Add `attention`: Grad-CAM/ground-truth IoU of a checkpoint on a dataset with masks."""
    p = subparsers.add_parser(
        "attention", help="IoU of binarised Grad-CAM with ground-truth object masks",
        description="Grad-CAM (true class) of a checkpoint on a dataset with object masks, "
                    "binarised at --threshold; reports foreground and background IoU, "
                    "optionally also on inverse-adversarial images (--inverse-eps).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model checkpoint path")
    p.add_argument("--dataset", default="shapes", help="a dataset with test masks (default shapes)")
    p.add_argument("--data-root", default=None, help="dataset folder (where it needs one)")
    p.add_argument("--n", type=int, default=2000, help="test images to analyse (default 2000)")
    p.add_argument("--boxes", default=None,
                   help="bounding boxes instead of masks: a .pt/.json file of (N, 4) or (N, K, 4) "
                        "x1,y1,x2,y2 pixel boxes for the first N test images (become masks)")
    p.add_argument("--threshold", type=float, default=0.5, help="attention = cam >= threshold")
    p.add_argument("--inverse-eps", nargs="+", default=None, metavar="EPS",
                   help="also analyse inverse-adversarial images at these budgets "
                        "(4/255, or 4 in /255 units); CE descent, step 2/255, 10 steps")
    p.add_argument("--layer", default=None, help="Grad-CAM layer (dotted path; default the "
                                                 "model's last convolutional stage)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the inverse attack's start")
    p.add_argument("--out", default=None, help="JSON output (default: attention.json beside "
                                               "the checkpoint)")
    p.add_argument("--overlay", default=None, help="also write a PNG grid of overlays here")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default cuda if "
                                                  "available)")
    p.set_defaults(func=run_attention)
    return p


def _load_model(path: str, device: str) -> nn.Module:
    from ..checkpoint import load_model
    return load_model(path, device=device)


def _dataset_kwargs(name: str) -> dict:
    # Only the test split is needed: skip generating the 50k shapes training images.
    return {"n_train": 0} if name == "shapes" else {}


def _masks_from_boxes_file(path: str, size) -> torch.Tensor:
    """(N, H, W) bool masks from a .pt (weights-only) or .json file of boxes."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--boxes: {p} does not exist")
    try:
        boxes = (json.loads(p.read_text()) if p.suffix == ".json"
                 else torch.load(p, map_location="cpu", weights_only=True))
        return boxes_to_masks(boxes, *size)
    except (ValueError, TypeError, RuntimeError, json.JSONDecodeError) as e:
        raise UserError(f"--boxes: {p} is not an (N, 4) or (N, K, 4) box array ({e})") from None


def _fmt(v: float) -> str:
    return "   n/a" if v != v else f"{v:6.3f}"


def run_attention(args) -> dict:
    """The `attention` subcommand: compute, write JSON (and a PNG), print a table."""
    from ..data import shapes as _shapes  # noqa: F401  (registers "shapes")
    from ..data.datasets import load_dataset
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise UserError(f"checkpoint not found: {ckpt}")
    eps = [parse_eps(e) for e in (args.inverse_eps or [])]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here")
    bundle = load_dataset(args.dataset, root=args.data_root, **_dataset_kwargs(args.dataset))
    if getattr(args, "boxes", None):
        bundle.test_masks = _masks_from_boxes_file(args.boxes, bundle.test_x.shape[-2:])
        bundle.test_x = bundle.test_x[:len(bundle.test_masks)]
        bundle.test_y = bundle.test_y[:len(bundle.test_masks)]
    if bundle.test_masks is None:
        raise UserError(f"dataset '{args.dataset}' has no ground-truth masks; the attention "
                        "analysis needs one that has (e.g. shapes)")
    n = min(args.n, len(bundle.test_y))
    x, y, masks = bundle.test_x[:n], bundle.test_y[:n], bundle.test_masks[:n]
    model = _load_model(str(ckpt), device)
    model.eval()
    with torch.no_grad():
        probe = model(_as_float_images(x[:1]).to(_device_of(model)))
    if probe.shape[-1] < bundle.num_classes:
        raise UserError(f"the model has {probe.shape[-1]} outputs but '{args.dataset}' has "
                        f"{bundle.num_classes} classes")
    from ..models.registry import cam_layer
    try:
        cam_layer(model, args.layer)
    except (AttributeError, ValueError) as e:
        raise UserError(f"Grad-CAM layer {args.layer!r} not found in the model: {e}") from None
    torch.manual_seed(args.seed)
    res = attention_iou(model, x, y, masks, threshold=args.threshold, layer=args.layer,
                        batch_size=args.batch_size, inverse_eps=eps or None)
    res = dict(checkpoint=str(ckpt), dataset=bundle.name, layer=args.layer, **res)
    if bundle.class_names:
        for row in res["per_class"]:
            row["name"] = bundle.class_names[row["cls"]]
    out = Path(args.out) if args.out else ckpt.parent / "attention.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, allow_nan=True) + "\n")
    if args.overlay:
        rows = _select(y.numpy(), 4)
        idx = torch.tensor([i for _, ix in rows for i in ix])
        cams = attention_maps(model, x[idx], y[idx], layer=args.layer,
                              batch_size=args.batch_size)
        save_overlay_grid(args.overlay, x[idx], masks[idx], cams, y[idx], bundle.class_names)
    print(f"attention IoU: {bundle.name}, {n} test images, Grad-CAM >= {args.threshold:g}"
          f"{', layer ' + args.layer if args.layer else ''}")
    print(f"{'images':<16}{'fg IoU':>8}{'bg IoU':>8}{'area':>8}{'acc':>8}")
    print(f"{'natural':<16}{_fmt(res['fg_iou']):>8}{_fmt(res['bg_iou']):>8}"
          f"{_fmt(res['cam_area']):>8}{_fmt(res['accuracy']):>8}")
    for key, r in res.get("inverse", {}).items():
        print(f"{'inverse ' + key:<16}{_fmt(r['fg_iou']):>8}{_fmt(r['bg_iou']):>8}"
              f"{_fmt(r['cam_area']):>8}{_fmt(r['accuracy']):>8}")
    print(f"(object covers {res['mask_area']:.1%} of the image on average) -> {out}")
    if args.overlay:
        print(f"overlays -> {args.overlay}")
    return res


add_parser = add_attention_parser
run = run_attention

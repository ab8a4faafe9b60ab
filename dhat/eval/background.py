"""Background reliance on a dataset with object/background splits (e.g. `fashion_scenes`).

For each split (mixed_same, mixed_rand, only_fg, only_bg, ...) on its first `n` images:
clean and PGD-10 accuracy; the BG-gap = acc(mixed_same) − acc(mixed_rand), clean and under
PGD-10; and where the split has masks, the attention measures of `attention.py` — the object
share of the true-class Grad-CAM, the foreground and background IoU of that map binarised at
0.5, each beside its shuffled-mask null, and on mixed_rand the background share of the scene
class's map — on natural images and on inverse-adversarial images (CE descent, 10 steps of
2/255, at `inverse_eps`). Every number carries a 95 % percentile-bootstrap interval over the
test images; the splits share their items, so the BG-gap's bootstrap resamples image pairs,
and measure − null is bootstrapped per image.

With `records` (a dict), every per-image value behind these numbers is added to it
(`record_key`) so that two models evaluated on the same images can be compared pairwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..attacks.robust import AttackFn, correct_under
from .attention import attention_per_image, derangement, eps_key
from .records import images_sha256

GAP_SPLITS = ("mixed_same", "mixed_rand")
IOU_SPLITS = ("mixed_same", "mixed_rand")
SCENE_MAP_SPLITS = ("mixed_rand",)
# per-image attention values kept in the card (as mean and interval): card name -> record name
ATTENTION_MEASURES = {
    "object_share": "share",
    "object_share_null": "share_null",
    "fg_iou": "fg",
    "fg_iou_null": "fg_null",
    "bg_iou": "bg",
    "bg_iou_null": "bg_null",
    "cam_area": "area",
    "scene_bg_share": "scene_bg_share",
    "scene_bg_share_null": "scene_bg_share_null",
}


def setting_name(eps: float | None) -> str:
    """None -> "natural", 4/255 -> "inverse 4/255" (the card's key of an attention setting)."""
    return "natural" if eps is None else f"inverse {eps_key(eps)}"


def record_key(*parts: str) -> str:
    """The per-image record name of a value: parts joined by '|' ("bg|mixed_rand|clean")."""
    return "|".join(parts)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> torch.Tensor:
    """(n_boot, n) indices drawn with replacement, from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, max(n, 1), (n_boot, n), generator=g)


def mean_ci(values: torch.Tensor, idx: torch.Tensor) -> dict[str, Any]:
    """{"value": mean, "ci": [2.5 %, 97.5 %]} of the bootstrap means of (N,) `values`."""
    v = values.double()
    if len(v) == 0 or v.isnan().all():
        return {"value": float("nan"), "ci": [float("nan"), float("nan")]}
    if v.isnan().any():  # a measure undefined on some images (no scene): the same resamples,
        means = v[idx].nanmean(1)  # each averaged over its defined images
        means = means[~means.isnan()]
        lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        return {"value": v.nanmean().item(), "ci": [lo, hi]}
    means = v[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"value": v.mean().item(), "ci": [lo, hi]}


def paired_gap_ci(a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor) -> dict[str, Any]:
    """mean(a) − mean(b) for paired per-image values (N,), with its bootstrap interval."""
    return mean_ci(a.double() - b.double(), idx)


def split_correctness(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Mapping[str, AttackFn | None],
    *,
    batch_size: int,
    device,
    seed: int,
) -> dict[str, torch.Tensor]:
    """{attack name: (N,) bool correctness}; each attack starts from `seed`."""
    out = {}
    for name, attack in attacks.items():
        torch.manual_seed(seed)
        out[name] = correct_under(model, x, y, attack, batch_size=batch_size, device=device)
    return out


def background_measures(
    model,
    splits: dict,
    *,
    attacks: Mapping[str, AttackFn | None],
    inverse_eps: Sequence[float] = (),
    n: int = 0,
    batch_size: int = 256,
    device="cpu",
    seed: int = 0,
    n_boot: int = 1000,
    iou_splits: Sequence[str] = IOU_SPLITS,
    threshold: float = 0.5,
    records: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The measures above on `splits` ({name: Split}) -> a JSON-ready dict:
    {"n", "n_boot", "accuracy": {split: {attack: {"value", "ci"}}},
     "bg_gap": {attack: {"value", "ci"}},
     "attention": {split: {"natural" | "inverse 4/255": {measure: {"value", "ci"}}}},
     "inverse_eps", "threshold", "null_seed"}; the attention measures are ATTENTION_MEASURES
    (scene_bg_* on mixed_rand only) and "object_share_minus_null" (bootstrapped per image).
    `n` = 0 uses every image of each split. The null's derangement is `derangement(n, seed)`.
    """

    out: dict[str, Any] = {
        "n_boot": n_boot,
        "threshold": threshold,
        "inverse_eps": [float(e) for e in inverse_eps],
        "null_seed": seed,
        "accuracy": {},
        "attention": {},
    }
    correct: dict[str, dict[str, torch.Tensor]] = {}
    sizes = []
    for name, split in splits.items():
        m = n or len(split.y)
        x, y = split.x[:m], split.y[:m]
        sizes.append(len(y))
        out.setdefault("images_sha256", {})[name] = images_sha256(x, y)
        idx = bootstrap_indices(len(y), n_boot, seed)
        correct[name] = split_correctness(
            model, x, y, attacks, batch_size=batch_size, device=device, seed=seed
        )
        out["accuracy"][name] = {k: mean_ci(v, idx) for k, v in correct[name].items()}
        if records is not None:
            records.update({record_key("bg", name, k): v for k, v in correct[name].items()})
        if name in iou_splits and split.masks is not None:
            torch.manual_seed(seed)
            scene_y = split.scene_y[:m] if split.scene_y is not None else None
            per = attention_per_image(
                model,
                x,
                y,
                split.masks[:m],
                threshold=threshold,
                batch_size=batch_size,
                inverse_eps=list(inverse_eps),
                null_perm=derangement(len(y), seed),
                scene_y=scene_y if name in SCENE_MAP_SPLITS else None,
            )
            out["attention"][name] = {}
            for s, v in per.items():
                cell = {k: mean_ci(v[r], idx) for k, r in ATTENTION_MEASURES.items() if r in v}
                cell["object_share_minus_null"] = mean_ci(v["share"] - v["share_null"], idx)
                out["attention"][name][setting_name(s)] = cell
                if records is not None:
                    records.update(
                        {record_key("att", name, setting_name(s), r): t for r, t in v.items()}
                    )
    out["n"] = min(sizes) if sizes else 0
    if all(s in correct for s in GAP_SPLITS):
        same, rand = (correct[s] for s in GAP_SPLITS)
        k = min(len(next(iter(same.values()))), len(next(iter(rand.values()))))
        idx = bootstrap_indices(k, n_boot, seed)
        out["bg_gap"] = {a: paired_gap_ci(same[a][:k], rand[a][:k], idx) for a in attacks}
    return out


def robust_gap_ci(
    train_correct: torch.Tensor, test_correct: torch.Tensor, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Train − test accuracy with a bootstrap interval that resamples each set independently."""
    a, b = train_correct.double(), test_correct.double()
    ia, ib = bootstrap_indices(len(a), n_boot, seed), bootstrap_indices(len(b), n_boot, seed + 1)
    diffs = a[ia].mean(1) - b[ib].mean(1)
    lo, hi = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"value": (a.mean() - b.mean()).item(), "ci": [lo, hi]}

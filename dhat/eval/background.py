"""Background reliance on a dataset with object/background splits (e.g. `fashion_scenes`).

For each split (mixed_same, mixed_rand, only_fg, only_bg, ...) on its first `n` images:
clean and PGD-10 accuracy; the BG-gap = acc(mixed_same) − acc(mixed_rand), clean and under
PGD-10; and where the split has masks, the foreground and background IoU of the true-class
Grad-CAM binarised at 0.5, on natural images and on inverse-adversarial images (CE descent,
10 steps of 2/255, at `inverse_eps`). Every number carries a 95 % percentile-bootstrap
interval over the test images; the splits share their items, so the BG-gap's bootstrap
resamples image pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .attention import attention_per_image, eps_key
from .robust import AttackFn, correct_under

GAP_SPLITS = ("mixed_same", "mixed_rand")
IOU_SPLITS = ("mixed_same", "mixed_rand")


def bootstrap_indices(n: int, n_boot: int, seed: int) -> torch.Tensor:
    """(n_boot, n) indices drawn with replacement, from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, max(n, 1), (n_boot, n), generator=g)


def mean_ci(values: torch.Tensor, idx: torch.Tensor) -> dict[str, Any]:
    """{"value": mean, "ci": [2.5 %, 97.5 %]} of the bootstrap means of (N,) `values`."""
    v = values.double()
    if len(v) == 0:
        return {"value": float("nan"), "ci": [float("nan"), float("nan")]}
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
) -> dict[str, Any]:
    """The measures above on `splits` ({name: Split}) -> a JSON-ready dict:
    {"n", "n_boot", "accuracy": {split: {attack: {"value", "ci"}}},
     "bg_gap": {attack: {"value", "ci"}},
     "attention": {split: {"natural" | "inverse 4/255": {"fg_iou", "bg_iou", "cam_area": {...}}}},
     "inverse_eps", "threshold"}. `n` = 0 uses every image of each split."""

    out: dict[str, Any] = {
        "n_boot": n_boot,
        "threshold": threshold,
        "inverse_eps": [float(e) for e in inverse_eps],
        "accuracy": {},
        "attention": {},
    }
    correct: dict[str, dict[str, torch.Tensor]] = {}
    sizes = []
    for name, split in splits.items():
        m = n or len(split.y)
        x, y = split.x[:m], split.y[:m]
        sizes.append(len(y))
        idx = bootstrap_indices(len(y), n_boot, seed)
        correct[name] = split_correctness(
            model, x, y, attacks, batch_size=batch_size, device=device, seed=seed
        )
        out["accuracy"][name] = {k: mean_ci(v, idx) for k, v in correct[name].items()}
        if name in iou_splits and split.masks is not None:
            torch.manual_seed(seed)
            per = attention_per_image(
                model,
                x,
                y,
                split.masks[:m],
                threshold=threshold,
                batch_size=batch_size,
                inverse_eps=list(inverse_eps),
            )
            out["attention"][name] = {
                ("natural" if s is None else f"inverse {eps_key(s)}"): {
                    "fg_iou": mean_ci(v["fg"], idx),
                    "bg_iou": mean_ci(v["bg"], idx),
                    "cam_area": mean_ci(v["area"], idx),
                }
                for s, v in per.items()
            }
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

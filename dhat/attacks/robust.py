"""Accuracy under attack: per-image correctness of a model under an attack (or none)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from ..modes import model_mode
from ..pixels import to_unit

AttackFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def correct_under(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: AttackFn | None,
    *,
    batch_size: int = 256,
    device="cpu",
    desc: str | None = None,
) -> torch.Tensor:
    """(N,) bool: whether each image (uint8 (N,3,H,W) or float in [0,1]) is classified correctly
    after `attack` (None = clean). The model is evaluated in eval mode; its mode is restored."""
    out = []
    batches = range(0, len(labels), batch_size)
    with model_mode(model, "eval"):
        for i in tqdm(batches, desc=desc, leave=False, disable=desc is None):
            x = images[i : i + batch_size].to(device)
            x = to_unit(x)
            y = labels[i : i + batch_size].to(device)
            if attack is not None:
                x = attack(model, x, y)
            with torch.no_grad():
                out.append((model(x).argmax(1) == y).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.bool)


def per_class(correct: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) accuracy per class from (N,) bool correctness (NaN for absent classes)."""
    labels = labels.cpu()
    hits = torch.bincount(labels[correct], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    return hits / total


def worst_case(
    correct: dict[str, torch.Tensor], n_images: dict[str, int]
) -> tuple[dict[str, Any], torch.Tensor]:
    """The per-image worst case over the attacks in `correct` ({attack: (N_a,) bool}) on the
    first m = min(`n_images`) images, those every attack saw: ({"accuracy", "n": m,
    "attacks"}, (m,) bool robust under every attack)."""
    m = min(n_images.values())
    worst = torch.stack([v[:m] for v in correct.values()]).all(0)
    acc = worst.float().mean().item() if m else 0.0
    return {"accuracy": acc, "n": m, "attacks": list(correct)}, worst

"""Accuracy under attack: per-image correctness of a model under an attack (or none)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..modes import model_mode

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
            x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
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

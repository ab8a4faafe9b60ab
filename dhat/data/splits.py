"""Deterministic, class-stratified held-out validation split of a training set."""

from __future__ import annotations

import torch


def validation_split(
    labels: torch.Tensor, size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): `size` images held out, as equal per class as possible, chosen by
    a seeded permutation (the same for every run with this seed and label vector)."""
    n = labels.numel()
    if size <= 0:
        return torch.arange(n), torch.empty(0, dtype=torch.long)
    if size >= n:
        raise ValueError(f"validation size {size} must be below the training-set size {n}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    classes = labels.unique()
    per = [
        size // len(classes) + (1 if i < size % len(classes) else 0) for i in range(len(classes))
    ]
    picks = []
    for c, k in zip(classes.tolist(), per):
        members = perm[labels[perm] == c]
        picks.append(members[:k])
    val = torch.sort(torch.cat(picks)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).squeeze(1), val

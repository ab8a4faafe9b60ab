"""An in-memory batch loader over uint8 images: shuffle, batched augmentation, exact resume."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .augment import random_crop_flip


@dataclass
class Batch:
    """x (B, 3, H, W) float in [0, 1]; y (B,) int64; index (B,) positions in the dataset."""
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor


class BatchLoader:
    """Iterates (x, y, index) batches of `images` (N, 3, H, W) uint8 and `labels` (N,).

    Shuffling and augmentation draw from `generator` only, so saving and restoring
    `generator.get_state()` between epochs reproduces the data order exactly.
    With `world_size > 1`, each rank gets a disjoint, equal slice of every global batch; a last
    global batch that does not divide by the world size loses its last (< world_size) images
    (a different few each epoch), so no rank gets a smaller or empty slice.
    `augment_fn(x, generator)` replaces the CIFAR crop-and-flip when given (e.g. ImageNet's
    random-resized crop); `view_fn(x)` maps stored images to model inputs without augmentation.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 shuffle: bool = False, augment: bool = False, drop_last: bool = False,
                 generator: torch.Generator | None = None, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1, padding: int = 4,
                 augment_fn: Callable | None = None, view_fn: Callable | None = None):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.drop_last, self.device, self.padding = drop_last, torch.device(device), padding
        self.generator = generator or torch.Generator().manual_seed(0)
        self.rank, self.world_size = rank, world_size
        self.augment_fn, self.view_fn = augment_fn, view_fn

    def __len__(self) -> int:
        full, rest = divmod(len(self.labels), self.batch_size)
        return full + int(not self.drop_last and rest >= self.world_size)

    def __iter__(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx].float().div_(255)
            if self.augment and self.augment_fn is not None:
                x = self.augment_fn(x, generator=self.generator)
            elif self.augment:
                x = random_crop_flip(x, self.padding, generator=self.generator)
            elif self.view_fn is not None:
                x = self.view_fn(x)
            if self.world_size > 1:
                per = len(idx) // self.world_size
                sl = slice(self.rank * per, (self.rank + 1) * per)
                idx, x = idx[sl], x[sl]
            yield Batch(x.to(self.device, non_blocking=True),
                        self.labels[idx].to(self.device, non_blocking=True),
                        idx.to(self.device))

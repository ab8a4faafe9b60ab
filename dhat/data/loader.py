"""An in-memory batch loader over uint8 images: shuffle, batched augmentation, exact resume."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .augment import crop_flip, crop_flip_draws

# Datasets up to this size (uint8 bytes) are kept on the training device; CIFAR-10 is 150 MB.
DEVICE_BYTES = 4 << 30


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
    random-resized crop); `view_fn(x)` maps stored images to model inputs without augmentation
    (per image).

    Images and labels are moved to `device` once, if they take at most `device_bytes`
    (otherwise they stay where they are and each batch is copied). At the start of an epoch
    the permutation and every batch's crop-and-flip numbers are drawn, in the order in which
    per-batch `random_crop_flip` calls would draw them (so the batches are the same), and moved
    to the device at once: a batch is then gathered, cropped and flipped there (in uint8, then
    scaled to [0, 1]) with no host copy. The generator has thus advanced by the whole epoch
    after the first batch. `augment_fn` draws per batch, as before.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        padding: int = 4,
        augment_fn: Callable | None = None,
        view_fn: Callable | None = None,
        device_bytes: int = DEVICE_BYTES,
    ):
        self.device = torch.device(device)
        fits = images.numel() * images.element_size() <= device_bytes
        self.store = self.device if fits else images.device  # where the images live
        self.images, self.labels = images.to(self.store), labels.to(self.store)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.drop_last, self.padding = drop_last, padding
        self.generator = generator or torch.Generator().manual_seed(0)
        self.rank, self.world_size = rank, world_size
        self.augment_fn, self.view_fn = augment_fn, view_fn

    def __len__(self) -> int:
        full, rest = divmod(len(self.labels), self.batch_size)
        return full + int(not self.drop_last and rest >= self.world_size)

    def epoch_draws(self) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The epoch's order (N,) and, for the crop-and-flip, its row offsets, column offsets
        and flips over all batches (each (M,) or None; M = the images in the epoch's batches),
        on the storage device."""
        n, bs = len(self.labels), self.batch_size
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        draws: list[torch.Tensor | None] = []
        if self.augment and self.augment_fn is None:
            sizes = [min(bs, n - i * bs) for i in range(len(self))]
            per_batch = [crop_flip_draws(b, self.padding, True, self.generator) for b in sizes]
            draws = [
                None if parts[0] is None else torch.cat(parts).to(self.store)
                for parts in zip(*per_batch)
            ]
        return order.to(self.store), draws

    def __iter__(self):
        order, draws = self.epoch_draws()
        bs = self.batch_size
        for i in range(len(self)):
            idx = order[i * bs : (i + 1) * bs]
            mine = slice(None)
            if self.world_size > 1:
                per = len(idx) // self.world_size
                mine = slice(self.rank * per, (self.rank + 1) * per)
            if self.augment and self.augment_fn is not None:  # draws for the global batch
                x = self.augment_fn(self.images[idx].float().div_(255), generator=self.generator)
                idx, x = idx[mine], x[mine]
            else:
                at = slice(i * bs, i * bs + len(idx))
                idx = idx[mine]
                x = self.images[idx]
                if self.augment:
                    oy, ox, flips = (d if d is None else d[at][mine] for d in draws)
                    x = crop_flip(x, oy, ox, flips, self.padding).float().div_(255)
                else:
                    x = x.float().div_(255)
                    x = self.view_fn(x) if self.view_fn is not None else x
            yield Batch(
                x.to(self.device, non_blocking=True),
                self.labels[idx].to(self.device, non_blocking=True),
                idx.to(self.device),
            )

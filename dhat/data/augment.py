"""Batched augmentation on tensors: random crop with zero padding and horizontal flip.

`random_crop_flip` = `crop_flip_draws` (the random numbers, from one generator, in a fixed
order) + `crop_flip` (applying them, on any device and dtype). The loader draws a whole
epoch's numbers at once and applies them on the device (`BatchLoader`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Draws = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def crop_flip_draws(
    b: int,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Draws:
    """The random numbers of a crop-and-flip of b images, in this order: row offsets (b,),
    column offsets (b,) int64 in [0, 2·padding] (None if padding is 0), flips (b,) bool (None
    without flip). Drawn on the generator's device (`device` without a generator)."""
    dev = generator.device if generator is not None else device
    oy = ox = flips = None
    if padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    if flip:
        flips = torch.rand(b, generator=generator, device=dev) < 0.5
    return oy, ox, flips


def crop_flip(
    x: torch.Tensor,
    oy: torch.Tensor | None,
    ox: torch.Tensor | None,
    flips: torch.Tensor | None,
    padding: int,
) -> torch.Tensor:
    """x (B, C, H, W), any dtype -> same shape: image i cropped at (oy_i, ox_i) of its
    zero-padded copy, then flipped left-right where flips_i. The draws lie on x's device."""
    b, c, h, w = x.shape
    if oy is not None and ox is not None:
        padded = F.pad(x, (padding,) * 4)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, rows, cols]
    if flips is not None:
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    return x


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x (B, C, H, W) -> same shape: each image cropped at a random offset from its zero-padded
    copy (as torchvision's RandomCrop(H, padding)) and flipped left-right with probability 1/2."""
    oy, ox, flips = (
        d if d is None else d.to(x.device)
        for d in crop_flip_draws(len(x), padding, flip, generator, x.device)
    )
    return crop_flip(x, oy, ox, flips, padding)

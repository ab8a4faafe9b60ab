"""Batched augmentation on tensors: random crop with zero padding and horizontal flip."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """x (B, C, H, W) -> same shape: each image cropped at a random offset from its zero-padded
    copy (as torchvision's RandomCrop(H, padding)) and flipped left-right with probability 1/2."""
    b, _, h, w = x.shape
    gen_device = generator.device if generator is not None else x.device
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, rows, cols]
    if flip:
        do = torch.rand(b, generator=generator, device=gen_device).to(x.device) < 0.5
        x = torch.where(do[:, None, None, None], x.flip(3), x)
    return x

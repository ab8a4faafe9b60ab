"""Pixels: the one conversion from stored images (uint8, 0..255) to model inputs in [0, 1]."""

from __future__ import annotations

import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """`x` (any shape) as float32 pixels in [0, 1]: uint8 is divided by 255, a float tensor is
    taken to be in [0, 1] already (cast to float32 when it is not). Returns a new tensor for
    uint8 input; for float32 input it may return `x` itself."""
    return x.float().div(255) if x.dtype == torch.uint8 else x.float()

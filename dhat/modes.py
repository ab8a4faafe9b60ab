"""Explicit train/eval mode for a block of code, restored exactly afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

from torch import nn

BNMode = Literal["train", "eval"]


@contextmanager
def model_mode(model: nn.Module, mode: BNMode):
    """Run a block with `model` in `mode` ("train" or "eval"); every submodule's own
    `training` flag is restored on exit, so the caller's mode never changes."""
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    saved = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield model
    finally:
        for m, training in saved:
            m.training = training


@contextmanager
def frozen_params(model: nn.Module):
    """Temporarily stop parameters from requiring grad (input-only gradients, less work)."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, req in saved:
            p.requires_grad_(req)

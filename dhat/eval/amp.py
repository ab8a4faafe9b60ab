"""Mixed precision for evaluation: a model run under bf16 autocast with fp32 logits."""

from __future__ import annotations

import torch

from ..errors import UserError


class Autocast(torch.nn.Module):
    """`inner` run under `torch.autocast(device_type, bfloat16)`, its logits returned as fp32:
    every forward and backward through it (the attacks' included) computes in bf16 where
    autocast does, while inputs, perturbations and projections stay fp32 outside it."""

    def __init__(self, inner: torch.nn.Module, device_type: str):
        super().__init__()
        self.inner, self.device_type = inner, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.inner(x).float()


def with_amp(model: torch.nn.Module, amp: str, device) -> torch.nn.Module:
    """`model` itself for amp "off", else wrapped in `Autocast` on `device`'s type."""
    if amp == "off":
        return model
    if amp != "bf16":
        raise UserError(f"amp must be 'off' or 'bf16', got '{amp}'")
    return Autocast(model, torch.device(device).type)

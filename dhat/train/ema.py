"""An exponential moving average of the weights (Gowal et al. 2020; Rebuffi et al. 2021).

After optimizer step n (1-based, counted over the whole run), every `every` steps:
    d = min(D, (1 + n) / (10 + n)),   ŵ ← d·ŵ + (1 − d)·w   for every parameter,
and every buffer (BatchNorm running statistics, num_batches_tracked) is *copied* from the
model. Copying follows DM-Improves-AT's `update_bn`: the running statistics are estimates
for the current weights, and an average of them would describe no single set of weights.
The warm-up term makes early averages forget the random initialisation quickly.
CFA's FAWA (`cfa`, `dhat_cfa`) is a different, gated average (once per epoch, only when the
worst class's validation robust accuracy passes a threshold, fixed decay); it stays as it is
and is saved as `fawa`, this one as `ema`.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(decay: float, step: int) -> float:
    """min(D, (1 + n)/(10 + n)) at 1-based step n."""
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    """The averaged copy of a model's state dict (on the model's device)."""

    def __init__(self, model: nn.Module, decay: float, every: int = 1):
        self.decay, self.every = decay, every
        self.params = {k for k, _ in model.named_parameters()}
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average after optimizer step `step` (1-based) if it is an update step."""
        if step % self.every:
            return
        d = ema_decay(self.decay, step)
        for k, v in model.state_dict().items():
            if k in self.params and v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)

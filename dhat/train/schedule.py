"""Learning-rate schedules, per epoch: piecewise constant (no compounding, unlike the official
DHAT script) and the cosine one-cycle that DM-Improves-AT uses."""

from __future__ import annotations

import math


def piecewise_lr(base_lr: float, epoch: int, milestones, gamma: float = 0.1) -> float:
    """lr for 0-based `epoch`: base_lr · gamma^(number of milestones ≤ epoch).
    With milestones (100, 105): epochs 0–99 at 0.1, 100–104 at 0.01, 105+ at 0.001."""
    return base_lr * gamma ** sum(epoch >= m for m in milestones)


def onecycle_lr(
    max_lr: float,
    epoch: int,
    epochs: int,
    warmup: float = 0.025,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """torch.optim.lr_scheduler.OneCycleLR(max_lr, total_steps=epochs, pct_start=warmup),
    stepped once per epoch (DM-Improves-AT's 'cosinew'): cosine warm-up from max_lr/25 to
    max_lr over the first warmup·epochs − 1 steps, then cosine annealing to max_lr/25/1e4."""
    initial, final = max_lr / div_factor, max_lr / div_factor / final_div_factor
    warm_end = float(warmup * epochs) - 1
    phases = [(warm_end, initial, max_lr), (float(epochs - 1), max_lr, final)]
    start = 0.0
    for end, lo, hi in phases:
        if epoch <= end or end == phases[-1][0]:
            pct = (epoch - start) / (end - start) if end > start else 1.0
            return hi + (lo - hi) / 2.0 * (math.cos(math.pi * pct) + 1)
        start = end
    return final

"""The piecewise-constant learning-rate schedule (no compounding, unlike the official script)."""
from __future__ import annotations


def piecewise_lr(base_lr: float, epoch: int, milestones, gamma: float = 0.1) -> float:
    """lr for 0-based `epoch`: base_lr · gamma^(number of milestones ≤ epoch).
    With milestones (100, 105): epochs 0–99 at 0.1, 100–104 at 0.01, 105+ at 0.001."""
    return base_lr * gamma ** sum(epoch >= m for m in milestones)

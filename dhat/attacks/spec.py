"""The PGD family of the attack registry (`registry.py`): one description of an L-inf PGD
attack, shared by evaluation, curves, sanity checks, background measures and the trainer's
validation: what runs is what the card says."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import UserError
from .pgd import pgd

NAME = re.compile(r"(pgd|cw)(\d*)")


@dataclass(frozen=True)
class AttackSpec:
    """L-inf PGD in eval mode from a uniform random start: `loss` "ce" (PGD-K) or "cw" (the
    CW margin; CW∞ = 20 steps). Calling it attacks: (model, x, y) -> x_adv."""

    loss: Literal["ce", "cw"]
    steps: int
    eps: float
    step_size: float

    @property
    def name(self) -> str:
        return f"{'pgd' if self.loss == 'ce' else 'cw'}{self.steps}"

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd(
            model,
            x,
            y,
            eps=self.eps,
            step_size=self.step_size,
            steps=self.steps,
            loss=self.loss,
            init="uniform",
            bn_mode="eval",
        )

    def describe(self) -> str:
        loss = "cross-entropy" if self.loss == "ce" else "CW margin"
        return (
            f"L-inf PGD, {self.steps} steps, {loss} loss, step {self.step_size * 255:g}/255, "
            f"eps {self.eps * 255:g}/255, uniform random start, 1 restart, eval mode"
        )


def make_attack(name: str, eps: float, step_size: float) -> AttackSpec | None:
    """An attack by name: 'clean' (None), 'pgdK' (PGD-K on CE; 'pgd' = 10 steps), 'cw'
    (PGD-20 on the CW margin), 'cwK'."""
    if name == "clean":
        return None
    m = NAME.fullmatch(name)
    if not m or m.group(2) == "0":
        raise UserError(f"unknown PGD attack '{name}': use clean, pgdK (e.g. pgd20), cw or cwK")
    loss: Literal["ce", "cw"] = "ce" if m.group(1) == "pgd" else "cw"
    return AttackSpec(loss, int(m.group(2) or (10 if loss == "ce" else 20)), eps, step_size)

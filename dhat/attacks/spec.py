"""The PGD family of the attack registry (`registry.py`): one description of a PGD attack,
shared by evaluation, curves, sanity checks, background measures and the trainer's
validation: what runs is what the card says."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import UserError
from .pgd import threat_pgd
from .threat import ThreatModel, threat_class, threat_model

NAME = re.compile(r"(pgd|cw)(\d*)")
Loss = Literal["ce", "cw"]


@dataclass(frozen=True)
class AttackSpec:
    """PGD in eval mode in the `norm` ball ("Linf", "L2"), from a uniform random start in it
    (`rand_init`; else from x): `loss` "ce" (PGD-K) or "cw" (the CW margin; CW∞ = 20 steps).
    Calling it attacks: (model, x, y) -> x_adv."""

    loss: Loss
    steps: int
    eps: float
    step_size: float
    norm: str = "Linf"
    rand_init: bool = True

    @classmethod
    def from_threat(
        cls, threat: ThreatModel, *, loss: Loss = "ce", steps: int | None = None
    ) -> AttackSpec:
        """PGD on `loss` against `threat`, with `steps` steps (None: the threat's)."""
        if isinstance(threat.eps, torch.Tensor):
            raise ValueError("an attack spec takes one float eps, not a per-sample tensor")
        return cls(
            loss,
            threat.steps if steps is None else steps,
            float(threat.eps),
            threat.step_size,
            threat.norm,
            threat.rand_init,
        )

    @property
    def threat(self) -> ThreatModel:
        """The threat model this attack runs in."""
        return threat_model(self.norm, self.eps, self.step_size, self.steps, self.rand_init)

    @property
    def name(self) -> str:
        return f"{'pgd' if self.loss == 'ce' else 'cw'}{self.steps}"

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return threat_pgd(model, x, y, self.threat, loss=self.loss, bn_mode="eval")

    def describe(self) -> str:
        loss = "cross-entropy" if self.loss == "ce" else "CW margin"
        t = threat_class(self.norm)
        start = "uniform random start" if self.rand_init else "no random start"
        return (
            f"{t.label} PGD, {self.steps} steps, {loss} loss, step {t.amount(self.step_size)}, "
            f"eps {t.amount(self.eps)}, {start}, 1 restart, eval mode"
        )


def parse_attack(name: str) -> tuple[Loss, int] | None:
    """(loss, steps) of a PGD attack name: 'pgdK' (PGD-K on CE; 'pgd' = 10 steps), 'cw'
    (PGD-20 on the CW margin), 'cwK'; None for 'clean'; a one-line UserError otherwise."""
    if name == "clean":
        return None
    m = NAME.fullmatch(name)
    if not m or m.group(2) == "0":
        raise UserError(f"unknown PGD attack '{name}': use clean, pgdK (e.g. pgd20), cw or cwK")
    loss: Loss = "ce" if m.group(1) == "pgd" else "cw"
    return loss, int(m.group(2) or (10 if loss == "ce" else 20))


def make_attack(
    name: str, eps: float, step_size: float, *, norm: str = "Linf"
) -> AttackSpec | None:
    """An attack by name ('clean' -> None, 'pgdK', 'pgd', 'cw', 'cwK': see `parse_attack`)
    in the `norm` ball of radius eps, with step size `step_size`."""
    parsed = parse_attack(name)
    if parsed is None:
        return None
    threat_class(norm)  # an unknown norm: the one-line UserError now, not at the first call
    return AttackSpec(*parsed, eps, step_size, norm)


def threat_attack(name: str, threat: ThreatModel) -> AttackSpec | None:
    """An attack by name (as `make_attack`; the name's steps) against `threat`."""
    parsed = parse_attack(name)
    if parsed is None:
        return None
    loss, steps = parsed
    return AttackSpec.from_threat(threat, loss=loss, steps=steps)

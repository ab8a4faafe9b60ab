"""Threat models: the norm ball an attack may move in, and its geometry.

A `ThreatModel` holds the budget (ε, step size α, steps, random start or not) and
the three operations a PGD loop needs: a random start in the ball, one step along the
gradient, and the projection back into the ball and into [0, 1]. This follows MadryLab
robustness's `AttackerStep`. Another norm is one more subclass: it registers under its `norm`.

Pixels are in [0, 1]. ε is a float, or a (B,) tensor of per-sample budgets (class-wise
methods) that is broadcast to (B, 1, ..., 1) in x's dtype and device. Every operation
returns a new tensor; the PGD loop (`pgd.pgd_loop`) calls them on detached tensors.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import unknown_name

_NORMS: dict[str, type[ThreatModel]] = {}


@dataclass(frozen=True)
class ThreatModel(ABC):
    """The ε-ball of one norm: `eps` (float or (B,) tensor), `step_size` α, `steps`, and
    `rand_init` (start from a random point of the ball, else from x).

    A float ε is checked when the threat model is built. A tensor ε is checked by the attack
    loop, on the host only (`pgd._check_eps`), so that an accelerator is never synchronised.
    """

    norm: ClassVar[str]  # the registry name, as AutoAttack and RobustBench spell it
    label: ClassVar[str]  # the name in descriptions ("L-inf PGD, ...")
    max_eps: ClassVar[float]  # the largest valid ε (pixel units)

    eps: float | torch.Tensor
    step_size: float
    steps: int
    rand_init: bool = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "norm" in cls.__dict__:
            _NORMS[cls.norm] = cls

    def __post_init__(self) -> None:
        if not isinstance(self.eps, torch.Tensor) and not 0 < float(self.eps) <= self.max_eps:
            raise ValueError(self.eps_error(self.eps))
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")

    @classmethod
    def eps_error(cls, eps) -> str:
        """The message for an ε out of range."""
        return f"eps must lie in (0, {cls.max_eps:g}] (pixel units), got {eps}"

    @classmethod
    def amount(cls, value: float) -> str:
        """A budget (ε or α) as descriptions write it."""
        return f"{value:g}"

    def radius(self, x: torch.Tensor) -> torch.Tensor | float:
        """ε for x (B, ...): a float, or the (B,) tensor as (B, 1, ..., 1) in x's dtype and
        device."""
        if isinstance(self.eps, torch.Tensor):
            return self.eps.to(x).view(-1, *([1] * (x.dim() - 1)))
        return float(self.eps)

    def with_steps(self, steps: int) -> ThreatModel:
        """The same threat model with `steps` steps."""
        return dataclasses.replace(self, steps=steps)

    @abstractmethod
    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_adv (B, ...) into the ε-ball around x, then into [0, 1]."""

    @abstractmethod
    def random_start(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A random point of the ε-ball around x (B, ...), clipped into [0, 1]; drawn from
        `generator` (on x's device; None: the global stream)."""

    @abstractmethod
    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, descend: bool = False) -> torch.Tensor:
        """One step of size α up the gradient (`descend`: down it), not projected."""


@dataclass(frozen=True)
class LinfThreat(ThreatModel):
    """The L∞ ball: sign steps, coordinate-wise clamping, a uniform start in the cube."""

    norm: ClassVar[str] = "Linf"
    label: ClassVar[str] = "L-inf"
    max_eps: ClassVar[float] = 1.0

    @classmethod
    def eps_error(cls, eps) -> str:
        return f"eps must lie in (0, 1] (pixel units, e.g. 8/255), got {eps}"

    @classmethod
    def amount(cls, value: float) -> str:
        return f"{value * 255:g}/255"

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """clamp(min(max(x_adv, x - ε), x + ε), 0, 1)."""
        e = self.radius(x)
        return torch.clamp(torch.min(torch.max(x_adv, x - e), x + e), 0.0, 1.0)

    def random_start(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """clamp(x + δ, 0, 1) with δ uniform in [-ε, ε]^d (one draw per coordinate)."""
        e = self.radius(x)
        noise = (
            torch.empty_like(x).uniform_(-e, e, generator=generator)
            if isinstance(e, float)
            else torch.empty_like(x).uniform_(-1, 1, generator=generator) * e
        )
        return torch.clamp(x + noise, 0.0, 1.0)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, descend: bool = False) -> torch.Tensor:
        """x_adv ± α·sign(grad)."""
        direction = -1.0 if descend else 1.0
        return x_adv + direction * self.step_size * grad.sign()


def _l2(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms of v (B, ...) as (B, 1, ..., 1)."""
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def _safe(n: torch.Tensor) -> torch.Tensor:
    """Norms with zeros raised to the smallest normal number (a zero vector stays zero)."""
    return n.clamp_min(torch.finfo(n.dtype).tiny)


@dataclass(frozen=True)
class L2Threat(ThreatModel):
    """The L2 ball: normalised-gradient steps, radial projection, a start uniform in the ball."""

    norm: ClassVar[str] = "L2"
    label: ClassVar[str] = "L2"
    max_eps: ClassVar[float] = math.inf

    @classmethod
    def eps_error(cls, eps) -> str:
        return f"eps must be > 0 (pixel units, e.g. 0.5), got {eps}"

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x + δ·ε/‖δ‖₂ for δ = x_adv - x outside the ball (x_adv itself inside), then into
        [0, 1] (which moves no coordinate away from x, so the point stays in the ball)."""
        e = self.radius(x)
        delta = x_adv - x
        n = _l2(delta)
        inside = torch.where(n > e, x + delta * (e / _safe(n)), x_adv)
        return torch.clamp(inside, 0.0, 1.0)

    def random_start(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """clamp(x + δ, 0, 1) with δ uniform (by volume) in the ball: direction u/‖u‖₂ with
        u ~ N(0, I), radius ε·U^(1/d) with U ~ U(0, 1) and d = x[0].numel(). In high dimension
        this is close to the sphere (U^(1/3072) > 0.99 with probability 1 - 4e-14)."""
        e = self.radius(x)
        u = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        shape = (x.shape[0], *([1] * (x.dim() - 1)))
        r = torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device)
        r = r ** (1.0 / x[0].numel())
        return torch.clamp(x + u * (e * r / _safe(_l2(u))), 0.0, 1.0)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, descend: bool = False) -> torch.Tensor:
        """x_adv ± α·grad/‖grad‖₂ per sample (a zero gradient does not move)."""
        direction = -1.0 if descend else 1.0
        return x_adv + direction * self.step_size * (grad / _safe(_l2(grad)))


def norms() -> tuple[str, ...]:
    """The registered norms ("Linf", "L2", ...)."""
    return tuple(_NORMS)


def threat_class(norm: str) -> type[ThreatModel]:
    """The ThreatModel subclass of `norm` (case-insensitive); a one-line UserError naming the
    valid norms otherwise."""
    cls = _NORMS.get(norm) or {k.lower(): v for k, v in _NORMS.items()}.get(str(norm).lower())
    if cls is None:
        raise unknown_name("threat model norm", norm, _NORMS)
    return cls


def threat_model(
    norm: str, eps: float | torch.Tensor, step_size: float, steps: int, rand_init: bool = True
) -> ThreatModel:
    """The threat model of `norm` ("Linf", "L2"; case-insensitive) with this budget."""
    return threat_class(norm)(eps, step_size, steps, rand_init)

"""Standard (natural) training and PGD-AT (Madry et al., ICLR 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from ..attacks import pgd
from ..attacks.pgd import Init
from ..modes import BNMode
from ..schema import AT_LEAST_1, option
from .base import Method, accuracy
from .registry import register_method


@register_method("standard")
@dataclass
class Standard(Method):
    """CE(f(x), y) on natural images; also makes the official DHAT's frozen Grad-CAM model."""

    name = "standard"

    def objective(self, model, batch, inputs):
        logits = model(batch.x)
        loss = self.ce(logits, batch.y)
        return loss, {"ce": loss.detach(), "acc": accuracy(logits, batch.y)}


@dataclass
class Adversarial(Method):
    """Shared options of the methods that train on a PGD example x̂ (CE, uniform start).
    ε, the step size and the step count are the run's threat model (`--eps`, `--step-size`,
    `--steps`), filled in by the trainer: one source for the budget."""

    eps: float = option(8 / 255, "L-inf budget of x̂ (the run's --eps)", budget=True, flag=False)
    step_size: float = option(2 / 255, "PGD step (the run's --step-size)", budget=True, flag=False)
    steps: int = option(10, "PGD steps (the run's --steps)", range=AT_LEAST_1, flag=False)
    bn_mode: BNMode = option("train", "BatchNorm mode during the attacks")

    def adversarial(self, model, batch, init: Init = "uniform", eps=None):
        """x̂ = PGD-`steps` on CE(f(x̂), y) from `init` (uniform by default), BN in `bn_mode`,
        within `eps` (a float or per-sample (B,) tensor; default the run's ε)."""
        return pgd(
            model,
            batch.x,
            batch.y,
            eps=self.eps if eps is None else eps,
            step_size=self.step_size,
            steps=self.steps,
            loss="ce",
            init=init,
            bn_mode=self.bn_mode,
        )


@register_method("pgd_at")
@dataclass
class PGDAT(Adversarial):
    """PGD-AT: CE(f(x̂), y), x̂ = PGD-10 (ε 8/255, α 2/255). BN in train mode for the attack by
    default, as in the official DHAT/UIAT code (`bn_mode="eval"` for the TRADES-style recipe)."""

    name = "pgd_at"

    def inputs(self, model, batch):
        return {"x_adv": self.adversarial(model, batch)}

    def objective(self, model, batch, inputs):
        logits = model(inputs["x_adv"])
        loss = self.ce(logits, batch.y)
        return loss, {"ce": loss.detach(), "adv_acc": accuracy(logits, batch.y)}

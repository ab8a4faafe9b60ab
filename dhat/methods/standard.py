"""Standard (natural) training and PGD-AT (Madry et al., ICLR 2018)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..attacks import pgd
from ..modes import BNMode
from .base import Method, accuracy
from .registry import register_method


@register_method("standard")
@dataclass
class Standard(Method):
    """CE(f(x), y) on natural images. Also produces the frozen Grad-CAM model of the official DHAT."""

    name = "standard"

    def objective(self, model, batch, inputs):
        logits = model(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        return loss, {"ce": loss.item(), "acc": accuracy(logits, batch.y)}


@dataclass
class Adversarial(Method):
    """Shared options of the methods that train on a PGD example x̂ (CE, uniform start)."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    bn_mode: BNMode = "train"

    def adversarial(self, model, batch):
        """x̂ = PGD-`steps` on CE(f(x̂), y) with a uniform start, BN in `bn_mode`."""
        return pgd(model, batch.x, batch.y, eps=self.eps, step_size=self.step_size,
                   steps=self.steps, loss="ce", init="uniform", bn_mode=self.bn_mode)


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
        loss = F.cross_entropy(logits, batch.y)
        return loss, {"ce": loss.item(), "adv_acc": accuracy(logits, batch.y)}

"""MART (Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified
Examples", ICLR 2020; official code YisenWang/MART@2d83e17).

The paper's objective (its final MART loss; the equation as reconstructed here, not
checked against the paper text): BCE(p(x′), y) + λ·KL(p(x) ‖ p(x′))·(1 − p_y(x)), with
BCE = −log p_y(x′) − log(1 − max_{k≠y} p_k(x′)). The official code (mart.py:38-56), which is
what is implemented, stabilisers included:
L = (1/B) Σ_i [ CE(f(x′_i), y_i) − log(1.0001 − p_ŷ(x′_i) + 1e-12)
      + β · Σ_c p_c(x_i)(log p_c(x_i) − log(p_c(x′_i) + 1e-12)) · (1.0000001 − p_y(x_i)) ]
ŷ_i is the most probable wrong class under p(x′_i). Nothing is detached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attacks.pgd import Init
from ..modes import BNMode
from ..schema import NONNEG, option
from .base import accuracy, smoothed_ce
from .registry import register_method
from .standard import Adversarial


def mart_terms(
    z_nat: torch.Tensor, z_adv: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three batch-mean terms (CE on x′, margin, weighted KL) of the official MART loss;
    `label_smoothing` applies to the CE term only."""
    p_adv = F.softmax(z_adv, 1)
    p_nat = F.softmax(z_nat, 1)
    top2 = p_adv.argsort(1)[:, -2:]  # mart.py:44-46: top-2 unless top-1 is wrong
    y_wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    ce = smoothed_ce(z_adv, y, label_smoothing)
    margin = F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), y_wrong)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p_nat, reduction="none").sum(1)
    p_true = p_nat.gather(1, y[:, None]).squeeze(1)
    return ce, margin, (kl * (1.0000001 - p_true)).mean()


@register_method("mart")
@dataclass
class MART(Adversarial):
    """MART. Defaults from the official code: β 6 (WRN script and `mart_loss`; the ResNet-18
    script uses 5), x′ = PGD-10 on CE from a gauss start (0.001) with BN in eval mode
    (mart.py:17-34); train-mode forwards natural then adversarial. ε 8/255 and α 2/255 are
    the library threat model; the official values are ε 0.031, α 0.007."""

    name = "mart"
    beta: float = option(6.0, "weight β of the misclassification-aware KL term", range=NONNEG)
    bn_mode: BNMode = option("eval", "BatchNorm mode during the attack")
    init: Init = option("gauss", "attack start: gauss (x + 0.001·N(0, I)), uniform or none")

    def inputs(self, model, batch):
        return {"x_adv": self.adversarial(model, batch, init=self.init)}

    def objective(self, model, batch, inputs):
        z_nat = model(batch.x)
        z_adv = model(inputs["x_adv"])
        ce, margin, kl = mart_terms(z_nat, z_adv, batch.y, self.info.label_smoothing)
        loss = ce + margin + self.beta * kl
        return loss, {
            "ce": ce.detach(),
            "margin": margin.detach(),
            "kl": kl.detach(),
            "acc": accuracy(z_nat, batch.y),
            "adv_acc": accuracy(z_adv, batch.y),
        }

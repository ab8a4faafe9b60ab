"""TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
ICML 2019; official code yaodongyu/TRADES@6e8e11b).

Objective (README.md:29 of the official code; trades.py:79-83):
L = (1/B) Σ_i CE(f(x_i), y_i) + β · (1/B) Σ_i KL(p(x_i) ‖ p(x′_i)), nothing detached, with
x′ = PGD on Σ_i KL(p(x_i) ‖ p(x′_i)) (p(x) fixed), start x + 0.001·N(0, I), BN in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attacks import pgd
from ..attacks.pgd import Init
from ..models import unwrap_parallel
from ..modes import BNMode, model_mode
from ..schema import NONNEG, option
from .base import accuracy, smoothed_ce
from .registry import register_method
from .standard import Adversarial


def trades_terms(
    z_nat: torch.Tensor,
    z_adv: torch.Tensor,
    y: torch.Tensor,
    z_target: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (B,) CE(z_nat, y) and KL(softmax(z_target) ‖ softmax(z_adv)) summed over
    classes; z_target defaults to z_nat. Nothing is detached (as in the official code).
    `label_smoothing` applies to the CE term only."""
    z_target = z_nat if z_target is None else z_target
    ce = smoothed_ce(z_nat, y, label_smoothing, "none")
    kl = F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z_target, 1), reduction="none").sum(1)
    return ce, kl


@register_method("trades")
@dataclass
class TRADES(Adversarial):
    """TRADES: CE(f(x), y) + β·KL(p(x) ‖ p(x′)) batchmean, nothing detached.

    Defaults: β 6 (official CIFAR script, train_trades_cifar10.py:37; the function default is
    1.0), KL attack with a gauss start (0.001), BN in eval mode for the attack, 10 steps.
    ε 8/255 and α 2/255 are the library threat model; the official values are ε 0.031 and
    α 0.007 (pass eps=0.031, step_size=0.007 to reproduce them).
    extra_forward: the official loss makes three train-mode forwards, f(x) for CE, f(x′), then
    f(x) again for the KL target. The gradients are identical to reusing f(x); the third
    forward only adds one BN running-statistics update. True (default) keeps it.
    """

    name = "trades"
    beta: float = option(6.0, "weight β of the KL robustness term", range=NONNEG)
    bn_mode: BNMode = option("eval", "BatchNorm mode during the attack")
    init: Init = option("gauss", "attack start: gauss (x + 0.001·N(0, I)), uniform or none")
    extra_forward: bool = option(
        True,
        "the official third train-mode forward f(x) for the KL "
        "target (same gradients, one more BN update)",
    )

    def kl_adversarial(self, model, batch, eps) -> torch.Tensor:
        """x′ = PGD-`steps` ascent on Σ_i KL(p(x_i) ‖ p(x′_i)); eps a float or (B,) tensor.
        p(x) is computed once, in `bn_mode`, without gradient (trades.py:36-37 recomputes it
        each step with the same value)."""
        net = unwrap_parallel(model)
        with torch.no_grad(), model_mode(net, self.bn_mode):
            p_nat = F.softmax(net(batch.x), 1)
        return pgd(
            model,
            batch.x,
            batch.y,
            eps=eps,
            step_size=self.step_size,
            steps=self.steps,
            loss="kl",
            p_ref=p_nat,
            init=self.init,
            bn_mode=self.bn_mode,
        )

    def inputs(self, model, batch):
        return {"x_adv": self.kl_adversarial(model, batch, self.eps)}

    def forwards(self, model, batch, x_adv):
        """Train-mode logits f(x), f(x′) and the KL target, in the official order."""
        z_nat = model(batch.x)
        z_adv = model(x_adv)
        return z_nat, z_adv, model(batch.x) if self.extra_forward else z_nat

    def objective(self, model, batch, inputs):
        z_nat, z_adv, z_target = self.forwards(model, batch, inputs["x_adv"])
        ce, kl = trades_terms(z_nat, z_adv, batch.y, z_target, self.info.label_smoothing)
        loss = ce.mean() + self.beta * kl.mean()
        return loss, {
            "ce": ce.mean().detach(),
            "kl": kl.mean().detach(),
            "acc": accuracy(z_nat, batch.y),
            "adv_acc": accuracy(z_adv, batch.y),
        }

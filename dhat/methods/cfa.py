"""CFA (Wei, Wang, Guo, Wang, "CFA: Class-wise Calibrated Fair Adversarial Training",
CVPR 2023; official code PKU-ML/CFA@071f333): CCM + CCR + FAWA on TRADES (or PGD-AT).

TRADES mode (attack.py:110-150), per batch with b_c the class-wise weight:
L = (1/B) Σ_i [ (1 − b_{y_i})·CE(f(x_i), y_i) + b_{y_i}·KL(p(x_i) ‖ p(x′_i)) ],
x′ = PGD on the summed KL, gauss start (0.001), projection on ε_{y_i} (CCM), BN in eval mode.
AT mode (attack.py:33-72): CE(f(x′), y), x′ = PGD on CE from a uniform start in ±ε_{y_i}, BN
in train mode. See `classwise` for R_c, ε_c, b_c and FAWA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..modes import BNMode
from ..schema import UNIT, option
from .base import accuracy
from .classwise import ClassWise, class_beta_weight, class_eps, fawa_update
from .registry import register_method
from .trades import TRADES, trades_terms

__all__ = ["CFA", "class_beta_weight", "class_eps", "fawa_update"]


@register_method("cfa")
@dataclass
class CFA(ClassWise, TRADES):
    """CFA. Defaults from the official code (train.py:17-47): mode TRADES, β 6, `ccm_lambda`
    λ1 = `ccr_lambda` λ2 = 0.5, begin 10, FAWA δ 0.88 and τ 0.24, ε 8/255, α 2/255, 10 steps.
    `ccm` and `ccr` are official flags that are off unless given; both are on here, as the
    paper's CFA uses all three components (the README's example is AT + CCM with τ 0.2).
    `bn_mode` None: the official mode per base (eval for TRADES, train for AT). `init`
    applies to TRADES mode; the AT attack always starts uniform in ±ε_{y_i}.

    Without CCR, b = β/(1 + β) = 6/7: the official TRADES loss divided by 1 + β (this scale
    is kept). Differences from the official code: R_c divides by the true class counts (the
    official divides by N/10); the train-mode clean forward after each step, made only for
    logging, is not made.
    """

    name = "cfa"
    mode: Literal["trades", "at"] = option("trades", "base loss: trades (CCR applies) or at")
    ccr: bool = option(True, "class-wise TRADES β (CCR) from epoch `begin`")
    ccr_lambda: float = option(0.5, "CCR's λ2 in β_c = (λ2 + R_c)·β", range=UNIT)
    bn_mode: BNMode | None = option(  # type: ignore[assignment]  # __post_init__ resolves None
        None, "BatchNorm mode during the attack; None: eval for trades, train for at"
    )

    def __post_init__(self):
        if self.mode not in ("trades", "at"):
            raise ValueError(f"CFA mode must be 'trades' or 'at', got {self.mode!r}")
        if self.bn_mode is None:
            self.bn_mode = "train" if self.mode == "at" else "eval"

    def kl_weight(self, y):
        """b_{y_i} (CCR from epoch `begin`), else the constant β/(1 + β)."""
        if self.ccr and self.calibrated():
            return class_beta_weight(self.train_class_acc, self.beta, self.ccr_lambda)[y]
        return self.beta / (1 + self.beta)

    def inputs(self, model, batch):
        if self.mode == "at":
            return {"x_adv": self.adversarial(model, batch)}
        return {"x_adv": self.kl_adversarial(model, batch, self.sample_eps(batch.y))}

    def objective(self, model, batch, inputs):
        if self.mode == "at":
            z_adv = model(inputs["x_adv"])
            loss = self.ce(z_adv, batch.y)
            metrics = {"ce": loss.detach()}
        else:
            z_nat, z_adv, z_target = self.forwards(model, batch, inputs["x_adv"])
            ce, kl = trades_terms(z_nat, z_adv, batch.y, z_target, self.info.label_smoothing)
            b = self.kl_weight(batch.y)
            loss = ((1 - b) * ce + b * kl).mean()
            metrics = {
                "ce": ce.mean().detach(),
                "kl": kl.mean().detach(),
                "acc": accuracy(z_nat, batch.y),
            }
        self.record(z_adv, batch.y)
        return loss, {**metrics, "adv_acc": accuracy(z_adv, batch.y)}

"""CFA's class-wise parts (Wei, Wang, Guo, Wang, "CFA: Class-wise Calibrated Fair Adversarial
Training", CVPR 2023; official code PKU-ML/CFA@071f333), shared by `cfa` and `dhat_cfa`:

- R_c: the previous epoch's training robust accuracy of class c, counted on the adversarial
  logits of the training forward (train.py:83-102), divided by the true class counts;
- CCM: ε_c = (λ1 + R_c)·ε from epoch `begin` (train.py:196-201);
- CCR: β_c = (λ2 + R_c)·β, used as the weight b_c = β_c/(1 + β_c) (train.py:204-208);
- FAWA: after each epoch, if min_c V_c ≥ τ (V the validation PGD-10 class accuracy), the
  averaged weights become a copy of the model the first time, then δ·avg + (1 − δ)·model,
  over every state-dict entry (train.py:236-258; utils.py:115-124).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..attacks.pgd import Init
from ..schema import NONNEG, UNIT, option
from .standard import Adversarial


def class_eps(R: torch.Tensor, eps: float, lam: float) -> torch.Tensor:
    """CCM: ε_c = (λ1 + R_c)·ε, R (K,) per-class robust accuracy."""
    return (lam + R) * eps


def class_beta_weight(R: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    """CCR: b_c = β_c/(1 + β_c) with β_c = (λ2 + R_c)·β (the weight of KL; 1 − b_c of CE)."""
    beta_c = (lam + R) * beta
    return beta_c / (1 + beta_c)


def fawa_update(
    avg_state: dict[str, torch.Tensor] | None, model_state: dict[str, torch.Tensor], decay: float
) -> dict[str, torch.Tensor]:
    """δ·avg + (1 − δ)·model per entry (integer buffers averaged in float, cast back by
    truncation as the official `load_state_dict` does); a copy of the model if avg is None."""
    if avg_state is None:
        return {k: v.detach().clone() for k, v in model_state.items()}
    return {
        k: (avg_state[k] * decay + v.detach() * (1 - decay)).to(avg_state[k].dtype)
        for k, v in model_state.items()
    }


@dataclass
class ClassWise(Adversarial):
    """Mixin: per-class training robust accuracy, CCM (class-wise ε for the PGD-CE x̂) and FAWA.

    Defaults from the official code (train.py:17-47): `ccm_lambda` λ1 0.5 (`--lambda-1`),
    `begin` 10, `fawa_decay` δ 0.88 (`--decay-rate`), `fawa_threshold` τ 0.24 (`--threshold`;
    its README example uses 0.2). `ccm`: official flag `--ccm` (off unless given); on here,
    as CFA is defined with it. FAWA is updated in `end_epoch` from `stats["val_class_acc"]`
    (classes absent from the validation set are ignored; no update without it).
    """

    ccm: bool = option(True, "class-wise ε for x̂ (CCM) from epoch `begin`")
    ccm_lambda: float = option(0.5, "CCM's λ1 in ε_c = (λ1 + R_c)·ε", range=UNIT)
    begin: int = option(10, "first epoch (0-based) of the class-wise calibration", range=NONNEG)
    fawa_decay: float = option(0.88, "FAWA's decay δ of the averaged weights", range=UNIT)
    fawa_threshold: float = option(
        0.24, "FAWA's gate τ on the worst class's validation robust accuracy", range=UNIT
    )

    def setup(self, info):
        super().setup(info)
        zeros = torch.zeros(info.num_classes, device=info.device)
        self.hits, self.seen, self.train_class_acc = zeros.clone(), zeros.clone(), zeros.clone()
        self.fawa = None

    def calibrated(self) -> bool:
        """Whether the class-wise settings are in force (epoch ≥ `begin`)."""
        return self.epoch >= self.begin

    def sample_eps(self, y: torch.Tensor):
        """ε_{y_i} per sample (B,) under CCM from epoch `begin`, else the scalar ε."""
        if not (self.ccm and self.calibrated()):
            return self.eps
        return class_eps(self.train_class_acc, self.eps, self.ccm_lambda)[y]

    def adversarial(self, model, batch, init: Init = "uniform", eps=None):
        """x̂ = PGD on CE, uniform start in ±ε_{y_i}, projection on ε_{y_i}, BN in `bn_mode`
        (attack.py:33-72; the step size stays α)."""
        return super().adversarial(
            model, batch, init, self.sample_eps(batch.y) if eps is None else eps
        )

    def record(self, z_adv: torch.Tensor, y: torch.Tensor) -> None:
        """Count the training forward's correct adversarial predictions per class (no host
        synchronisation: index_add, not bincount or boolean indexing)."""
        hit = (z_adv.detach().argmax(1) == y).to(self.hits.dtype)
        self.hits.index_add_(0, y, hit)
        self.seen.index_add_(0, y, torch.ones_like(hit))

    def end_epoch(self, model, epoch, stats):
        out = super().end_epoch(model, epoch, stats)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.hits)
            dist.all_reduce(self.seen)
        self.train_class_acc = self.hits / self.seen.clamp(min=1)
        self.hits.zero_()
        self.seen.zero_()
        val = stats.get("val_class_acc")
        val = None if val is None else val[~torch.isnan(val)]
        gate = val is not None and len(val) > 0 and val.min().item() >= self.fawa_threshold
        if gate:
            self.fawa = fawa_update(self.fawa, model.state_dict(), self.fawa_decay)
        return {
            **out,
            "train_class_acc_min": self.train_class_acc.min().item(),
            "fawa_updated": gate,
            "class_eps_255": [
                round(255 * e, 4)
                for e in (
                    class_eps(self.train_class_acc, self.eps, self.ccm_lambda).tolist()
                    if self.ccm and epoch + 1 >= self.begin
                    else [self.eps] * len(self.hits)
                )
            ],
        }

    def extra_models(self):
        return {**super().extra_models(), **({"fawa": self.fawa} if self.fawa else {})}

    def state_dict(self):
        return {
            **super().state_dict(),
            "train_class_acc": self.train_class_acc,
            "hits": self.hits,
            "seen": self.seen,
            "fawa": self.fawa,
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "train_class_acc" in state:
            for key in ("train_class_acc", "hits", "seen"):
                getattr(self, key).copy_(state[key])
            fawa, dev = state["fawa"], self.hits.device
            self.fawa = None if fawa is None else {k: v.to(dev) for k, v in fawa.items()}

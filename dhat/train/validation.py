"""Per-epoch validation on the held-out split: clean and PGD accuracy of the model and, with
--ema-decay, of its averaged weights; and whether their logits are finite (a checkpoint with
non-finite validation logits is not saved).

Under DDP every rank validates rank 0's model (its BatchNorm statistics are broadcast first):
each rank attacks a strided share and the per-class counts are summed, so every rank gets
the same numbers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..attacks.robust import correct_under
from ..attacks.spec import AttackSpec
from ..config import TrainConfig
from ..distributed import Dist, all_reduce_sum, broadcast_module, shard
from ..models import unwrap
from ..modes import model_mode
from ..pixels import to_unit
from .assembly import Parts
from .ema import EMA


def validation_attack(cfg: TrainConfig) -> AttackSpec | None:
    """The attack of validation: PGD-`val_steps` on CE in the run's threat model."""
    return AttackSpec.from_threat(cfg.threat, steps=cfg.val_steps)


@dataclass
class Validation:
    """One epoch's validation: `scores` for the log (val_clean_acc, val_robust_acc, and their
    `_ema` twins), the model's robust accuracy per class (K,), and whether every validated
    model gave finite logits."""

    scores: dict[str, float]
    class_acc: torch.Tensor
    finite: bool


class Validator:
    """Validates a run's model (and its EMA) each epoch on the run's held-out split."""

    def __init__(self, cfg: TrainConfig, parts: Parts, dist: Dist, device: torch.device):
        self.val, self.num_classes = parts.val, parts.data.num_classes
        self.attack = validation_attack(cfg)
        self.dist, self.device = dist, device
        self._ema_net: nn.Module | None = None  # the EMA's weights in a copy of the model

    def __call__(self, model: nn.Module, ema: EMA | None) -> Validation:
        """Validate `model` (broadcasting rank 0's BN statistics first), then `ema`'s weights."""
        broadcast_module(model, self.dist)  # rank 0's BN statistics: every rank validates it
        scores = self.accuracies(unwrap(model))
        class_acc, finite = scores.pop("_val_class_acc"), scores.pop("_val_logits_finite")
        if ema is not None:
            averaged = self.accuracies(self._ema_model(model, ema))
            finite = finite and averaged["_val_logits_finite"]
            scores.update({f"{k}_ema": v for k, v in averaged.items() if not k.startswith("_")})
        return Validation(scores, class_acc, finite)

    def _ema_model(self, model: nn.Module, ema: EMA) -> nn.Module:
        """A copy of the model holding the averaged weights (made once, refreshed each call)."""
        if self._ema_net is None:
            self._ema_net = copy.deepcopy(unwrap(model))
        self._ema_net.load_state_dict(ema.state_dict())
        broadcast_module(self._ema_net, self.dist)  # rank 0's copied BN statistics everywhere
        return self._ema_net

    def accuracies(self, model: nn.Module) -> dict[str, Any]:
        """Clean and PGD accuracy of `model` on the held-out split, the per-class robust
        accuracy (K,) as `_val_class_acc`, and `_val_logits_finite`."""
        d = self.dist
        x, y = self.val
        part = shard(len(y), d)
        x, y = x[part], y[part]
        with torch.no_grad(), model_mode(model, "eval"):
            probe = to_unit(x[:64].to(self.device))
            finite = bool(torch.isfinite(model(probe)).all()) if len(probe) else True
        clean = correct_under(model, x, y, None, batch_size=256, device=self.device)
        robust = correct_under(model, x, y, self.attack, batch_size=256, device=self.device)
        k = self.num_classes
        y = y.cpu()
        counts = torch.stack(
            [
                torch.bincount(y, minlength=k),
                torch.bincount(y[clean], minlength=k),
                torch.bincount(y[robust], minlength=k),
            ]
        ).double()
        total, clean_hits, robust_hits = all_reduce_sum(counts, d, self.device)
        n = total.sum()
        return {
            "val_clean_acc": (clean_hits.sum() / n).item(),
            "val_robust_acc": (robust_hits.sum() / n).item(),
            "_val_class_acc": robust_hits / total,
            "_val_logits_finite": finite,
        }

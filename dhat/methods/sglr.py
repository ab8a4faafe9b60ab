"""SGLR (Li, Yu, Wei, Jin, Zhang, Chan, "Soften to Defend: Towards Adversarial Robustness via
Self-Guided Label Refinement", CVPR 2024; official code devicerxx/SGLS@3e96990, losses/loss.py).

A table Q (N×K) holds one soft label per training example (dataset index n), starting at
one-hot(y_n). Before epoch `es` the loss is plain PGD-AT, CE(f(x′), y). From epoch `es`:
  Q_n ← α·Q_n + (1 − α)·(w·p̄(x) + (1 − w)·p̄(x′))      (updated before the loss)
  L = (1/B) Σ_i Σ_c −Q_{n_i,c} · log p_c(x′_i)
with p̄ the softmax of detached train-mode logits (x′ first, then an extra clean forward) and
w = `clean_weight`. Gradient flows only through log p(x′). The paper writes the refined
label as an EMA of the model's own predictions mixed with the hard label (its exact
equation and constants are unverified); the code form is implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..modes import BNMode
from ..schema import NONNEG, UNIT, option
from .base import accuracy, smoothed_ce
from .registry import register_method
from .standard import Adversarial


def refine_labels(
    rows: torch.Tensor,
    p_clean: torch.Tensor,
    p_adv: torch.Tensor,
    alpha: float,
    clean_weight: float,
) -> torch.Tensor:
    """α·Q + (1 − α)·(w·p̄(x) + (1 − w)·p̄(x′)) (loss.py:97-98, w = 0.2)."""
    return alpha * rows + (1 - alpha) * (clean_weight * p_clean + (1 - clean_weight) * p_adv)


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """mean_i Σ_c −target_ic · log softmax(logits)_ic; with label smoothing S the target is
    (1 − S)·target + S/K, as `F.cross_entropy` smooths probability targets."""
    if label_smoothing:
        return smoothed_ce(logits, target, label_smoothing)
    return (-F.log_softmax(logits, 1) * target).sum(1).mean()


def gather_rows(index: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (index, rows), so that each rank's copy of the table stays identical."""
    if not (dist.is_available() and dist.is_initialized()):
        return index, rows
    parts: list[Any] = [None] * dist.get_world_size()  # filled with (index, rows) pairs
    dist.all_gather_object(parts, (index.cpu(), rows.cpu()))
    return (
        torch.cat([i for i, _ in parts]).to(index.device),
        torch.cat([r for _, r in parts]).to(rows.device),
    )


@register_method("sglr")
@dataclass
class SGLR(Adversarial):
    """SGLR. Defaults from the official code: α 0.9 (`--sgls-alpha`), clean weight 0.2
    (loss.py:98), x′ = PGD-10 on CE, 8/255, 2/255, uniform start, BN in eval mode
    (loss.py:65-80). `es` 90 is the shipped script's value (run_sgls.sh:10, and the SGLS class
    default); the `--sgls-es` flag defaults to 0 (refinement from the start).
    Rows start as one-hot(y): RunInfo carries no labels, so a row is filled with its one-hot
    label on first use (the same thing, since a sample's label never changes). The table
    is saved in `state_dict()` (the official code does not checkpoint it).
    """

    name = "sglr"
    alpha: float = option(0.9, "EMA weight α of the soft-label table", range=UNIT)
    es: int = option(
        90, "first epoch (0-based) of label refinement; plain PGD-AT before", range=NONNEG
    )
    clean_weight: float = option(
        0.2, "weight w of p(x) (vs p(x′)) in the refined label", range=UNIT
    )
    bn_mode: BNMode = option("eval", "BatchNorm mode during the attack")

    def setup(self, info):
        super().setup(info)
        self.soft_labels = torch.zeros(info.num_train, info.num_classes, device=info.device)

    def inputs(self, model, batch):
        return {"x_adv": self.adversarial(model, batch)}

    def refine(self, model, batch, z_adv) -> torch.Tensor:
        """Update the batch's rows of Q (after a clean train-mode forward); return them."""
        with torch.no_grad():
            p_clean = F.softmax(model(batch.x), 1)
            rows = self.soft_labels[batch.index]
            fresh = (rows.sum(1) == 0)[:, None]  # a row not seen yet starts as one-hot(y)
            rows = torch.where(fresh, F.one_hot(batch.y, rows.shape[1]).to(rows.dtype), rows)
            rows = refine_labels(
                rows, p_clean, F.softmax(z_adv.detach(), 1), self.alpha, self.clean_weight
            )
            index, all_rows = gather_rows(batch.index, rows)
            self.soft_labels[index] = all_rows.to(self.soft_labels.dtype)
        return rows

    def objective(self, model, batch, inputs):
        z_adv = model(inputs["x_adv"])
        metrics = {"adv_acc": accuracy(z_adv, batch.y)}
        if self.epoch < self.es:
            loss = self.ce(z_adv, batch.y)
        else:
            target = self.refine(model, batch, z_adv)
            loss = soft_cross_entropy(z_adv, target, self.info.label_smoothing)
            metrics["label_conf"] = target.gather(1, batch.y[:, None]).mean()
        return loss, {"ce": loss.detach(), **metrics}

    def state_dict(self):
        return {"soft_labels": self.soft_labels}

    def load_state_dict(self, state):
        if "soft_labels" in state:
            self.soft_labels.copy_(state["soft_labels"])

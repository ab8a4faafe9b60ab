"""Attack objectives on logits (B, C), summed over the batch (sign-PGD ignores the scale)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of CE(z_i, y_i)."""
    return F.cross_entropy(logits, y, reduction="sum")


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of max_{j != y} z_j - z_y (the CW-inf margin, to be maximised)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - true).sum()


def kl_to(logits: torch.Tensor, p_ref: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of KL(p_ref || softmax(logits)) (TRADES' attack objective)."""
    return F.kl_div(F.log_softmax(logits, 1), p_ref, reduction="sum")


def dhat_inverse_loss(
    logits: torch.Tensor, y: torch.Tensor, p_nat: torch.Tensor, p_adv: torch.Tensor
) -> torch.Tensor:
    """Official DHAT / UIAT inverse objective (DHAT train.py:21-24), to be *descended*:
    CE(ž, y) + KL(p_nat || p̌) - KL(p_adv || p̌), all summed over the batch."""
    return ce_loss(logits, y) + kl_to(logits, p_nat) - kl_to(logits, p_adv)

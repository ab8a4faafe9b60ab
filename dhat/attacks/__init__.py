"""Attacks in [0, 1] pixel space: PGD (CE / CW / KL) and the inverse attack."""

from .losses import ce_loss, cw_margin_loss, dhat_inverse_loss, kl_to
from .pgd import inverse_pgd, pgd, project, random_init, sign_pgd

__all__ = [
    "ce_loss",
    "cw_margin_loss",
    "dhat_inverse_loss",
    "kl_to",
    "inverse_pgd",
    "pgd",
    "project",
    "random_init",
    "sign_pgd",
]

"""Attacks in [0, 1] pixel space: PGD (CE / CW / KL) and the inverse attack, in a threat
model's ball (L-inf or L2)."""

from .losses import ce_loss, cw_margin_loss, dhat_inverse_loss, kl_to
from .pgd import inverse_pgd, pgd, pgd_loop, threat_pgd
from .threat import L2Threat, LinfThreat, ThreatModel, threat_model

__all__ = [
    "ce_loss",
    "cw_margin_loss",
    "dhat_inverse_loss",
    "kl_to",
    "inverse_pgd",
    "pgd",
    "pgd_loop",
    "threat_pgd",
    "L2Threat",
    "LinfThreat",
    "ThreatModel",
    "threat_model",
]

"""Evaluation: accuracy under attack (PGD, CW, AutoAttack), the robust gap, robustness
curves, sanity checks, background-reliance measures, JSON result cards."""

from ..attacks.robust import correct_under, per_class
from ..attacks.spec import AttackSpec, make_attack
from .card import format_card, read_card, save_card, validate_card
from .evaluate import evaluate_checkpoint, evaluate_model

__all__ = [
    "AttackSpec",
    "make_attack",
    "format_card",
    "read_card",
    "save_card",
    "validate_card",
    "evaluate_checkpoint",
    "evaluate_model",
    "correct_under",
    "per_class",
]

"""Evaluation: accuracy under attack (PGD, CW, AutoAttack), the robust gap, robustness
curves, sanity checks, third-party weights, JSON result cards."""
from .evaluate import evaluate_checkpoint, evaluate_model, format_result
from .robust import correct_under, make_attack, per_class

__all__ = ["evaluate_checkpoint", "evaluate_model", "format_result",
           "correct_under", "make_attack", "per_class"]

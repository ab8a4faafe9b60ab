"""Evaluation: accuracy under attack, the robust gap, JSON results."""
from .evaluate import evaluate_checkpoint, evaluate_model, format_result
from .robust import correct_under, make_attack, per_class

__all__ = ["evaluate_checkpoint", "evaluate_model", "format_result", "correct_under",
           "make_attack", "per_class"]

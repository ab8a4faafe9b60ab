"""Training methods: each turns (model, batch) into (loss, metrics); see `base.Method`."""

from . import awp, cfa, dhat, dhat_cfa, mart, sglr, standard, trades  # noqa: F401  (registration)
from .base import Method, RunInfo, accuracy
from .registry import (
    build_method,
    create_method,
    list_methods,
    method_options,
    register_method,
)

__all__ = [
    "Method",
    "RunInfo",
    "accuracy",
    "build_method",
    "create_method",
    "list_methods",
    "method_options",
    "register_method",
]

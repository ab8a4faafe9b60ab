"""Model registry and factory, in the manner of timm's `create_model`."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from torch import nn

from ..errors import UserError, unknown_name
from ..schema import Where, coerce_like
from .base import Classifier

_MODELS: dict[str, Callable[..., Classifier]] = {}


def register_model(name: str):
    """Decorator: register a factory `f(num_classes, mean, std, **kwargs) -> Classifier`."""
    def wrap(factory):
        _MODELS[name] = factory
        return factory
    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_arg_defaults(name: str) -> dict[str, Any]:
    """The factory's keyword arguments beyond num_classes/mean/std, with their defaults."""
    if name not in _MODELS:
        raise unknown_name("model", name, _MODELS)
    params = inspect.signature(_MODELS[name]).parameters
    return {k: p.default for k, p in params.items()
            if k not in ("num_classes", "mean", "std") and p.kind is p.POSITIONAL_OR_KEYWORD}


def check_model_args(name: str, args: dict[str, Any], where: Where = Where(prefix="model_args.")
                     ) -> dict[str, Any]:
    """`args` checked against the factory's signature (nearest name for a typo) and typed by
    its defaults (width=16 -> int)."""
    known = model_arg_defaults(name)
    out = {}
    for k, v in args.items():
        if k not in known:
            if not known:
                raise UserError(f"model '{name}' takes no arguments, got {where.key(k)}")
            raise unknown_name(f"argument of model '{name}'", k, known)
        out[k] = coerce_like(known[k], v, where.key(k))
    return out


def create_model(name: str, num_classes: int = 10, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **kwargs) -> Classifier:
    """Build a registered model. `mean`/`std` (per channel, [0, 1] units) default to CIFAR-10's."""
    if name not in _MODELS:
        raise unknown_name("model", name, _MODELS)
    return _MODELS[name](num_classes=num_classes, mean=mean, std=std, **kwargs)


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel (a compiled model stays compiled).

    Attacks and Grad-CAM run on it: they take input gradients only, which must not enter
    DDP's gradient synchronisation.
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile wrappers (for state dicts)."""
    model = unwrap_parallel(model)
    return getattr(model, "_orig_mod", model)


def cam_layer(model: nn.Module, layer: str | nn.Module | None = None) -> nn.Module:
    """Resolve a Grad-CAM layer: a module, a dotted path, or None for the model's default."""
    if isinstance(layer, nn.Module):
        return layer
    base = unwrap(model)
    path = layer or getattr(base, "cam_layer", "")
    if not path:
        raise ValueError(f"{type(base).__name__} names no cam_layer; pass layer=")
    return base.get_submodule(path)

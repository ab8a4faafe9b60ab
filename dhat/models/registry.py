"""Model registry and factory, in the manner of timm's `create_model`."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from ..errors import unknown_name
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

"""Model registry and factory, in the manner of timm's `create_model` / `list_models`.

Each registered model declares its defaults (`ModelCfg`): the input size it is built for,
its Grad-CAM layer and the datasets whose normalisation it takes (the first is its default).
A model with a `variant` argument declares one `ModelCfg` per variant, so an ImageNet
variant defaults to ImageNet's statistics and 224 px. `model_defaults(name, dataset, **kwargs)`
resolves them; `create_model` fills mean/std (and, with `dataset`, the class count) from them.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UserError, unknown_name
from ..schema import Where, check_factory_args
from .base import NORMALIZATION, Classifier

CIFAR = ("cifar10", "cifar100")
IMAGENET = ("imagenet",)
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


@dataclass(frozen=True)
class ModelCfg:
    """What a registered model (or one variant of it) declares: `input_size` (C, H, W) it is
    built for, its Grad-CAM layer (dotted path), and the datasets whose normalisation it
    takes, the first being its default."""

    input_size: tuple[int, int, int] = (3, 32, 32)
    cam_layer: str = ""
    datasets: tuple[str, ...] = CIFAR

    @property
    def normalization(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        """{dataset: (mean, std)} for each of `datasets`."""
        return {d: NORMALIZATION[d] for d in self.datasets}


@dataclass(frozen=True)
class ModelDefaults:
    """A model's resolved defaults for one dataset: per-channel mean/std in [0, 1] units (the
    values of its (1, 3, 1, 1) buffers), the class count (None where the dataset's is not
    fixed), the input size (C, H, W) and the Grad-CAM layer."""

    name: str
    variant: str | None
    dataset: str
    num_classes: int | None
    input_size: tuple[int, int, int]
    cam_layer: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


_MODELS: dict[str, Callable[..., Classifier]] = {}
_CFGS: dict[str, tuple[ModelCfg, dict[str, ModelCfg]]] = {}


def register_model(
    name: str, cfg: ModelCfg | None = None, variants: dict[str, ModelCfg] | None = None
):
    """Decorator: register a factory `f(num_classes, mean, std, **kwargs) -> Classifier` with
    its defaults `cfg`; `variants` maps values of the factory's `variant` argument to theirs
    (a value not listed uses `cfg`)."""

    def wrap(factory):
        _MODELS[name] = factory
        _CFGS[name] = (cfg or ModelCfg(), dict(variants or {}))
        return factory

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the fnmatch `pattern` (e.g. "wrn*", "*resnet*"), sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def _known(name: str) -> None:
    if name not in _MODELS:
        raise unknown_name("model", name, _MODELS)


def _dataset_stats(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of a dataset with fixed statistics; class folders take ImageNet's (the
    imagefolder loader's default)."""
    key = "imagenet" if dataset.startswith("imagefolder") else dataset
    return NORMALIZATION.get(key)


def model_defaults(name: str, dataset: str | None = None, **kwargs: Any) -> ModelDefaults:
    """The defaults of model `name` built with `kwargs` (only `variant` matters) for `dataset`
    (default: the model's own, e.g. imagenet for `variant="imagenet"`). mean/std are the
    dataset's; a dataset whose statistics are measured on its data (shapes,
    fashion_scenes) is a UserError: pass mean/std from its DataBundle."""
    _known(name)
    cfg, variants = _CFGS[name]
    param = inspect.signature(_MODELS[name]).parameters.get("variant")
    variant = kwargs.get("variant", param.default if param is not None else None)
    cfg = variants.get(variant or "", cfg)
    dataset = dataset or cfg.datasets[0]
    stats = _dataset_stats(dataset)
    if stats is None:
        raise UserError(
            f"dataset '{dataset}' has no fixed normalisation (known: "
            f"{', '.join(NORMALIZATION)}); pass mean= and std=, e.g. the "
            "DataBundle's from dhat.data.load_dataset"
        )
    return ModelDefaults(
        name, variant, dataset, DATASET_CLASSES.get(dataset), cfg.input_size, cfg.cam_layer, *stats
    )


def model_arg_defaults(name: str) -> dict[str, Any]:
    """The factory's keyword arguments beyond num_classes/mean/std, with their defaults."""
    _known(name)
    params = inspect.signature(_MODELS[name]).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k not in ("num_classes", "mean", "std") and p.kind is p.POSITIONAL_OR_KEYWORD
    }


def check_model_args(
    name: str, args: dict[str, Any], where: Where = Where(prefix="model_args.")
) -> dict[str, Any]:
    """`args` checked against the factory's signature (nearest name for a typo) and typed by
    its defaults (width=16 -> int)."""
    return check_factory_args("model", name, model_arg_defaults(name), args, where)


def create_model(
    name: str,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    dataset: str | None = None,
    **kwargs,
) -> Classifier:
    """Build a registered model. `mean`/`std` (per channel, [0, 1] units) default to
    `dataset`'s, else the model's default dataset's (CIFAR-10; ImageNet for an ImageNet
    variant); explicit values win. `num_classes` defaults to `dataset`'s class count, else 10."""
    _known(name)
    if mean is None or std is None:
        d = model_defaults(name, dataset, **kwargs)
        mean = d.mean if mean is None else mean
        std = d.std if std is None else std
    if num_classes is None:
        num_classes = DATASET_CLASSES.get(dataset or "", 10)
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

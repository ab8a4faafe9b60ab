"""Model registry and factory, in the manner of timm's `create_model` / `list_models`.

Each registered model declares its defaults (`ModelCfg`): the input size it is built for,
its Grad-CAM layer and the datasets whose normalisation it takes (the first is its default).
A model with a `variant` argument declares one `ModelCfg` per variant, so an ImageNet
variant defaults to ImageNet's statistics and 224 px. `model_defaults(name, dataset, **kwargs)`
resolves them; `create_model` fills mean/std (and, with `dataset`, the class count) from them.

Outside models: a name `package.module:factory`, or a name that an installed package lists
in the `dhat.models` entry-point group, is registered on first use (`outside_model`), so
`dhat train --model mypkg.nets:make_net` trains the user's network and its checkpoints
evaluate by name.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UserError, clip, unknown_name
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
    """Registered model names matching the fnmatch `pattern` (e.g. "wrn*", "*resnet*"), sorted;
    with the names of the `dhat.models` entry points (not imported until used)."""
    names = set(_MODELS) | {ep.name for ep in _entry_points()}
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def _known(name: str) -> None:
    if name not in _MODELS and not outside_model(name):
        raise unknown_name("model", name, list_models())


def is_model(name: str) -> bool:
    """Whether `name` is a registered model, or an outside one (now registered)."""
    return name in _MODELS or outside_model(name)


# --- outside models --------------------------------------------------------------------------
ENTRY_POINT_GROUP = "dhat.models"


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


class OutsideModel(Classifier):
    """A user's network `net` (normalised inputs -> (B, C) logits) as a dhat Classifier: the
    mean/std buffers normalise [0, 1] pixels before it. Its modules are named `net.<path>`;
    a Grad-CAM layer may be given as `<path>` alone."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        cam_layer: str = "",
    ):
        super().__init__(num_classes, mean, std)
        self.net = net
        self.cam_layer = f"net.{cam_layer}" if cam_layer else ""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def get_submodule(self, target: str) -> nn.Module:
        try:
            return super().get_submodule(target)
        except AttributeError:
            return self.net.get_submodule(target)


def _declared_stats(factory: Callable, net: nn.Module):
    """(mean, std) the model declares: the factory's `mean`/`std` attributes, else timm's
    `pretrained_cfg` (or `default_cfg`) of the network; None if neither."""
    if getattr(factory, "mean", None) is not None and getattr(factory, "std", None) is not None:
        return factory.mean, factory.std  # type: ignore[attr-defined]  # checked just above
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(net, attr, None)
        if isinstance(cfg, dict) and cfg.get("mean") is not None and cfg.get("std") is not None:
            return cfg["mean"], cfg["std"]
    return None


def adapt_factory(name: str, factory: Callable) -> Callable[..., Classifier]:
    """A dhat factory for a user's `factory(num_classes=..., **kwargs) -> nn.Module`.

    * A factory that takes `mean` and `std` gets them and normalises inside its network (a
      Classifier it returns is used as is).
    * Otherwise the network takes normalised inputs and is wrapped in `OutsideModel`, with
      the statistics it declares (`_declared_stats`: the ones its weights expect), else
      the given ones (the dataset's in `dhat train`).
    * The Grad-CAM layer: the network's `cam_layer` attribute, else the factory's, else the
      value of the factory's own `cam_layer` argument; none known: `--cam-layer` names it.
    """
    params = inspect.signature(factory).parameters
    own = {k: p for k, p in params.items() if k not in ("num_classes", "mean", "std")}
    if "num_classes" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise UserError(f"model {name}: its factory must take num_classes (the class count)")
    takes_stats = "mean" in params and "std" in params

    def build(num_classes: int = 10, mean=None, std=None, **kwargs) -> Classifier:
        stats = {"mean": mean, "std": std} if takes_stats else {}
        net = factory(num_classes=num_classes, **stats, **kwargs)
        if isinstance(net, Classifier):
            return net
        if not isinstance(net, nn.Module):
            raise UserError(
                f"model {name}: the factory returned a {type(net).__name__}, not a torch.nn.Module"
            )
        layer = (
            getattr(net, "cam_layer", "")
            or getattr(factory, "cam_layer", "")
            or kwargs.get("cam_layer", own["cam_layer"].default if "cam_layer" in own else "")
        )
        if takes_stats:  # normalised inside the network: identity buffers outside
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean, std = _declared_stats(factory, net) or (mean, std)
        return OutsideModel(net, num_classes, mean, std, cam_layer=str(layer or ""))

    build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # model_arg_defaults reads it
        [
            inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
            for k, d in (("num_classes", 10), ("mean", None), ("std", None))
        ]
        + [
            p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for p in own.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty
        ]
    )
    return build


def _import_factory(name: str) -> Callable:
    """The object `package.module:attr` names (a dotted attr allowed); one line otherwise."""
    module_name, _, attr = name.partition(":")
    top = module_name.split(".")[0]
    if not module_name or not attr or top in sys.stdlib_module_names:
        raise UserError(
            f"--model {clip(name, 80)}: an outside model is named package.module:factory "
            "(a module of your own, importable here, e.g. on PYTHONPATH)"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(
            f"--model {clip(name, 80)}: cannot import {module_name} ({type(e).__name__}: "
            f"{clip(str(e), 100)}); put its folder on PYTHONPATH or install its package"
        ) from None
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UserError(f"--model {clip(name, 80)}: {module_name} has no {attr}") from None
    if not callable(obj):
        raise UserError(f"--model {clip(name, 80)}: {attr} is not callable (a model factory)")
    return obj


def outside_model(name: str) -> bool:
    """Register `name` if it is `package.module:factory` or a `dhat.models` entry point;
    whether it was. A factory is adapted by `adapt_factory`; an entry point's module may
    also register its models itself (`register_model`) when it is imported."""
    if not isinstance(name, str):
        return False
    if ":" in name:
        factory = _import_factory(name)
    else:
        eps = [ep for ep in _entry_points() if ep.name == name]
        if not eps:
            return False
        try:
            factory = eps[0].load()
        except Exception as e:  # the plugin's own import error: name it, in one line
            raise UserError(
                f"model {name} (entry point {eps[0].value}) cannot be loaded: "
                f"{type(e).__name__}: {clip(str(e), 120)}"
            ) from None
        if name in _MODELS:  # its module registered it on import
            return True
    register_model(name, ModelCfg(cam_layer=str(getattr(factory, "cam_layer", "") or "")))(
        adapt_factory(name, factory)
    )
    return True


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
        raise ValueError(
            f"{type(base).__name__} names no Grad-CAM layer (no cam_layer attribute): name one, "
            "layer='...' in Python or --cam-layer on the command line"
        )
    return base.get_submodule(path)

"""The base of every model: input normalisation lives inside, so inputs are in [0, 1]."""

from __future__ import annotations

import abc
import math
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UserError, excerpt

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel (mean, std) in [0, 1] units of the datasets whose statistics are fixed.
NORMALIZATION = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


class ModelArgError(UserError, ValueError):
    """A model argument out of its range: one line in the CLI, a ValueError in Python."""


def check_int(model: str, name: str, value: Any, low: int = 1, high: int = 4096) -> None:
    """`value` an integer in [low, high], else a ModelArgError naming `model` and `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelArgError(
            f"model {model}: {name} must be an integer in [{low}, {high}], got {excerpt(value)}"
        )


def check_float(
    model: str, name: str, value: Any, low: float, high: float, *, low_open: bool = False
) -> None:
    """`value` a finite number in [low, high) ((low, high) with `low_open`), else a
    ModelArgError naming `model` and `name`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and value < high
    ok = ok and (low < value if low_open else low <= value)
    if not ok:
        raise ModelArgError(
            f"model {model}: {name} must lie in {'(' if low_open else '['}{low:g}, {high:g}), "
            f"got {excerpt(value)}"
        )


def check_choice(model: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ModelArgError(
            f"model {model}: {name} must be {' or '.join(map(repr, choices))}, got {excerpt(value)}"
        )


class Classifier(nn.Module, abc.ABC):
    """An image classifier taking (B, 3, H, W) pixels in [0, 1] and returning (B, C) logits.

    Subclasses implement `logits(x_normalised)` and name `cam_layer`, the dotted path of
    the module whose output Grad-CAM uses by default (the last convolutional stage).
    `mean`/`std` are buffers, so they travel with the state dict.
    """

    cam_layer: str = ""
    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        check_int(type(self).__name__, "num_classes", num_classes, 1, 1_000_000)
        self.num_classes = num_classes
        mean = CIFAR10_MEAN if mean is None else mean
        std = CIFAR10_STD if std is None else std
        _check_stats(type(self).__name__, mean, std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @abc.abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised inputs; every registered model defines it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():  # the dtype only: no read of the values, per step
            raise UserError(_not_float(type(self).__name__, x))
        return self.logits(self.normalise(x))


def _not_float(what: str, x: torch.Tensor) -> str:
    return (
        f"{what} takes float pixels in [0, 1], got a {str(x.dtype).replace('torch.', '')} "
        "tensor: pass x.float() / 255"
    )


def called_from_outside(depth: int = 2) -> bool:
    """Whether the function that calls this one was called from outside the dhat package
    (a user's call, not a training step's or an evaluation batch's)."""
    name = sys._getframe(depth).f_globals.get("__name__", "")
    return not (name == "dhat" or name.startswith("dhat."))


def check_pixels(x: torch.Tensor, what: str, *, values: bool = True) -> None:
    """`x` float pixels in [0, 1], else one line naming the fix. The dtype costs nothing;
    `values` reads x once (waits for the device): for a user's call, never per step."""
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{what}: x must be a tensor of pixels in [0, 1], got {excerpt(x)}")
    if not x.is_floating_point():
        raise UserError(_not_float(what, x))
    if values and x.numel() and not torch.equal(x.clamp(0, 1), x):  # NaN is unequal too
        raise UserError(
            f"{what} takes pixels in [0, 1]; x has values outside (or NaN): pass x / 255 for "
            "0..255 pixels, and undo any normalisation (dhat models normalise inside)"
        )


def _check_stats(model: str, mean: Any, std: Any) -> None:
    """Per-channel mean and std: equally many finite numbers, every std > 0."""
    try:
        m = torch.as_tensor(mean, dtype=torch.float64, device="cpu").flatten()
        s = torch.as_tensor(std, dtype=torch.float64, device="cpu").flatten()
        ok = 0 < len(m) == len(s) and bool(m.isfinite().all() and s.isfinite().all())
        ok = ok and bool((s > 0).all())
    except (TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise ModelArgError(
            f"model {model}: mean/std must be equally many finite numbers (one per "
            f"channel), std > 0; got mean={excerpt(mean)}, std={excerpt(std)}"
        )

"""The base of every model: input normalisation lives inside, so inputs are in [0, 1]."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from torch import nn

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
        self.num_classes = num_classes
        mean = CIFAR10_MEAN if mean is None else mean
        std = CIFAR10_STD if std is None else std
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @abc.abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised inputs; every registered model defines it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.normalise(x))

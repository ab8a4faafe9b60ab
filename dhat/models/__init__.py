"""Models: a registry of image classifiers with normalisation inside."""

from . import (  # noqa: F401  (registration)
    dm_resnet,
    inception,
    preact_resnet,
    resnet,
    robustbench,
    small_cnn,
    vgg,
    wide_resnet,
)
from .base import CIFAR10_MEAN, CIFAR10_STD, NORMALIZATION, Classifier
from .registry import (
    ModelCfg,
    ModelDefaults,
    cam_layer,
    create_model,
    list_models,
    model_defaults,
    register_model,
    unwrap,
    unwrap_parallel,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "NORMALIZATION",
    "Classifier",
    "ModelCfg",
    "ModelDefaults",
    "cam_layer",
    "create_model",
    "list_models",
    "model_defaults",
    "register_model",
    "unwrap",
    "unwrap_parallel",
]

"""Models: a registry of image classifiers with normalisation inside."""
from .base import CIFAR10_MEAN, CIFAR10_STD, Classifier
from .registry import (cam_layer, create_model, list_models, register_model, unwrap,
                       unwrap_parallel)
from . import inception, preact_resnet, resnet, small_cnn, vgg, wide_resnet  # noqa: F401  (registration)

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "Classifier", "cam_layer", "create_model",
           "list_models", "register_model", "unwrap", "unwrap_parallel"]

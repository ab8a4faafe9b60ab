"""Data: CIFAR pickles, batched augmentation, validation splits, an in-memory loader."""

from . import fashion_scenes, imagefolder, shapes, toy_scenes  # noqa: F401  (registration)
from .augment import random_crop_flip
from .cifar import load_cifar
from .datasets import DataBundle, Split, list_datasets, load_dataset, register_dataset
from .loader import Batch, BatchLoader
from .splits import validation_split

__all__ = [
    "random_crop_flip",
    "load_cifar",
    "DataBundle",
    "Split",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "Batch",
    "BatchLoader",
    "validation_split",
]

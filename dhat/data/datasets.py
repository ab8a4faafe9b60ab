"""Dataset registry: `load_dataset(name, root)` -> a `DataBundle` of uint8 tensors in memory."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import unknown_name
from ..schema import Where, check_factory_args
from .cifar import find_folder, load_cifar
from .splits import validation_split

DEFAULT_CIFAR_ROOTS = ("../shared/data/cifar10", "data", "~/data", "~/.cache/dhat")


@dataclass
class Split:
    """An extra evaluation split: images (N, 3, H, W) uint8, labels (N,), masks (N, H, W) bool,
    and `scene_y` (N,) the class of each image's background scene where the dataset has one
    (-1 for an image without a scene)."""

    x: torch.Tensor
    y: torch.Tensor
    masks: torch.Tensor | None = None
    scene_y: torch.Tensor | None = None


@dataclass
class DataBundle:
    """Train/test images (N, 3, H, W) uint8 and labels (N,) int64, with what a model needs.

    `test_masks` / `train_masks` (N, H, W) bool are ground-truth foregrounds where the dataset
    has them (the attention analysis uses them). `splits` holds named extra evaluation
    splits (e.g. fashion_scenes' mixed_same / mixed_rand / only_fg / only_bg).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    train_masks: torch.Tensor | None = None
    test_masks: torch.Tensor | None = None
    splits: dict[str, Split] = field(default_factory=dict)
    # Set by datasets whose stored training images are not yet model inputs (imagefolder):
    # the model's input side, the training augmentation `fn(x, generator)` and the view
    # `fn(x)` from stored images to model inputs. None elsewhere.
    resolution: int | None = None
    train_augment: Callable[..., torch.Tensor] | None = None
    train_view: Callable[[torch.Tensor], torch.Tensor] | None = None

    def subset_train(self, n: int, seed: int = 0) -> DataBundle:
        """The first `n` images of a seeded, class-stratified permutation of the training set."""
        if n >= len(self.train_y):
            return self
        _, keep = validation_split(self.train_y, n, seed)
        self.train_x, self.train_y = self.train_x[keep], self.train_y[keep]
        if self.train_masks is not None:
            self.train_masks = self.train_masks[keep]
        return self


class DatasetLoader(Protocol):
    """A registered loader: `fn(root=None, download=False, **args) -> DataBundle`, carrying
    the callable whose keyword arguments are its `--dataset-arg`s (`register_dataset`)."""

    dataset_args_of: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> DataBundle: ...


_DATASETS: dict[str, DatasetLoader] = {}
_HIDDEN: set[str] = set()  # loadable names that `list_datasets` (and --dataset's choices) omit


def register_dataset(name: str, args_of: Callable | None = None, *, hidden: bool = False):
    """Register a loader `fn(root=None, download=False, **args) -> DataBundle`. Its keyword
    arguments (or those of `args_of`, for a loader that forwards **kwargs) are the dataset's
    `--dataset-arg`s. A `hidden` name (an old alias) loads but is not listed."""

    def wrap(fn):
        _DATASETS[name] = fn
        fn.dataset_args_of = args_of or fn
        if hidden:
            _HIDDEN.add(name)
        return fn

    return wrap


def dataset_arg_defaults(name: str) -> dict[str, Any]:
    """A dataset's `--dataset-arg` names with their defaults."""
    if name not in _DATASETS:
        raise unknown_name("dataset", name, list_datasets())
    loader = _DATASETS[name]
    params = inspect.signature(getattr(loader, "dataset_args_of", loader)).parameters
    skip = ("root", "download", "name")
    return {
        k: p.default
        for k, p in params.items()
        if k not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def check_dataset_args(
    name: str, args: dict[str, Any], where: Where = Where(prefix="dataset_args.")
) -> dict[str, Any]:
    """`args` checked against the dataset's loader (nearest name) and typed by its defaults."""
    return check_factory_args("dataset", name, dataset_arg_defaults(name), args, where)


def list_datasets(hidden: bool = False) -> list[str]:
    """The registered dataset names (with `hidden`: old aliases too, which still load)."""
    return sorted(n for n in _DATASETS if hidden or n not in _HIDDEN)


def load_dataset(name: str, root: str | None = None, **kwargs) -> DataBundle:
    """Load a registered dataset. `root=None` searches the usual places (CIFAR)."""
    if name not in _DATASETS:
        raise unknown_name("dataset", name, list_datasets())
    return _DATASETS[name](root=root, **kwargs)


def _cifar(name: str, root: str | None, download: bool, mean, std) -> DataBundle:
    if root is None:
        root = next(
            (r for r in DEFAULT_CIFAR_ROOTS if find_folder(Path(r).expanduser(), name)), "data"
        )
    tx, ty, names = load_cifar(root, name, train=True, download_ok=download)
    vx, vy, _ = load_cifar(root, name, train=False, download_ok=download)
    return DataBundle(name, tx, ty, vx, vy, 10 if name == "cifar10" else 100, mean, std, names)


@register_dataset("cifar10")
def cifar10(root: str | None = None, download: bool = False) -> DataBundle:
    return _cifar("cifar10", root, download, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


@register_dataset("cifar100")
def cifar100(root: str | None = None, download: bool = False) -> DataBundle:
    return _cifar("cifar100", root, download, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

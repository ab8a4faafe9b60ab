"""`fashion_scenes`: real objects with exact masks on class-correlated real scenes.

Each 32×32 image is one Fashion-MNIST item (its class is the label) pasted onto a CIFAR-10
scene, as Waterbirds (Sagawa et al., ICLR 2020) pastes segmented birds onto places. The
item sits on an exactly black background in Fashion-MNIST, so its mask is exact: the item
is resampled to a random size (`scale_min`–`scale_max` of the frame) at a random position,
its pixels with grey level above `mask_threshold` form the mask, and each mask pixel gets
the item's random colour times its grey level; every other pixel is the scene's, unchanged.

In the training split the scene's CIFAR class equals the label with probability `rho`,
otherwise it is one of the nine other classes, uniformly: the scene is a shortcut a model
can learn besides the object. The test-side splits use Fashion-MNIST t10k items and
CIFAR-10 test scenes only (disjoint from training), and share one set of items, sizes,
positions and colours, so that they differ in the background alone (the Backgrounds
Challenge's splits, Xiao et al., ICLR 2021):

    test        scenes drawn like training (class = label with probability rho)
    mixed_same  a scene of the label's class
    mixed_rand  a scene of a uniformly random class
    only_fg     the item on black
    only_bg     the mixed_same scene with the item removed (its mask marks where it was)

acc(mixed_same) − acc(mixed_rand) is the BG-gap: how much the model leans on the scene.
Data: Fashion-MNIST's four idx .gz files and CIFAR-10's python pickles, both read from disk
(`--data-root` holding `fashion-mnist/` and `cifar10/`, or `fashion_root=`/`cifar_root=`).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .cifar import find_folder, load_cifar
from .datasets import DataBundle, Split, register_dataset
from .shapes import _hsv_to_rgb, channel_stats

CLASS_NAMES = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
NUM_CLASSES = 10
SIZE = 32
FMNIST_FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEFAULT_ROOTS = ("../shared/data", "data", "~/data", "~/.cache/dhat")
SPLITS = ("test", "mixed_same", "mixed_rand", "only_fg", "only_bg")
_CHUNK = 8192


# ----------------------------------------------------------------------------- sources
def find_fashion_folder(root: str | Path) -> Path | None:
    """The folder with the four idx .gz files: `root` or `root/fashion-mnist`; None if absent."""
    root = Path(root).expanduser()
    names = [f for pair in FMNIST_FILES.values() for f in pair]
    for cand in (root, root / "fashion-mnist"):
        if all((cand / f).is_file() for f in names):
            return cand
    return None


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    return np.frombuffer(raw, np.uint8, offset=offset)


def load_fashion_mnist(folder: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 from the official idx .gz files."""
    folder = Path(folder)
    img_name, lab_name = FMNIST_FILES[train]
    try:
        images = _read_idx(folder / img_name, 16).reshape(-1, 28, 28)
        labels = _read_idx(folder / lab_name, 8).astype(np.int64)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(
            f"{folder} does not hold readable Fashion-MNIST idx files ({type(e).__name__}: {e})"
        ) from None
    if len(images) != len(labels):
        raise UserError(f"{folder}: {len(images)} Fashion-MNIST images but {len(labels)} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def _resolve_roots(
    root: str | None, fashion_root: str | None, cifar_root: str | None
) -> tuple[Path, Path]:
    env = os.environ.get("DHAT_DATA")
    candidates = [r for r in (root, env) if r] + list(DEFAULT_ROOTS)
    fm = (
        find_fashion_folder(fashion_root)
        if fashion_root
        else next((f for f in (find_fashion_folder(c) for c in candidates) if f), None)
    )
    if fm is None:
        where = fashion_root or root or ", ".join(candidates)
        raise UserError(
            "fashion_scenes: Fashion-MNIST not found (looked in "
            + str(where)
            + "): expected "
            + ", ".join(f for p in FMNIST_FILES.values() for f in p)
            + " in DIR or DIR/fashion-mnist/; pass --data-root DIR or --dataset-arg "
            "fashion_root=DIR"
        )
    cifar_candidates = (
        [cifar_root]
        if cifar_root
        else [str(Path(c).expanduser() / sub) for c in candidates for sub in ("cifar10", ".")]
    )
    cf = next(
        (Path(c) for c in cifar_candidates if find_folder(Path(c).expanduser(), "cifar10")), None
    )
    if cf is None:
        where = cifar_root or root or ", ".join(candidates)
        raise UserError(
            "fashion_scenes: CIFAR-10 not found (looked in " + str(where) + "): expected "
            "cifar-10-batches-py/ (data_batch_1..5, test_batch) in DIR/cifar10/; pass --data-root "
            "DIR or --dataset-arg cifar_root=DIR"
        )
    return fm, cf.expanduser()


# ----------------------------------------------------------------------------- composition
def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random saturated, bright RGB colours (n, 3) in [0, 1]."""
    return _hsv_to_rgb(rng.random(n), rng.uniform(0.5, 1.0, n), rng.uniform(0.7, 1.0, n))


def place_items(
    items: torch.Tensor, scale: np.ndarray, top: np.ndarray, left: np.ndarray, size: int = SIZE
) -> torch.Tensor:
    """Resample items (n, h, w) uint8 into (n, size, size) float grey levels in [0, 1]: item i
    becomes a square of side scale_i·size whose top-left corner is (top_i, left_i) pixels,
    bilinear, zero outside."""
    n, h, w = items.shape
    side = torch.from_numpy(scale * size).double()
    t, lft = torch.from_numpy(top).double(), torch.from_numpy(left).double()
    # Affine map from output normalised coords to item normalised coords (align_corners=False).
    sx = size / side
    cx = (size - 2 * lft - side) / side
    cy = (size - 2 * t - side) / side
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = sx, cy
    grid = F.affine_grid(theta.float(), [n, 1, size, size], align_corners=False)
    src = items.float().div(255)[:, None]
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[
        :, 0
    ].clamp(0, 1)


def composite(
    grey: torch.Tensor, colour: torch.Tensor, scene: torch.Tensor | None, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (n, 3, S, S) uint8, mask (n, S, S) bool): mask = grey > threshold; mask pixels are
    round(255·colour·grey), the others the scene's (black where `scene` is None)."""
    mask = grey > threshold
    item = (colour[:, :, None, None] * grey[:, None] * 255).round().clamp(0, 255).to(torch.uint8)
    bg = torch.zeros_like(item) if scene is None else scene
    return torch.where(mask[:, None], item, bg), mask


def pick_scenes(
    rng: np.random.Generator, scene_classes: np.ndarray, pool_y: np.ndarray
) -> np.ndarray:
    """For each wanted class, the index of a uniformly chosen pool image of that class."""
    counts = np.bincount(pool_y, minlength=NUM_CLASSES)
    if (counts[:NUM_CLASSES] == 0).any():
        raise UserError("fashion_scenes: the scene pool lacks some of the 10 CIFAR classes")
    order = np.argsort(pool_y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pick = np.minimum(
        (rng.random(len(scene_classes)) * counts[scene_classes]).astype(np.int64),
        counts[scene_classes] - 1,
    )
    return order[starts[scene_classes] + pick]


def correlated_classes(rng: np.random.Generator, labels: np.ndarray, rho: float) -> np.ndarray:
    """Scene classes: the label with probability rho, else one of the other nine uniformly."""
    agree = rng.random(len(labels)) < rho
    other = (labels + rng.integers(1, NUM_CLASSES, len(labels))) % NUM_CLASSES
    return np.where(agree, labels, other).astype(np.int64)


def generate(
    items: torch.Tensor,
    item_labels: torch.Tensor,
    scenes: torch.Tensor,
    scene_labels: torch.Tensor,
    n: int,
    *,
    seed: int,
    rho: float,
    splits: tuple[str, ...] = ("train",),
    scale: tuple[float, float] = (0.6, 1.0),
    mask_threshold: float = 0.1,
) -> dict[str, dict[str, torch.Tensor]]:
    """Compose `n` images per split from `items` (M, h, w) uint8 with labels, and `scenes`
    (P, 3, S, S) uint8 with CIFAR classes. Splits: "train"/"test" (scene class = label with
    probability rho) and the names in SPLITS. All splits share items, sizes, positions and
    colours. Returns {split: {"images", "labels", "masks", "scene_class", "item_index",
    "scene_index"}} (scene_index -1 for only_fg)."""
    if not 0.0 <= rho <= 1.0:
        raise UserError(f"fashion_scenes: rho must lie in [0, 1], got {rho}")
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise UserError(f"fashion_scenes: need 0 < scale_min <= scale_max <= 1, got {lo}, {hi}")
    if not 0 <= mask_threshold < 1:
        raise UserError(f"fashion_scenes: mask_threshold must lie in [0, 1), got {mask_threshold}")
    size = scenes.shape[-1]
    rng = np.random.default_rng(seed)
    m = len(item_labels)
    item_idx = rng.permutation(m)[:n] if n <= m else rng.integers(0, m, n)
    labels = item_labels.numpy()[item_idx].astype(np.int64)
    sc = rng.uniform(lo, hi, n)
    side = sc * size
    top, left = rng.random(n) * (size - side), rng.random(n) * (size - side)
    colour = torch.from_numpy(_colours(rng, n)).float()
    pool_y = scene_labels.numpy().astype(np.int64)
    classes = {}
    for name in splits:  # drawn in a fixed order, so a split's scenes do not depend on others
        if name in ("train", "test"):
            classes[name] = correlated_classes(rng, labels, rho)
        elif name == "mixed_rand":
            classes[name] = rng.integers(0, NUM_CLASSES, n).astype(np.int64)
        elif name in ("mixed_same", "only_bg"):
            classes[name] = labels.copy()
        elif name == "only_fg":
            classes[name] = np.full(n, -1, np.int64)
        else:
            raise UserError(
                f"fashion_scenes: unknown split {name!r}; known: train, {', '.join(SPLITS)}"
            )
    scene_idx = {
        k: pick_scenes(rng, v, pool_y)
        for k, v in classes.items()
        if k not in ("only_fg", "only_bg")
    }
    if "only_bg" in classes:
        scene_idx["only_bg"] = (
            scene_idx["mixed_same"]
            if "mixed_same" in scene_idx
            else pick_scenes(rng, labels, pool_y)
        )
    out = {}
    for name in splits:
        images = torch.empty(n, 3, size, size, dtype=torch.uint8)
        masks = torch.empty(n, size, size, dtype=torch.bool)
        for a in range(0, n, _CHUNK):
            b = min(n, a + _CHUNK)
            grey = place_items(
                items[torch.from_numpy(item_idx[a:b])], sc[a:b], top[a:b], left[a:b], size
            )
            scene = None if name == "only_fg" else scenes[torch.from_numpy(scene_idx[name][a:b])]
            img, mask = composite(grey, colour[a:b], scene, mask_threshold)
            if name == "only_bg":
                assert scene is not None  # only only_fg has no scene
                images[a:b] = scene
            else:
                images[a:b] = img
            masks[a:b] = mask
        out[name] = dict(
            images=images,
            labels=torch.from_numpy(labels),
            masks=masks,
            scene_class=torch.from_numpy(classes[name]),
            item_index=torch.from_numpy(item_idx.astype(np.int64)),
            scene_index=torch.from_numpy(scene_idx.get(name, np.full(n, -1))),
        )
    return out


class _GenerateArgs(TypedDict):
    """The keyword arguments of `generate` that every split of a bundle shares."""

    rho: float
    scale: tuple[float, float]
    mask_threshold: float


def scene_seeds(name: str, seed: int, label: str, n_train: int, n_test: int) -> tuple[int, int]:
    """Check the arguments every scene dataset shares (`label`, the sizes) and derive the
    (training, test) generator seeds from `seed`."""
    if label not in ("object", "scene"):
        raise UserError(f"{name}: label must be 'object' or 'scene', got {label!r}")
    if n_train < 0 or n_test < 0:
        raise UserError(f"{name}: n_train and n_test must be >= 0, got {n_train}, {n_test}")
    s_train, s_test = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))
    return s_train, s_test


def scene_bundle(
    name: str,
    tr: dict[str, torch.Tensor],
    te: dict[str, dict[str, torch.Tensor]],
    label: str,
    class_names: list[str],
) -> DataBundle:
    """The DataBundle of a scene dataset from its generated training split `tr` and test-side
    splits `te` ({split: {"images", "labels", "masks", "scene_class"}}): `test` is the bundle's
    test split, every split is in `bundle.splits` with its scene classes, training images are
    labelled by the scene's class with `label="scene"`, mean/std are the training split's."""
    mean, std = channel_stats(tr["images"] if len(tr["images"]) else te["test"]["images"])
    splits = {
        k: Split(v["images"], v["labels"], v["masks"], v["scene_class"]) for k, v in te.items()
    }
    return DataBundle(
        name,
        tr["images"],
        tr["scene_class"] if label == "scene" else tr["labels"],
        te["test"]["images"],
        te["test"]["labels"],
        len(class_names),
        mean,
        std,
        list(class_names),
        train_masks=tr["masks"],
        test_masks=te["test"]["masks"],
        splits=splits,
    )


@register_dataset("fashion_scenes")
def fashion_scenes(
    root: str | None = None,
    n_train: int = 50000,
    n_test: int = 10000,
    rho: float = 0.9,
    scale_min: float = 0.6,
    scale_max: float = 1.0,
    mask_threshold: float = 0.1,
    seed: int = 0,
    fashion_root: str | None = None,
    cifar_root: str | None = None,
    download: bool = False,
    label: str = "object",
) -> DataBundle:
    """Fashion-MNIST items on CIFAR-10 scenes (see the module docstring). Training: `n_train`
    images from Fashion-MNIST train on CIFAR-10 train scenes; every test-side split: `n_test`
    images from t10k on CIFAR-10 test scenes. The bundle's test split is `test` (drawn like
    training); the others are in `bundle.splits`. mean/std are the training split's.

    `label="scene"` labels the *training* images by their scene's CIFAR-10 class instead of
    the item's (with rho 0.1 the item then carries no information about the label): the
    scene-only calibration model. Test-side splits always keep the item's label."""
    if download:
        raise UserError(
            "fashion_scenes has no download: put Fashion-MNIST's idx .gz files and "
            "CIFAR-10's python pickles on disk (see --data-root)"
        )
    s_train, s_test = scene_seeds("fashion_scenes", seed, label, n_train, n_test)
    fm, cf = _resolve_roots(root, fashion_root, cifar_root)
    kw = _GenerateArgs(rho=rho, scale=(scale_min, scale_max), mask_threshold=mask_threshold)
    tr_items, tr_labels = load_fashion_mnist(fm, True)
    tr_scenes, tr_scene_y, _ = load_cifar(cf, "cifar10", train=True)
    tr = generate(
        tr_items, tr_labels, tr_scenes, tr_scene_y, n_train, seed=s_train, splits=("train",), **kw
    )["train"]
    te_items, te_labels = load_fashion_mnist(fm, False)
    te_scenes, te_scene_y, _ = load_cifar(cf, "cifar10", train=False)
    te = generate(
        te_items, te_labels, te_scenes, te_scene_y, n_test, seed=s_test, splits=SPLITS, **kw
    )
    return scene_bundle("fashion_scenes", tr, te, label, list(CLASS_NAMES))

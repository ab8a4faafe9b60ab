"""ImageNet-style class folders (root/train/<class>/*.jpg, root/val/<class>/*.jpg), in memory.

Images are decoded once with Pillow into uint8 tensors, like the CIFAR bundles:

* test (`val/`): resize the shorter side to `train_resize` (default round(1.14 · resolution),
  i.e. 256 for 224), then center-crop `resolution` - the standard ImageNet evaluation view;
* train (`train/`): resize the shorter side to `train_resize` and center-crop a square of
  that side, so the batch-time augmentation (`random_resized_crop` to `resolution`, with a
  flip) runs on tensors. The held-out validation images are center crops of these
  (`train_view`), which equals the test view exactly.

Memory: N · 3 · side² bytes; e.g. 64 px (side 73) is 16 kB an image, 21 GB for all of
ImageNet-1k's 1.28 M training images; 224 px (side 256) is 197 kB an image, so ~25 GB for a
100-class subset (1300 a class). Use `num_classes` / `max_per_class` (or a folder of symlinks)
for subsets; whole ImageNet at 224 px needs a streaming loader, which this is not.
Decoded tensors are cached under `<root>/.dhat_cache` (or `cache_dir`) keyed by the file list
and the sizes, so a second run (or the other ranks of a DDP job) loads in seconds; the cache
is memory-mapped, but the trainer's subset/split indexing copies it, so each DDP process
holds its own copy of the training images (plan RAM for G copies per node).

The raw ImageNet validation set is one flat folder; sort it into class folders first (the
usual `valprep.sh`). Class indices follow the sorted folder names of `train/`.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError, clip, excerpt
from ..io import atomic_write
from .datasets import DataBundle, register_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
TEST_DIRS = ("val", "validation", "test")
RESIZE_RATIO = 256 / 224  # the ImageNet convention: resize to 256, crop 224
# old dataset names "imagefolder<r>": hidden aliases of `--dataset imagefolder --dataset-arg
# resolution=<r>` (checkpoints and configs that name them still load; not listed)
RESOLUTIONS = (32, 64, 96, 128, 160, 192, 224, 256, 299)


# --- batched, tensor-side augmentation ----------------------------------------------------
def random_resized_crop(
    x: torch.Tensor,
    size: int | tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    flip: bool = True,
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Batched RandomResizedCrop (+ horizontal flip with probability 1/2) on tensors.

    x (B, C, H, W) uint8 or float in [0, 1] -> (B, C, size, size) float in [0, 1]. Per image,
    as torchvision: up to `attempts` draws of an area fraction s ~ U(scale) and a log-uniform
    aspect ratio r; the first box that fits is taken at a uniform integer position, else the
    central crop of the whole image with its ratio clamped into `ratio`. The box is resampled
    bilinearly to `size` with one `grid_sample` (no antialiasing: stored training images are
    only ~1.14x the output side, so a box is downscaled by at most that much); the flip is a
    sign in the same affine map. All randomness comes from `generator`.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    oh, ow = (size, size) if isinstance(size, int) else size
    b, _, h, w = x.shape
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    gdev = generator.device if generator is not None else torch.device("cpu")
    area = float(h * w)
    s = torch.empty(b, attempts, device=gdev).uniform_(scale[0], scale[1], generator=generator)
    logr = torch.empty(b, attempts, device=gdev).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    s, r = s.double().cpu(), logr.double().cpu().exp()
    cw, ch = (s * area * r).sqrt().round(), (s * area / r).sqrt().round()
    fits = (cw >= 1) & (ch >= 1) & (cw <= w) & (ch <= h)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # first fitting draw
    found = fits.any(1)
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    u = torch.rand(b, 3, device=gdev, generator=generator).double().cpu()
    # fallback: the central crop of the whole image, its aspect ratio clamped into `ratio`
    in_ratio = w / h
    if in_ratio < min(ratio):
        fw, fh = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(h * max(ratio)), h
    else:
        fw, fh = w, h
    cw = torch.where(found, cw, torch.full_like(cw, fw))
    ch = torch.where(found, ch, torch.full_like(ch, fh))
    top = torch.where(
        found,
        (u[:, 0] * (h - ch + 1)).floor().clamp(max=h - ch),
        torch.full_like(ch, (h - fh) // 2),
    )
    left = torch.where(
        found,
        (u[:, 1] * (w - cw + 1)).floor().clamp(max=w - cw),
        torch.full_like(cw, (w - fw) // 2),
    )
    # affine map from output to input, normalised coordinates (align_corners=False):
    # x_in = (cw / w) · u + (2·left + cw) / w - 1
    sx = cw / w
    if flip:
        sx = torch.where(u[:, 2] < 0.5, -sx, sx)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + cw) / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (2 * top + ch) / h - 1
    theta = theta.to(dtype=x.dtype if x.is_floating_point() else torch.float32)
    if x.device.type == "cuda":  # pinned and asynchronous: no host synchronisation per batch
        theta = theta.pin_memory().to(x.device, non_blocking=True)
    else:
        theta = theta.to(x.device)
    grid = F.affine_grid(theta, [b, x.shape[1], oh, ow], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.clamp_(0, 1)


def center_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The central (size x size) window of (B, C, H, W) (torchvision's rounding)."""
    oh, ow = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if oh > h or ow > w:
        raise ValueError(f"cannot center-crop {oh}x{ow} from {h}x{w}")
    top, left = int(round((h - oh) / 2.0)), int(round((w - ow) / 2.0))
    return x[..., top : top + oh, left : left + ow]


def train_augment(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
) -> torch.Tensor:
    """The ImageNet training augmentation of a batch: random-resized crop to `size` + flip."""
    return random_resized_crop(x, size, scale, flip=True, generator=generator)


# --- decoding -------------------------------------------------------------------------------
def load_image(path: str | Path, side: int, crop: int) -> np.ndarray:
    """(3, crop, crop) uint8: RGB, shorter side resized to `side` (bilinear, antialiased as
    PIL does), the central side x side square, then its central crop x crop window (two
    steps, so that `center_crop` of a stored training image is exactly the test view)."""
    with Image.open(path) as img:
        img.draft("RGB", (side, side))  # JPEG: decode at a reduced scale when possible
        img = img.convert("RGB")
        w, h = img.size
        if w <= h:
            nw, nh = side, max(side, int(round(h * side / w)))
        else:
            nw, nh = max(side, int(round(w * side / h))), side
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left = int(round((nw - side) / 2.0)) + int(round((side - crop) / 2.0))
        top = int(round((nh - side) / 2.0)) + int(round((side - crop) / 2.0))
        img = img.crop((left, top, left + crop, top + crop))
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def scan(
    split_dir: Path,
    classes: list[str] | None = None,
    max_per_class: int = 0,
    known: list[str] | None = None,
) -> tuple[list[Path], list[int], list[str]]:
    """(paths, labels, class names) of `split_dir/<class>/<image>`, classes in sorted order,
    or in the order of `classes` (to map another split onto the training classes; class
    folders outside `known` are an error, those in `known` but not in `classes` are skipped)."""
    if not split_dir.is_dir():
        raise UserError(
            f"image folder {split_dir} does not exist; expected "
            "<root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg"
        )
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = found if classes is None else list(classes)
    extra = sorted(set(found) - set(known if known is not None else names))
    if classes is not None and extra:
        raise UserError(
            f"{split_dir} has class folders the training set lacks: "
            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(names):
        d = split_dir / name
        files = (
            sorted(p for p in d.iterdir() if p.suffix.lower() in EXTENSIONS) if d.is_dir() else []
        )
        if max_per_class:
            files = files[:max_per_class]
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise UserError(f"no images ({', '.join(EXTENSIONS)}) under {split_dir}/<class>/")
    return paths, labels, names


def decode_all(paths: list[Path], side: int, crop: int, workers: int | None = None) -> torch.Tensor:
    """(N, 3, crop, crop) uint8, decoded by a thread pool (Pillow releases the GIL)."""
    out = torch.empty(len(paths), 3, crop, crop, dtype=torch.uint8)
    arr = out.numpy()
    workers = workers or min(16, os.cpu_count() or 1)

    def one(i: int) -> None:
        try:
            arr[i] = load_image(paths[i], side, crop)
        except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, bomb errors
            raise UserError(
                f"cannot read image {paths[i]} ({type(e).__name__}: {clip(e, 100)})"
            ) from None

    if workers <= 1:
        for i in range(len(paths)):
            one(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(paths)), chunksize=64))
    return out


def _cached_split(
    root: Path,
    split_dir: Path,
    split: str,
    paths: list[Path],
    side: int,
    crop: int,
    cache: bool,
    cache_dir: str | None,
    workers: int | None,
) -> torch.Tensor:
    """decode_all, through a cache file keyed by the relative paths, sizes and mtimes."""
    if not cache:
        return decode_all(paths, side, crop, workers)
    h = hashlib.sha1(f"{side}/{crop}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(split_dir)}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    folder = Path(cache_dir).expanduser() if cache_dir else root / ".dhat_cache"
    file = folder / f"{split}_{side}_{crop}_{h.hexdigest()[:16]}.pt"
    if file.is_file():
        try:
            x = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(x, torch.Tensor) and x.shape == (len(paths), 3, crop, crop):
                return x
        except Exception:  # a corrupt cache is rebuilt
            pass
    x = decode_all(paths, side, crop, workers)
    try:
        atomic_write(file, lambda tmp: torch.save(x, tmp))
    except OSError:
        pass  # a read-only dataset folder: no cache
    return x


def load_imagefolder(
    root: str | Path | None,
    resolution: int = 224,
    train_resize: int | None = None,
    *,
    num_classes: int = 0,
    max_per_class: int = 0,
    max_test_per_class: int = 0,
    cache: bool = True,
    cache_dir: str | None = None,
    workers: int | None = None,
    name: str = "imagefolder",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> DataBundle:
    """A DataBundle of `root/train` and `root/val` (see the module docstring).

    `resolution`: the model's input side. `train_resize`: the stored training side and the
    test resize (default round(resolution · 256/224)). `num_classes`: keep the first K classes
    (sorted names) only; `max_per_class`: at most that many training images a class (sorted
    file names); `max_test_per_class` likewise for the test split.
    """
    if root is None:
        raise UserError(f"dataset '{name}' needs --data-root, a folder with train/ and val/")
    _check_sizes(
        name,
        resolution=(resolution, 8, 1024),
        train_resize=(train_resize or resolution, resolution, 4 * resolution),
        num_classes=(num_classes, 0, 1_000_000),
        max_per_class=(max_per_class, 0, 10_000_000),
        max_test_per_class=(max_test_per_class, 0, 10_000_000),
        workers=(workers or 1, 1, 256),
    )
    root = Path(root).expanduser()
    side = int(train_resize or round(resolution * RESIZE_RATIO))
    if side < resolution:
        raise UserError(f"train_resize {side} must be at least the resolution {resolution}")
    train_dir = root / "train"
    test_dir = next((root / d for d in TEST_DIRS if (root / d).is_dir()), root / "val")
    paths, labels, classes = scan(train_dir, max_per_class=max_per_class)
    all_classes = classes
    if num_classes:
        classes = classes[:num_classes]
        keep = [i for i, k in enumerate(labels) if k < num_classes]
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    tpaths, tlabels, _ = scan(test_dir, classes, max_test_per_class, known=all_classes)
    train_x = _cached_split(root, train_dir, "train", paths, side, side, cache, cache_dir, workers)
    test_x = _cached_split(
        root, test_dir, "test", tpaths, side, resolution, cache, cache_dir, workers
    )
    bundle = DataBundle(
        name,
        train_x,
        torch.tensor(labels, dtype=torch.int64),
        test_x,
        torch.tensor(tlabels, dtype=torch.int64),
        len(classes),
        tuple(mean),
        tuple(std),
        list(classes),
    )
    # how the trainer turns stored training images into model inputs (see the module docstring)
    bundle.resolution = resolution
    bundle.train_augment = partial(train_augment, size=resolution)
    bundle.train_view = partial(center_crop, size=resolution)
    return bundle


def _check_sizes(name: str, **values: tuple[object, int, int]) -> None:
    """Each keyword (value, low, high): an integer in [low, high], else a one-line UserError."""
    for key, (v, low, high) in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise UserError(
                f"dataset '{name}': {key} must be an integer in [{low}, {high}], got {excerpt(v)}"
            )


@register_dataset("imagefolder", args_of=load_imagefolder)
def imagefolder(
    root: str | None = None, download: bool = False, resolution: int = 224, **kwargs
) -> DataBundle:
    """ImageNet-style class folders at `resolution` (224 unless given: `--dataset-arg
    resolution=64`); see load_imagefolder."""
    if download:
        raise UserError(
            "the imagefolder dataset cannot be downloaded; point --data-root at "
            "a folder with train/<class>/ and val/<class>/"
        )
    return load_imagefolder(root, resolution, **kwargs)


def _register_resolution(res: int) -> None:
    @register_dataset(f"imagefolder{res}", args_of=load_imagefolder, hidden=True)
    def _fixed(root: str | None = None, download: bool = False, **kwargs) -> DataBundle:
        kwargs.pop("resolution", None)
        return imagefolder(root, download, resolution=res, name=f"imagefolder{res}", **kwargs)


for _r in RESOLUTIONS:
    _register_resolution(_r)

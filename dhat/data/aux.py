"""Generated training data mixed into every batch, in the DM-Improves-AT .npz format:
`image` uint8 (N, 32, 32, 3) and `label` int (N,), read memory-mapped so that millions of
images stay on disk (the .npz must be stored uncompressed, as `np.savez` writes it).

`AuxMixer` wraps the real-data loader: every batch is B − k real images (in the order an
epoch without generated data would use, the loader running with that smaller batch) plus
k = round(F·B) generated images drawn uniformly with replacement from their own seeded
generator and augmented alike. An epoch is one pass over the real data.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, clip
from .augment import random_crop_flip
from .loader import Batch, BatchLoader


def _member_array(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    """A stored (uncompressed) .npy member of an .npz, memory-mapped; a truncated or foreign
    member (or one of Python objects, which would need unpickling) is a one-line UserError."""
    try:
        return _map_member(path, zf, name)
    except UserError:
        raise
    except (OSError, ValueError, EOFError, TypeError, OverflowError) as e:
        raise UserError(
            f"--aux-data {path}: '{name}' is not a readable .npy array "
            f"({type(e).__name__}: {clip(e, 80)})"
        ) from None


def _map_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise UserError(
            f"{path}: '{name}' is compressed and cannot be memory-mapped; re-save "
            "the file with np.savez (not np.savez_compressed)"
        )
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise UserError(f"{path} is not a readable .npz (bad zip entry for '{name}')")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        major, _ = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran:
        raise UserError(f"{path}: '{name}' is stored in Fortran order; re-save it C-ordered")
    if dtype.hasobject:
        raise UserError(f"{path}: '{name}' holds Python objects; it must be a numeric array")
    end = info.header_offset + 30 + name_len + extra_len + info.file_size  # the member's end
    if offset + int(np.prod(shape, dtype=object)) * dtype.itemsize > end:
        raise UserError(f"{path}: '{name}' is shorter than its header says (a truncated file?)")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def open_aux(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8 memory-mapped, labels (N,) int64) of a generated-data file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--aux-data {p} does not exist")
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError):
        raise UserError(
            f"--aux-data {p} is not an .npz file (np.savez of 'image' and 'label')"
        ) from None
    with zf:
        names = set(zf.namelist())
        if not {"image.npy", "label.npy"} <= names:
            raise UserError(
                f"--aux-data {p} needs arrays 'image' and 'label', it has "
                f"{', '.join(sorted(n.removesuffix('.npy') for n in names))}"
            )
        images = _member_array(p, zf, "image.npy")
        labels = np.asarray(_member_array(p, zf, "label.npy"))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise UserError(
            f"--aux-data {p}: 'image' must be uint8 (N, H, W, 3), got "
            f"{images.dtype} {tuple(images.shape)}"
        )
    if (
        labels.ndim != 1
        or len(labels) != len(images)
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise UserError(
            f"--aux-data {p}: 'label' must be {len(images)} integers, got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )
    return images, labels.astype(np.int64)


def check_aux_file(path: str | Path) -> None:
    """Shape and dtype checks (cheap: headers only), before any data is loaded."""
    open_aux(path)


class AuxMixer:
    """Batches of `loader`'s real images plus `k` generated ones each (see the module docstring)."""

    def __init__(
        self,
        loader: BatchLoader,
        images: np.ndarray,
        labels: np.ndarray,
        k: int,
        *,
        num_classes: int,
        size: tuple[int, int],
        generator: torch.Generator,
        augment: bool = True,
        padding: int = 4,
    ):
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise UserError(
                f"--aux-data: labels must lie in [0, {num_classes}); found {int(labels[bad][0])}"
            )
        if tuple(images.shape[1:3]) != tuple(size):
            raise UserError(
                f"--aux-data: images are {images.shape[1]}×{images.shape[2]}, the "
                f"dataset's are {size[0]}×{size[1]}"
            )
        self.loader, self.images, self.labels, self.k = loader, images, labels, k
        self.generator, self.augment, self.padding = generator, augment, padding

    def __len__(self) -> int:
        return len(self.loader)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """k generated images (float in [0, 1], augmented) and labels, from the generator."""
        idx = torch.randint(0, len(self.labels), (self.k,), generator=self.generator)
        order = np.sort(idx.numpy())  # sorted reads are kinder to a memory map
        x = torch.from_numpy(np.ascontiguousarray(self.images[order])).permute(0, 3, 1, 2)
        x = x.float().div_(255)
        if self.augment:
            x = random_crop_flip(x, self.padding, generator=self.generator)
        return x, torch.from_numpy(self.labels[order])

    def __iter__(self) -> Iterator[Batch]:
        ws, rank = self.loader.world_size, self.loader.rank
        for batch in self.loader:
            x, y = self.draw()
            if ws > 1:
                per = self.k // ws
                x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
            dev = batch.x.device
            if dev.type == "cuda":  # pinned and asynchronous: no host synchronisation
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            yield Batch(
                torch.cat([batch.x, x]),
                torch.cat([batch.y, y]),
                torch.cat(
                    [batch.index, torch.full((len(y),), -1, device=dev, dtype=batch.index.dtype)]
                ),
            )

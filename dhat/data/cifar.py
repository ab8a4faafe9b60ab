"""CIFAR-10/100 from the official python-pickle layouts; download with checksum when online.

The pickles are read by a restricted unpickler that builds only what the official files
hold (dicts, lists, text, bytes, numbers and numpy arrays): a crafted file that asks for
anything else (a function to call, a module to import) is refused with one line naming it,
and nothing in it runs. A truncated or foreign file is one line too.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import urllib.request
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from ..errors import UserError, clip


class Source(TypedDict):
    """Where a CIFAR variant comes from and how its official pickles are laid out."""

    folder: str
    url: str
    md5: str
    train: list[str]
    test: list[str]
    label_key: str
    meta: str
    names_key: str


SOURCES: dict[str, Source] = {
    "cifar10": Source(
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        label_key="labels",
        meta="batches.meta",
        names_key="label_names",
    ),
    "cifar100": Source(
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train=["train"],
        test=["test"],
        label_key="fine_labels",
        meta="meta",
        names_key="fine_label_names",
    ),
}


def find_folder(root: str | Path, name: str) -> Path | None:
    """The pickle folder: `root` itself, or `root/<official folder>`; None if absent."""
    src = SOURCES[name]
    root = Path(root).expanduser()
    for cand in (root, root / src["folder"]):
        if all((cand / f).is_file() for f in src["train"] + src["test"]):
            return cand
    return None


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(root: str | Path, name: str) -> Path:
    """Download the official archive into `root`, check its MD5, extract (UserError offline)."""
    src = SOURCES[name]
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    archive = root / Path(src["url"]).name
    tmp = archive.with_suffix(".part")
    try:
        urllib.request.urlretrieve(src["url"], tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"{name} not found under {root} and the download failed ({e.__class__.__name__}); "
            f"put the official '{src['folder']}/' folder there (from {src['url']})"
        ) from None
    if _md5(tmp) != src["md5"]:
        tmp.unlink(missing_ok=True)
        raise UserError(f"downloaded {archive.name} has the wrong MD5; delete it and retry")
    tmp.rename(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root / src["folder"]


MAX_PICKLE_BYTES = 1 << 30  # the largest official file (CIFAR-100 train) is 155 MB


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the official CIFAR files' few numpy names."""


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as Python 3 pickles of bytes (protocol < 3) use it: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals that numpy's pickling of arrays, dtypes and scalars needs (numpy 1 and 2
    module names), and latin-1 `_codecs.encode`: nothing else can be named in a CIFAR file."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2; numpy.core below
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]  # same modules
    out: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        out[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            out[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return out


class _CifarUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, text, bytes, numbers and numpy arrays; any other global
    (a callable, a class, a module) raises RefusedGlobal before it is looked up."""

    allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        obj = self.allowed.get((module, name))
        if obj is None:
            raise RefusedGlobal(f"{clip(module, 60)}.{clip(name, 60)}")
        return obj


def safe_load(path: str | Path) -> Any:
    """Unpickle one CIFAR file with the restricted unpickler; a one-line UserError naming the
    file for anything it refuses, a truncated or foreign file, or one over 1 GB."""
    path = Path(path)
    fix = "replace the folder with the official archive's (--download into an empty folder)"
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise UserError(f"{path} is {size} bytes, not an official CIFAR file; {fix}")
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as e:
        raise UserError(
            f"{path} is not an official CIFAR file: it asks for {e}, which those never "
            f"hold (refused, nothing in it was run); {fix}"
        ) from None
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {clip(e, 80)})") from None
    except Exception as e:  # truncated or garbage: EOFError, UnpicklingError, ValueError, ...
        raise UserError(
            f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {clip(e, 80)}); {fix}"
        ) from None


def _read(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file, shapes checked."""
    d = safe_load(path)
    if not isinstance(d, dict) or "data" not in d or label_key not in d:
        raise UserError(f"{path} is not a CIFAR pickle (no 'data'/'{label_key}' keys)")
    data, labels = d["data"], d[label_key]
    ok = (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
    )
    if not ok:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: 'data' must be a uint8 array (N, 3072), got {got}")
    try:
        y = np.asarray(labels)
    except Exception:  # a ragged or foreign object
        y = np.asarray([])
    if y.shape != (len(data),) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: '{label_key}' must be {len(data)} integer labels")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _class_names(path: Path, key: str) -> list[str]:
    """The class names in a batches.meta / meta file (a UserError if it is not one)."""
    d = safe_load(path)
    names = d.get(key, []) if isinstance(d, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path} is not a CIFAR meta file (no list of class names '{key}')")
    return names


def data_folder(name: str, root: str | Path | None) -> Path | None:
    """The folder `load_dataset(name, root)` reads for CIFAR `name` (absolute), None if it
    finds none there; `root=None` searches the default places as the loader does."""
    from .datasets import DEFAULT_CIFAR_ROOTS  # a cycle: dhat.data.datasets imports this module

    roots = [root] if root is not None else list(DEFAULT_CIFAR_ROOTS)
    for r in roots:
        folder = find_folder(r, name)
        if folder is not None:
            return folder.resolve()
    return None


def load_cifar(
    root: str | Path, name: str = "cifar10", train: bool = True, download_ok: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 3, 32, 32) uint8, labels (N,) int64, class names. No 'filenames' key needed."""
    if name not in SOURCES:
        raise UserError(f"unknown CIFAR variant {name!r}; use cifar10 or cifar100")
    src = SOURCES[name]
    folder = find_folder(root, name)
    if folder is None:
        if not download_ok:
            raise UserError(
                f"{name} not found: expected {Path(root) / src['folder']}/ with "
                f"{', '.join(src['train'] + src['test'])} (the official python layout); "
                "pass --download to fetch it, or --data-root to point at it"
            )
        folder = download(root, name)
    parts = [_read(folder / f, src["label_key"]) for f in (src["train"] if train else src["test"])]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    classes = 10 if name == "cifar10" else 100
    if len(y) and not (0 <= int(y.min()) and int(y.max()) < classes):
        raise UserError(f"{folder}: {name} labels must lie in [0, {classes})")
    meta = folder / src["meta"]
    names = _class_names(meta, src["names_key"]) if meta.is_file() else []
    return x, y, names

"""CIFAR-10/100 from the official python-pickle layouts; download with checksum when online."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import urllib.request
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

from ..errors import UserError


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


def _read(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    try:
        data, labels = d["data"], d[label_key]
    except (KeyError, TypeError):
        raise UserError(f"{path} is not a CIFAR pickle (no 'data'/'{label_key}' keys)") from None
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, np.int64)


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
    names: list[str] = []
    meta = folder / src["meta"]
    if meta.is_file():
        with open(meta, "rb") as f:
            names = list(pickle.load(f, encoding="latin1").get(src["names_key"], []))
    return x, y, names

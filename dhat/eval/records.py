"""Per-image records: every per-image value behind a result card, in a compact `.npz` beside
it, hashed in the card, so that two models evaluated on the same images can be compared
pairwise (`dhat.analysis.paired`).

Names (see `background.record_key`): "test|<attack>" (correct under each attack on the test
images), "aa|robust" (AutoAttack's per-image robustness), "gap|train" / "gap|test" (PGD-10
correctness behind the robust gap), "bg|<split>|<attack>" (background splits) and
"att|<split>|<setting>|<measure>" (attention measures, `attention.attention_per_image`).
The card's "records" entry holds the file name (relative to the card), its SHA-256, the
names, and a SHA-256 per image set ("images") so that a pairing can check it compares the
same images.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..io import current_umask

SUFFIX = ".records.npz"


def images_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-256 of an image set: its images' bytes (as stored) and labels, in order."""
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().long().contiguous().numpy().tobytes())
    return h.hexdigest()


def records_path(card_path: str | Path) -> Path:
    """eval_best.json -> eval_best.records.npz (beside the card)."""
    p = Path(card_path)
    return p.with_name(p.stem + SUFFIX)


def _as_array(v: torch.Tensor | np.ndarray) -> np.ndarray:
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if a.dtype == np.bool_:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32)
    return a


def write_records(path: str | Path, records: dict[str, Any]) -> str:
    """Write `records` ({name: (N,) tensor/array}) atomically as a compressed .npz; return its
    SHA-256. Floats are stored as float32, correctness as bool."""
    path = Path(path)
    buf = io.BytesIO()
    arrays: dict[str, Any] = {k: _as_array(v) for k, v in sorted(records.items())}
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def card_records(
    card: dict[str, Any], card_path: str | Path | None = None
) -> dict[str, np.ndarray]:
    """The per-image records of `card`, read from beside it and checked against the SHA-256
    the card holds (one-line UserError if missing or changed)."""
    entry = card.get("records")
    where = card_path or card.get("path") or "result card"
    if not isinstance(entry, dict) or "file" not in entry:
        raise UserError(
            f"{where}: the card has no per-image records (evaluate it again with this "
            "version of dhat to pair it with another)"
        )
    base = Path(card_path or card.get("path") or ".").parent
    path = base / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(
            f"{where}: its per-image records {path} cannot be read ({e.strerror})"
        ) from None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise UserError(
            f"{path}: per-image records do not match the SHA-256 in {where} (changed or "
            "replaced since the card was written)"
        )
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}

"""Files: atomic writes that respect the umask, JSON/text helpers, hashing.

Every file dhat writes (checkpoints, config.yaml, result cards, exports, plots) goes through
`atomic_write`: the content is written to a temporary file in the same folder and renamed
onto the target, so a reader (or a crash) never sees a partial file, and the file gets the
mode an ordinary `open(path, "w")` would (0666 minus the umask).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import UserError


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Call `write(tmp_path)`, then rename onto `path`: a reader never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_obstacle(path: str | Path) -> tuple[Path, str | None]:
    """The nearest existing folder above `path` and what stops a file being written there:
    "file" (that ancestor is a file), "unwritable" (a probe file cannot be created), or None."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return folder, "file"
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".dhat-write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError:
        return folder, "unwritable"
    return folder, None


def check_output_path(
    path: str | Path,
    inputs: Iterable[str | Path | None] = (),
    suffixes: Iterable[str] = (),
    *,
    flag: str = "--out",
    writable: bool = True,
) -> Path:
    """`path` as an output, checked before any work: it has one of `suffixes` (any if none
    given), is not a folder, is none of `inputs` (also through a symlink or a hard link), and
    (`writable`) its nearest existing folder is a folder that can be written. One-line
    UserError naming `flag` otherwise; returns `path`."""
    path = Path(path)
    allowed = [s.lower() for s in suffixes]
    if allowed and path.suffix.lower() not in allowed:
        raise UserError(
            f"{flag} {path}: expected a {' or '.join(allowed)} file (this output is written "
            f"as {allowed[0][1:].upper()}, so another suffix would mislabel it)"
        )
    if path.is_dir():
        raise UserError(
            f"{flag} {path} is a folder; name a file" + (f" ({allowed[0]})" if allowed else "")
        )
    for inp in inputs:
        if inp is not None and str(inp) and same_file(path, inp):
            raise UserError(
                f"{flag} {path} is an input of this command ({inp}); writing there would "
                "destroy it: name another file"
            )
    if writable:
        folder, problem = write_obstacle(path)
        if problem == "file":
            raise UserError(f"cannot write {flag} {path}: {folder} is a file, not a folder")
        if problem == "unwritable":
            raise UserError(
                f"cannot write {flag} {path}: {folder} is not writable; pass {flag} PATH "
                "somewhere writable"
            )
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether paths `a` and `b` name the same file: equal once resolved (symlinks followed),
    or the same inode (a hard link)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:  # an unreadable path: compare the text
        return os.path.abspath(a) == os.path.abspath(b)

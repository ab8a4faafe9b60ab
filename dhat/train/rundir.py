"""The run directory: one writer at a time, an overwrite that never mixes two runs, logs
that survive a torn line.

* **Lock.** A training holds an exclusive `flock` on `<parent>/.<name>.lock` for its whole
  life; the file names the holder (PID, host). A second writer gets one line naming it. The
  kernel drops the lock when the holder dies, so a stale lock is taken over safely.
* **Overwrite.** `--overwrite` trains into a hidden sibling `.<name>.staging`; at the first
  checkpoint the old run is renamed aside, the new one into place, and the old one deleted.
  Until then the directory holds the old run, untouched: an interrupted overwrite loses
  nothing. (A crash between the two renames leaves the old run as `.<name>.old`, which the
  next start puts back.)
* **A run** is a directory with a `last.pt`; one without (a run that diverged before its
  first good checkpoint) may be started afresh.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any, IO

from ..errors import UserError


class RunLock:
    """An exclusive, non-blocking lock on a run directory (see the module docstring)."""

    def __init__(self, out: Path):
        self.path = out.parent / f".{out.name}.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(f"{self.path.parent / self.path.name[1:-5]} is in use by another "
                            f"training ({holder}); wait for it to finish or choose another "
                            "--out-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.staging"


def old_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.old"


def recover(out: Path) -> None:
    """Undo a swap interrupted between its two renames; drop a dead overwrite's staging."""
    old = old_dir(out)
    if old.is_dir():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(out)
    shutil.rmtree(staging_dir(out), ignore_errors=True)


def swap_in(out: Path, staging: Path) -> None:
    """Put the staged run in place of the old one (see the module docstring)."""
    old = old_dir(out)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def holds_run(out: Path) -> bool:
    return (out / "last.pt").is_file()


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """One line, before any data is read, for an out-dir that cannot take this run."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {out} is a file; choose a directory")
    probe = out if out.exists() else next(p for p in out.parents if p.exists())
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out-dir {out}: {probe} is not writable; choose another --out-dir")
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if resume and not out.is_dir():
        raise UserError(f"--resume: {out} does not exist; drop --resume to start a new run")
    if resume and not holds_run(out):
        raise UserError(f"--resume: {out} holds no last.pt to continue from; drop --resume "
                        "(or --overwrite) to start afresh")
    if holds_run(out) and not (resume or overwrite):
        raise UserError(f"{out} already holds a run; pass --resume to continue it, "
                        "--overwrite to replace it, or choose another --out-dir")


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a log.jsonl; a torn last line (a kill mid-write) is dropped with a
    warning, a torn line elsewhere is an error."""
    if not path.is_file():
        return []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    out = []
    for i, ln in enumerate(lines):
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: dropped a torn last line (the run was killed while "
                              "writing it)", stacklevel=2)
                continue
            raise UserError(f"{path}: line {i + 1} is not JSON; the log is damaged") from None
    return out


def write_log(path: Path, records: list[dict[str, Any]]) -> None:
    from ..io import write_text
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())

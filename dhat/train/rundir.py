"""The run directory: one writer at a time, an overwrite that never mixes two runs, logs
that survive a torn line.

* **Lock.** A training holds an exclusive `flock` on `<parent>/.<name>.lock` for its whole
  life; the file names the holder (PID, host). A second writer gets one line naming it. The
  kernel drops the lock when the holder dies, so a stale lock is taken over safely. The
  lock, the staging folder and the swap name the directory itself (symlinks resolved), so
  two paths to one directory are one run.
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
import re
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import IO, Any

from ..errors import UserError


def real_path(out: Path) -> Path:
    """`out` with every symlink resolved: the lock, the staging folder and the swap act on the
    directory itself, whatever path (a symlink, `..`) names it."""
    return Path(os.path.realpath(out))


class RunLock:
    """An exclusive, non-blocking lock on a run directory (see the module docstring)."""

    # How long a refused writer waits for the holder to write its name (it takes the lock,
    # then writes): the refusal then names the live holder, not "another process" or the
    # dead previous holder whose name is still in the file.
    NAME_WAIT_S = 2.0

    def __init__(self, out: Path):
        self.out = Path(out)
        real = real_path(self.out)
        self.path = real.parent / f".{real.name}.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = open(self.path, "a+")
        except OSError as e:
            why = e.strerror or type(e).__name__
            raise UserError(
                f"cannot lock {self.out} ({self.path}: {why}); choose another --out-dir"
            ) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_name(f, self.NAME_WAIT_S)
            f.close()
            raise UserError(
                f"{self.out} is in use by another training ({holder}); wait for it "
                "to finish or choose another --out-dir"
            ) from None
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


def _holder_name(f: IO[str], wait_s: float) -> str:
    """The lock file's 'PID N on HOST', once it names a live process (or after `wait_s`)."""
    end = time.monotonic() + wait_s
    while True:
        f.seek(0)
        name = f.read().strip()
        if (name and _alive(name)) or time.monotonic() >= end:
            return name or "another process"
        time.sleep(0.02)


def _alive(name: str) -> bool:
    """False only for a 'PID N on HOST' of this host whose process N does not exist."""
    m = re.fullmatch(r"PID (\d+) on (\S+)", name)
    if not m or m[2] != socket.gethostname():
        return True
    try:
        os.kill(int(m[1]), 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        pass
    return True


def staging_dir(out: Path) -> Path:
    real = real_path(out)
    return real.parent / f".{real.name}.staging"


def old_dir(out: Path) -> Path:
    real = real_path(out)
    return real.parent / f".{real.name}.old"


def recover(out: Path) -> None:
    """Undo a swap interrupted between its two renames; drop a dead overwrite's staging.
    Call it holding the lock."""
    out = real_path(out)
    old = old_dir(out)
    if old.is_dir():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(out)
    shutil.rmtree(staging_dir(out), ignore_errors=True)


def swap_in(out: Path, staging: Path) -> None:
    """Put the staged run in place of the old one (see the module docstring)."""
    out = real_path(out)
    old = old_dir(out)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def holds_run(out: Path) -> bool:
    return (out / "last.pt").is_file()


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """One line, before any data is read, for an out-dir that cannot take this run. A run
    whose swap was interrupted between its renames (`.<name>.old`, put back by `recover`)
    counts as the run in `out`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {out} is a file; choose a directory")
    probe = out if out.exists() else next(p for p in out.parents if p.exists())
    if not probe.is_dir():
        raise UserError(
            f"--out-dir {out}: {probe} is a file, not a folder; choose another --out-dir"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out-dir {out}: {probe} is not writable; choose another --out-dir")
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    run = out if out.exists() or not old_dir(out).is_dir() else old_dir(out)
    if resume and not run.is_dir():
        raise UserError(f"--resume: {out} does not exist; drop --resume to start a new run")
    if resume and not holds_run(run):
        raise UserError(
            f"--resume: {out} holds no last.pt to continue from; drop --resume "
            "(or --overwrite) to start afresh"
        )
    if holds_run(run) and not (resume or overwrite):
        raise UserError(
            f"{out} already holds a run; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out-dir"
        )


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
                warnings.warn(
                    f"{path}: dropped a torn last line (the run was killed while writing it)",
                    stacklevel=2,
                )
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

"""The run directory: one writer at a time, an overwrite that never mixes two runs nor deletes
what is not the run's, logs that survive a torn line, no write through a planted link.

* **Lock.** A training holds an exclusive `flock` on `<parent>/.<name>.lock` for its whole
  life; the file names the holder (PID, host) and is removed when the holder exits. A second
  writer gets one line naming it. The kernel drops the lock when the holder dies, so a stale
  lock is taken over safely. The lock, the staging folder and the swap name the directory
  itself (symlinks resolved), so two paths to one directory are one run.
* **Overwrite.** `--overwrite` trains into a hidden sibling `.<name>.staging`; at the first
  checkpoint the old run is renamed aside, the new one into place, and the old one deleted.
  Until then the directory holds the old run, untouched: an interrupted overwrite loses
  nothing. (A crash between the two renames leaves the old run as `.<name>.old`, which the
  next start puts back.) Only a folder that holds nothing but the run's own files (those its
  manifest, `.dhat-manifest`, names) is replaced; anything else is refused, by name.
* **Links.** The lock, the staging folder and the files appended to (log.jsonl, the
  manifest) are opened without following symlinks; a planted link is refused with one line.
  Whole files (checkpoints, config.yaml, events.jsonl) are renamed into place, which replaces
  a link and never writes through it.
* **A run** is a directory with a `last.pt`; one without (a run that diverged before its
  first good checkpoint) may be started afresh.
* **Readers.** `pin_folder` lets `dhat eval` write its card into a run directory only if no
  overwrite swapped it (or is about to) since the checkpoint was read.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import re
import shutil
import socket
import stat
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import io  # used as io.write_text: a test that replaces it (a kill mid-write) is seen
from .errors import UserError

MANIFEST = ".dhat-manifest"
# The files a training writes into its run directory.
RUN_FILES = ("config.yaml", "log.jsonl", "events.jsonl", "last.pt", "best.pt")
# What a run directory written before manifests existed holds (owned when it has no manifest).
LEGACY_PATTERNS = (*RUN_FILES, "eval_*.json", "eval_*_curves.png", "eval_*.records.npz")


def real_path(out: Path) -> Path:
    """`out` with every symlink resolved: the lock, the staging folder and the swap act on the
    directory itself, whatever path (a symlink, `..`) names it."""
    return Path(os.path.realpath(out))


def _link_error(path: Path) -> UserError:
    return UserError(
        f"{path} is a symbolic link (dhat never writes through one in a run directory); "
        "remove the link, or choose another --out-dir"
    )


def open_nofollow(path: Path, flags: int, mode: int = 0o666) -> int:
    """os.open without following a symlink at `path`; a link, a non-regular file or a file with
    other hard links (writing it would change another path) is a one-line UserError."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise _link_error(path) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "hard-linked elsewhere"
        raise UserError(f"{path} is {what} (not made by dhat); remove it and retry")
    return fd


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
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
            except OSError as e:
                why = e.strerror or type(e).__name__
                raise UserError(
                    f"cannot lock {self.out} ({self.path}: {why}); choose another --out-dir"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_name(fd, self.NAME_WAIT_S)
                os.close(fd)
                raise UserError(
                    f"{self.out} is in use by another training ({holder}); wait for it "
                    "to finish or choose another --out-dir"
                ) from None
            # The holder before us removes the file when it is done: a lock taken on a file
            # that is no longer at `path` locks nothing, so take it again on the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file (while still holding it: see `acquire`) and unlock."""
        if self._fd is not None:
            try:
                if os.path.samestat(os.fstat(self._fd), os.lstat(self.path)):
                    os.unlink(self.path)
            except OSError:
                pass  # already gone, or the folder was made read-only: nothing to clean
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _holder_name(fd: int, wait_s: float) -> str:
    """The lock file's 'PID N on HOST', once it names a live process (or after `wait_s`)."""
    end = time.monotonic() + wait_s
    while True:
        name = os.pread(fd, 4096, 0).decode(errors="replace").strip()
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


def lock_held(out: Path) -> bool:
    """Whether a training holds `out`'s lock now (never creates the lock file)."""
    path = RunLock(out).path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def staging_dir(out: Path) -> Path:
    real = real_path(out)
    return real.parent / f".{real.name}.staging"


def old_dir(out: Path) -> Path:
    real = real_path(out)
    return real.parent / f".{real.name}.old"


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise _link_error(path)


def recover(out: Path) -> None:
    """Undo a swap interrupted between its two renames; drop a dead overwrite's staging.
    A planted link in place of either is refused (its target is left alone). Call it holding
    the lock."""
    out = real_path(out)
    old, staging = old_dir(out), staging_dir(out)
    _refuse_link(old)
    _refuse_link(staging)
    if old.is_dir():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(out)
    shutil.rmtree(staging, ignore_errors=True)


def make_staging(out: Path) -> Path:
    """Create the staging folder afresh (it was removed by `recover`): one that exists now
    was planted, and is refused."""
    staging = staging_dir(out)
    try:
        os.mkdir(staging)
    except FileExistsError:
        _refuse_link(staging)
        raise UserError(
            f"{staging} appeared while this training started (not made by dhat); remove "
            "it and retry"
        ) from None
    return staging


def check_run_files(run: Path) -> None:
    """Refuse a run directory in which a file dhat writes is a symbolic link."""
    for name in (*RUN_FILES, MANIFEST):
        _refuse_link(run / name)


# --- ownership ---------------------------------------------------------------------------
def manifest_names(folder: Path) -> set[str] | None:
    """The names `folder`'s manifest lists (None if it has none)."""
    path = folder / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None
    return {ln for ln in path.read_text(errors="replace").splitlines() if ln and "/" not in ln}


def _is_temp_of(name: str, owned: set[str]) -> bool:
    """`.X.<random>.tmp`, a temporary file of `io.atomic_write` for an owned X."""
    m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name)
    return bool(m and m[1] in owned)


def owned_names(folder: Path, names: list[str]) -> set[str]:
    """Which of `names` (entries of `folder`) belong to the run in `folder`: those its
    manifest lists (a run written before manifests: the names dhat gives its files), the
    manifest itself, and temporary files of those."""
    listed = manifest_names(folder)
    if listed is None:
        if not holds_run(folder):
            return set()
        listed = {n for n in names if any(fnmatch.fnmatch(n, p) for p in LEGACY_PATTERNS)}
    owned = {n for n in names if n in listed or n == MANIFEST}
    return owned | {n for n in names if _is_temp_of(n, listed)}


def foreign_entries(folder: Path) -> list[str]:
    """The entries of `folder` that are not its run's (sorted); [] for a missing folder."""
    if not folder.is_dir():
        return []
    names = sorted(os.listdir(folder))
    owned = owned_names(folder, names)
    return [n for n in names if n not in owned]


def register(folder: Path, names: list[str] | tuple[str, ...]) -> None:
    """Add `names` to `folder`'s manifest (appended, one line each; a run written before
    manifests first gets one naming its own files)."""
    listed = manifest_names(folder)
    if listed is None and holds_run(folder):
        here = os.listdir(folder)
        listed = set()
        names = [*owned_names(folder, here), *names]
    new = [n for n in dict.fromkeys(names) if n not in (listed or set()) and n != MANIFEST]
    if new:
        append_text(folder / MANIFEST, "".join(n + "\n" for n in new))


def clean_temp_files(run: Path) -> list[str]:
    """Remove the temporary files a killed training left (`.last.pt.<random>.tmp`, ...);
    returns their names. Only the training's own files: a card being written is spared."""
    if not run.is_dir():
        return []
    gone = [n for n in os.listdir(run) if _is_temp_of(n, {*RUN_FILES, MANIFEST})]
    for n in gone:
        (run / n).unlink(missing_ok=True)
    return gone


# --- checks and the swap -----------------------------------------------------------------
def swap_in(out: Path, staging: Path) -> None:
    """Put the staged run in place of the old one (see the module docstring), holding the old
    directory's flock exclusively (`pin_folder` holds it shared while writing a card). Files
    that appeared in the old run since the overwrite started (not its own) are moved into the
    new run; if one of them would replace a file of the new run, nothing is swapped."""
    out = real_path(out)
    old = old_dir(out)
    if not out.exists():
        staging.rename(out)
        return
    with _dir_flock(out, fcntl.LOCK_EX):
        keep = foreign_entries(out)
        clash = [n for n in keep if (staging / n).exists() or (staging / n).is_symlink()]
        if clash:
            raise UserError(
                f"{out / clash[0]} appeared during the overwrite and is not the run's; the old "
                "run is untouched: move that file away and --overwrite again"
            )
        out.rename(old)
        staging.rename(out)
        for n in keep:
            os.rename(old / n, out / n)
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
    if resume or not run.is_dir():
        return
    if holds_run(run):  # --overwrite: the whole folder is replaced
        foreign = foreign_entries(run)
    else:  # a new run in an existing folder: it must not replace what is not a run's
        owned = manifest_names(run) or set()
        foreign = [n for n in RUN_FILES if n not in owned and (run / n).exists()]
    if foreign:
        raise UserError(
            f"{out} holds {foreign[0]!r}, which is not a file of a dhat run"
            + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else "")
            + "; dhat replaces only its own files: move it away or choose another --out-dir"
        )


# --- logs --------------------------------------------------------------------------------
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


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write_log(path: Path, records: list[dict[str, Any]]) -> None:
    io.write_text(path, jsonl(records))


def append_text(path: Path, text: str) -> None:
    """Append `text` in one write and fsync it; never through a symlink (see open_nofollow)."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    append_text(path, json.dumps(record) + "\n")


# --- readers -----------------------------------------------------------------------------
@contextmanager
def _dir_flock(folder: Path, how: int) -> Iterator[int]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, how)
        except OSError as e:  # a filesystem without flock: the identity checks still hold
            if e.errno not in (errno.ENOLCK, errno.EBADF, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield fd
    finally:
        os.close(fd)  # drops the flock


class RunSwapped(UserError):
    """The folder a result was to be written into was replaced by an overwrite."""


class FolderPin:
    """The identity of the folder a result will be written into, taken when its input was
    read (`pin_folder`). `with pin.write(path, ...)` then holds that folder's flock shared
    while the files are written, so an overwrite's swap waits for them; it raises `RunSwapped`
    instead if the folder was swapped since, or an overwrite of it is running (its swap would
    delete them). The files written are added to a run directory's manifest."""

    def __init__(self, path: str | Path):
        self.folder = real_path(Path(path).absolute().parent)
        try:
            self.ident: tuple[int, int] | None = _ident(os.stat(self.folder))
        except OSError:
            self.ident = None  # a folder made later is no run's

    @contextmanager
    def write(self, *paths: str | Path) -> Iterator[None]:
        if self.ident is None:
            yield
            return
        try:
            lock = _dir_flock(self.folder, fcntl.LOCK_SH)
            fd = lock.__enter__()
        except OSError:
            raise self._swapped("was removed") from None
        try:
            try:
                now: tuple[int, int] | None = _ident(os.stat(self.folder))
            except OSError:
                now = None
            if now != self.ident or _ident(os.fstat(fd)) != self.ident:
                raise self._swapped("was replaced by `dhat train --overwrite`")
            if staging_dir(self.folder).is_dir() and lock_held(self.folder):
                raise self._swapped("is being replaced by a running `dhat train --overwrite`")
            yield
            if manifest_names(self.folder) is not None or holds_run(self.folder):
                mine = [Path(p) for p in paths]
                register(self.folder, [p.name for p in mine if real_path(p.parent) == self.folder])
        finally:
            lock.__exit__(None, None, None)

    def _swapped(self, what: str) -> RunSwapped:
        return RunSwapped(
            f"{self.folder} {what} while this evaluation ran: its result would describe a "
            "run that is gone; nothing was written there"
        )


def pin_folder(path: str | Path) -> FolderPin:
    """Pin the folder that will receive `path` (see `FolderPin`); call it when the input is
    read, before the long work."""
    return FolderPin(path)


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino

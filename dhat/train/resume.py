"""Resume policy: what the run directory holds for this run and what --resume may do with it.

`claim` decides, with the run directory locked, whether this is a resume (every rank must see
last.pt), checks a resume's config against the saved one (`check_resume_config`), and brings
the files beside last.pt in step with it (`repair`: an interruption between the writes of
one epoch, see `dhat.train.trainer`). `restore` then puts last.pt into the built parts and
trims log.jsonl to its epochs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import io  # used as io.write_text: a test that replaces it (a kill mid-write) is seen
from ..checkpoint import read_checkpoint
from ..config import TrainConfig
from ..distributed import Dist, all_ranks
from ..errors import UserError
from ..rundir import (
    check_out_dir,
    check_run_files,
    clean_temp_files,
    holds_run,
    jsonl,
    read_log,
    recover,
    staging_dir,
    write_log,
)
from .assembly import Parts
from .state import Progress, config_changes, config_dict, load_state

# Config fields a resume can never change, even with --allow-change: last.pt's state is made
# for them.
FIXED_ON_RESUME = {
    "model": "last.pt holds weights of the run's architecture",
    "model_args": "last.pt holds weights of the run's architecture",
    "ema_decay": "last.pt's averaged weights (or their absence) belong to the run's EMA",
    "aux_data": "the run's batches and generator state are made for its generated data",
}


@dataclass
class Claim:
    """What this run makes of its directory `out`."""

    resume: bool  # continue last.pt (seen by every rank)
    saved: dict[str, Any] | None  # last.pt, read on the main process of a resume
    changes: dict[str, tuple[Any, Any]]  # {setting: (saved, current)} a resume accepted
    staged: bool  # an overwrite of a run: written beside it, swapped in at its first checkpoint
    run_dir: Path  # where the run writes: `out`, or the staging folder of an overwrite


def claim(
    out: Path,
    cfg: TrainConfig,
    dist: Dist,
    device: torch.device,
    *,
    resume: bool,
    overwrite: bool,
    allow_change: Collection[str],
) -> Claim:
    """Recover and check `out` (the main process holds its lock), agree across ranks on a
    resume, and on the main process of a resume read last.pt, check the config and repair."""
    if dist.main:
        recover(out)
        check_out_dir(out, resume=resume, overwrite=overwrite)  # again, under the lock
    here = resume and holds_run(out)
    everywhere = all_ranks(here, dist, device)  # both collectives on all ranks
    nowhere = all_ranks(not here, dist, device)
    if not (everywhere or nowhere):
        raise UserError(
            f"only some processes see {out / 'last.pt'}; under torchrun the "
            "run directory must be on a filesystem that every node shares"
        )
    saved, changes = None, {}
    if dist.main and out.is_dir():
        check_run_files(out)
    if everywhere and dist.main:
        saved = read_checkpoint(out / "last.pt")
        changes = check_resume_config(cfg, saved["config"], allow_change)
        clean_temp_files(out)
        repair(out, saved)
    staged = overwrite and holds_run(out)
    return Claim(everywhere, saved, changes, staged, staging_dir(out) if staged else out)


def repair(out: Path, last: dict[str, Any]) -> None:
    """Bring best.pt, config.yaml and events.jsonl in step with last.pt (`last`) after an
    interruption between the writes of one epoch."""
    best = out / "best.pt"
    if last.get("best_epoch") == last["epoch"] and (
        not best.is_file() or read_checkpoint(best)["epoch"] != last["epoch"]
    ):
        io.atomic_write(best, lambda tmp: shutil.copyfile(out / "last.pt", tmp))
    for name, text in (
        ("config.yaml", last.get("config_yaml")),
        ("events.jsonl", jsonl(last["events"]) if "events" in last else None),
    ):
        path = out / name
        now = path.read_text() if path.is_file() else None
        if text is not None and now != text and (now is not None or text):
            io.write_text(path, text)


def check_resume_config(
    cfg: TrainConfig, saved: dict[str, Any], allow_change: Collection[str]
) -> dict[str, tuple[Any, Any]]:
    """The changes from the saved config (`saved`, as JSON) to `cfg`; raises for one a resume
    can never make (FIXED_ON_RESUME) or one not in `allow_change`."""
    changes = config_changes(saved, config_dict(cfg))
    fixed = sorted(k for k in changes if k in FIXED_ON_RESUME)
    if fixed:
        k = fixed[0]
        raise UserError(
            f"--resume cannot change {k} ({changes[k][0]} -> {changes[k][1]}): "
            f"{FIXED_ON_RESUME[k]}; resume with the run's {k}, or start a new run "
            "(--overwrite, or another --out-dir)"
        )
    refused = sorted(k for k in changes if k not in allow_change)
    if refused:
        shown = ", ".join(f"{k} ({changes[k][0]} -> {changes[k][1]})" for k in refused)
        raise UserError(
            f"--resume with settings that differ from the run's: {shown}; resume "
            f"with the same settings, or accept the change explicitly with "
            f"--allow-change {','.join(refused)}"
        )
    return changes


def restore(
    parts: Parts,
    out: Path,
    saved: dict[str, Any] | None,
    changes: dict[str, tuple[Any, Any]],
    dist: Dist,
) -> Progress:
    """Load last.pt (`saved`, or read now) into `parts`; the run's progress. The main process
    drops log lines of epochs last.pt lacks and records a resume with `changes` as an event."""
    last = out / "last.pt"
    state = saved if saved is not None else read_checkpoint(last)
    try:
        load_state(parts, state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(
            f"{last} does not fit the settings of this resume ({type(e).__name__}: "
            f"{first}); resume with the run's settings"
        ) from None
    progress = Progress(state["epoch"] + 1, state["best_val_robust"], state.get("best_epoch"))
    if "events" in state:
        progress.events = list(state["events"])
    elif dist.main:  # a run saved before last.pt kept its events
        progress.events = read_log(out / "events.jsonl")
    log, start = out / "log.jsonl", progress.start_epoch
    if dist.main:  # drop lines of an epoch the checkpoint lacks (and a torn last line)
        write_log(log, [r for r in read_log(log) if r.get("epoch", 0) <= start])
        if changes:  # written with the resumed run's first checkpoint
            change = {k: {"from": a, "to": b} for k, (a, b) in changes.items()}
            progress.events.append(
                {
                    "event": "resume",
                    "from_epoch": start,
                    "changed": change,
                    "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                },
            )
            tqdm.write(
                f"resuming at epoch {start + 1} with changed settings: "
                + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items())
            )
    return progress


def where_run_stands(out: Path, staged: bool, fresh: str, overwriting: str, resumable: str) -> str:
    """Where the run in `out` stands after a failure, with the advice for each case: no run
    yet (`fresh`), an overwrite not yet swapped in (`overwriting`), a run to resume."""
    last = out / "last.pt"
    if holds_run(out) and not staged:
        return (
            f"the last good checkpoint is {last} (epoch "
            f"{read_checkpoint(last)['epoch'] + 1}); {resumable}"
        )
    if staged:
        return f"nothing was saved and {out} still holds the old run; {overwriting}"
    return f"no good checkpoint exists yet (so {out} holds no run); {fresh}"

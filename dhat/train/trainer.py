"""The `Trainer`: one `TrainConfig` run into its directory, epoch by epoch.

It wires the parts: the run directory's claim and a resume (`resume`), what the run trains
with (`assembly`), a training epoch (`loop`), validation (`validation`) and the checkpoint
state (`state`). A checkpoint is written only if it is good: finite weights and buffers and
finite validation logits. The run directory is locked and overwritten safely (`dhat.rundir`).

Each good epoch is committed in this order: its log line, `last.pt` (which records the best
epoch so far, `best_epoch`), `best.pt` if the epoch is the new best, and, in a resumed run,
config.yaml and events.jsonl (so a resume that stops before saving leaves them as they were).
`last.pt` also holds the text of config.yaml and the events: a `--resume` after an
interruption between these writes restores best.pt (from last.pt, which is then the best),
config.yaml and events.jsonl from it, and removes temporary files a kill left. Checkpoint
states count epochs from 0 (`epoch`, `best_epoch`); log.jsonl and messages from 1.

Rank 0's experiment trackers (`--loggers`, `dhat.train.loggers`) get each epoch's record
after it is committed and, every `log_every` steps, the means since the last point (read in
the same single read as the finiteness check; nothing more is read per step).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import io  # used as io.write_text: a test that replaces it (a kill mid-write) is seen
from ..checkpoint import CheckpointWriteError, save_checkpoint
from ..config import TrainConfig
from ..data import BatchLoader
from ..distributed import all_ranks, barrier, cleanup_distributed, setup_distributed
from ..errors import UserError
from ..models import unwrap
from ..rundir import (
    RUN_FILES,
    RunLock,
    append_jsonl,
    check_out_dir,
    holds_run,
    jsonl,
    make_staging,
    register,
    swap_in,
)
from .assembly import Parts, build
from .loggers import TENSORBOARD_DIR, Loggers
from .loop import BOOKKEEPING, EpochLoop, TrainingDiverged, diverged, not_good, summary
from .resume import FIXED_ON_RESUME, claim, restore, where_run_stands
from .state import (
    FREE_ON_RESUME,
    Progress,
    checkpoint_state,
    config_changes,
    config_dict,
    config_text,
)
from .validation import Validator

__all__ = [
    "FIXED_ON_RESUME",
    "FREE_ON_RESUME",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "config_changes",
    "config_text",
    "train",
]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; `resumable` says whether the run directory holds a run that
    --resume can continue (not before the first checkpoint, nor during a staged overwrite)."""

    def __init__(self, resumable: bool):
        super().__init__()
        self.resumable = resumable


class Trainer:
    """Runs one `TrainConfig` into `cfg.out_dir`: config.yaml, log.jsonl, last.pt, best.pt."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        allow_change: Sequence[str] | None = None,
    ):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.dist, self.device = setup_distributed(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.lock: RunLock | None = None
        self.trackers: Loggers | None = None  # rank 0's experiment trackers (--loggers)
        if self.dist.main:
            check_out_dir(self.out, resume=resume, overwrite=overwrite)
            self.lock = RunLock(self.out).acquire()
        try:
            c = claim(
                self.out,
                cfg,
                self.dist,
                self.device,
                resume=resume,
                overwrite=overwrite,
                allow_change=set(allow_change or ()),
            )
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise
        self.resume, self.changes = c.resume, c.changes
        self.staged, self.run_dir = c.staged, c.run_dir  # until an overwrite is swapped in
        self._saved = c.saved  # last.pt on the main process of a resume, until restored
        self.parts: Parts | None = None  # built by `fit`
        self.progress = Progress()

    @property
    def model(self) -> nn.Module:
        """The trained model (not compiled, not DDP-wrapped)."""
        assert self.parts is not None, "fit() builds the model"
        return self.parts.model

    @property
    def loader(self) -> BatchLoader:
        """This rank's training batches."""
        assert self.parts is not None, "fit() builds the loader"
        return self.parts.loader

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out split: images (N, 3, H, W), labels (N,)."""
        assert self.parts is not None, "fit() builds the split"
        return self.parts.val

    def fit(self) -> Path:
        """Train the remaining epochs; returns the run directory."""
        try:
            return self._fit()
        except KeyboardInterrupt:
            raise TrainingInterrupted(holds_run(self.out) and not self.staged) from None
        finally:
            if self.trackers is not None:
                self.trackers.close()
            if self.lock is not None:
                self.lock.release()

    def _fit(self) -> Path:
        cfg, d = self.cfg, self.dist
        self.parts = p = build(cfg, d, self.device)
        if d.main and not self.resume:  # a resumed run's files change with its first save
            if self.staged:
                make_staging(self.out)
            else:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            register(self.run_dir, RUN_FILES)
            io.write_text(self.run_dir / "config.yaml", config_text(cfg))
            (self.run_dir / "log.jsonl").unlink(missing_ok=True)
        if self.resume:
            saved, self._saved = self._saved, None
            self.progress = restore(p, self.out, saved, self.changes, d)
        if d.main:
            self._open_trackers()
        barrier(d)
        loop = EpochLoop(cfg, p, d, self.device, self.trackers, self._diverged)
        validate = Validator(cfg, p, d, self.device)
        progress, saved_here = self.progress, False
        select = f"val_{cfg.select_metric}_acc" + ("_ema" if cfg.select == "ema" else "")
        for epoch in range(progress.start_epoch, cfg.epochs):
            record = loop.run(epoch)
            metrics = [k for k in record if k not in BOOKKEEPING]  # the training means
            v = validate(p.model, p.ema)
            record.update(v.scores)
            record.update(
                p.method.end_epoch(unwrap(p.model), epoch, {"val_class_acc": v.class_acc})
            )
            improved = record[select] > progress.best
            progress.best = max(progress.best, record[select])
            if improved:
                progress.best_epoch = epoch
            record["best"] = improved
            state = checkpoint_state(cfg, p, epoch, progress) if d.main else None
            problem = not_good(state, v.finite) if state is not None else None
            if not all_ranks(problem is None, d, self.device):
                raise self._diverged(f"after epoch {epoch + 1}: {problem or 'another rank'}")
            if d.main:
                assert state is not None  # made above on the main process
                try:
                    self._commit(record, state, improved, first=not saved_here)
                except (CheckpointWriteError, OSError) as e:
                    raise self._write_failed(epoch, e) from None
                saved_here = True
                if self.trackers:
                    self.trackers.epoch(record, (epoch + 1) * len(p.loader))
                if cfg.progress:
                    tqdm.write(summary(record, [*metrics, "val_clean_acc", "val_robust_acc"]))
            barrier(d)
        return self.out

    def _open_trackers(self) -> None:
        """Rank 0's trackers beside log.jsonl; TensorBoard's folder joins the run's files."""
        if "tensorboard" in self.cfg.loggers:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            register(self.run_dir, [TENSORBOARD_DIR])
        name = self.out.resolve().name
        self.trackers = Loggers(self.cfg.loggers, self.run_dir, name, config_dict(self.cfg))

    def _commit(self, record: dict[str, Any], state: dict[str, Any], improved: bool, first: bool):
        """Write one good epoch, in the order of the module docstring."""
        append_jsonl(self.run_dir / "log.jsonl", record)
        if first and self.resume:  # a run saved before manifests: name its files now
            register(self.run_dir, RUN_FILES)
        save_checkpoint(self.run_dir / "last.pt", state)
        if improved:
            save_checkpoint(self.run_dir / "best.pt", state)
        if first and self.resume:
            io.write_text(self.run_dir / "config.yaml", state["config_yaml"])
            if self.progress.events or (self.run_dir / "events.jsonl").exists():
                io.write_text(self.run_dir / "events.jsonl", jsonl(self.progress.events))
        if self.staged:  # the first good checkpoint of an overwrite: swap it in
            if self.trackers:
                self.trackers.move(self.out)  # TensorBoard reopens its files there
            swap_in(self.out, self.run_dir)
            self.staged, self.run_dir = False, self.out

    def _diverged(self, what: str) -> TrainingDiverged:
        return diverged(what, self.out, self.staged, self.cfg.lr)

    def _write_failed(self, epoch: int, e: CheckpointWriteError | OSError) -> UserError:
        if isinstance(e, OSError):
            why = f"cannot write {e.filename}: {e.strerror or e}" if e.filename else str(e)
        else:
            why = str(e)
        where = where_run_stands(
            self.out,
            self.staged,
            "free space and rerun",
            "free space and --overwrite again",
            "free space, then --resume",
        )
        return UserError(f"saving epoch {epoch + 1} failed: {why}; {where}")


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_change: Sequence[str] | None = None,
) -> Path:
    """Train per `cfg`; returns the run directory. `allow_change`: settings (TrainConfig
    fields or method option names) that a `resume` may change, e.g. ["lr"] after divergence."""
    trainer = None
    try:
        trainer = Trainer(cfg, resume=resume, overwrite=overwrite, allow_change=allow_change)
        return trainer.fit()
    finally:
        if trainer is not None:
            cleanup_distributed(trainer.dist)

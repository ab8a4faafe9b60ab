"""One training epoch. It knows no method: it asks `method(net, batch)` for (loss, metrics).

Per step nothing is read back from the device: metrics are summed as tensors, with the first
step at which each went non-finite, and read once per `log_every` steps and at the end of
the epoch (a log point). A log point stops the run on a non-finite term, shows the running
loss and sends the means since the last point to rank 0's experiment trackers, all in one
read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..distributed import Dist, all_ranks, rank_seed, reduce_sums
from ..errors import UserError
from ..models import unwrap
from ..modes import model_mode
from .assembly import Parts
from .loggers import Loggers
from .resume import where_run_stands
from .schedule import onecycle_lr, piecewise_lr

# The fields of an epoch's record that are not training metrics.
BOOKKEEPING = ("epoch", "lr", "images", "seconds", "images_per_s")


class TrainingDiverged(UserError):
    """A loss or a checkpoint became non-finite; nothing non-finite was saved."""


def epoch_lr(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based `epoch` under the run's schedule."""
    if cfg.lr_schedule == "onecycle":
        return onecycle_lr(cfg.lr, epoch, cfg.epochs, cfg.lr_warmup)
    return piecewise_lr(cfg.lr, epoch, cfg.milestones, cfg.lr_gamma)


def autocast(cfg: TrainConfig, device: torch.device):
    """The step's mixed-precision context (--amp)."""
    if cfg.amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class EpochLoop:
    """Runs training epochs of `parts` (one `run` per epoch); `diverged(what)` makes the error
    a non-finite term raises."""

    def __init__(
        self,
        cfg: TrainConfig,
        parts: Parts,
        dist: Dist,
        device: torch.device,
        trackers: Loggers | None,
        diverged: Callable[[str], Exception],
    ):
        self.cfg, self.parts, self.dist, self.device = cfg, parts, dist, device
        self.trackers, self.diverged = trackers, diverged
        self._last_point: tuple[int, list[float]] = (0, [])  # (n_seen, sums) at the last point

    def run(self, epoch: int) -> dict[str, Any]:
        """Train 0-based `epoch`; its record: epoch (1-based), lr, the mean of each training
        metric (loss first, then the method's in its order), images, seconds, images_per_s."""
        cfg, d, p = self.cfg, self.dist, self.parts
        lr = epoch_lr(cfg, epoch)
        for g in p.optimizer.param_groups:
            g["lr"] = lr
        p.net.train()
        if d.enabled:  # distinct attack noise per rank; an epoch-boundary resume stays exact
            torch.manual_seed(rank_seed(cfg.seed, epoch, d.rank))
        p.method.start_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        bad: dict[str, torch.Tensor] = {}
        n_seen, t0 = 0, time.perf_counter()
        self._last_point = (0, [])
        steps = len(p.loader)
        bar = tqdm(
            p.batches,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not (cfg.progress and d.main),
        )
        for step, batch in enumerate(bar):
            if cfg.channels_last:
                batch.x = batch.x.contiguous(memory_format=torch.channels_last)
            with autocast(cfg, self.device):
                loss, metrics = p.method(p.net, batch)
            p.optimizer.zero_grad(set_to_none=True)
            p.scaler.scale(loss).backward()
            p.scaler.step(p.optimizer)
            p.scaler.update()
            p.method.after_step(unwrap(p.model))
            if p.ema is not None:
                p.ema.update(unwrap(p.model), epoch * steps + step + 1)
            b = len(batch.y)
            values = {"loss": loss.detach(), **metrics}
            if cfg.log_clean_acc:
                with torch.no_grad(), model_mode(p.model, "eval"):
                    values["clean_acc"] = (p.model(batch.x).argmax(1) == batch.y).float().mean()
            for k, v in values.items():
                v = torch.as_tensor(v, device=self.device).detach().float()
                sums[k] = sums[k] + v * b if k in sums else v * b
                first = (
                    bad[k] if k in bad else torch.full((), -1, dtype=torch.long, device=self.device)
                )
                bad[k] = torch.where((first < 0) & ~torch.isfinite(v), step, first)
            n_seen += b
            if cfg.log_every and (step + 1) % cfg.log_every == 0:
                self._log_point(epoch, step, sums, bad, n_seen, bar)
        self._log_point(epoch, steps - 1, sums, bad, n_seen, None)
        self._last_point = (0, [])
        read = torch.stack(list(sums.values())).tolist() if sums else []  # one read per epoch
        totals = reduce_sums(dict(zip(sums, read)) | {"_n": float(n_seen)}, d, self.device)
        secs = time.perf_counter() - t0
        n = totals.pop("_n")
        return {
            "epoch": epoch + 1,
            "lr": lr,
            **{k: v / n for k, v in totals.items()},
            "images": int(n),
            "seconds": round(secs, 3),
            "images_per_s": round(n / secs, 2),
        }

    def _log_point(self, epoch, step, sums, bad, n_seen, bar) -> None:
        """The once-per-interval read: stop on a non-finite term (naming the first to go, and
        its step), show the running loss, send the interval's means to the trackers."""
        per_step = bool(self.trackers) and bool(self.cfg.log_every) and bool(bad)
        if per_step:  # the step indices (exact in float64) and the sums in one read
            stacked = [torch.stack(list(d.values())).double() for d in (bad, sums)]
            read = torch.cat(stacked).tolist()
            steps, totals = [int(s) for s in read[: len(bad)]], read[len(bad) :]
        else:
            steps = torch.stack(list(bad.values())).tolist() if bad else []  # one read
        first = {k: s for k, s in zip(bad, steps) if s >= 0}
        term = min(first, key=lambda k: (first[k], k == "loss")) if first else None
        if not all_ranks(term is None, self.dist, self.device):
            at = f"at step {first[term] + 1}" if term else f"by step {step + 1}"
            raise self.diverged(f"in epoch {epoch + 1} {at}: term '{term or 'loss'}' is not finite")
        if per_step:
            self._log_step(epoch, step, list(sums), totals, n_seen)
            if bar is not None and n_seen:
                bar.set_postfix(loss=f"{totals[list(sums).index('loss')] / n_seen:.3f}")
        elif bar is not None and n_seen:
            bar.set_postfix(loss=f"{sums['loss'].item() / n_seen:.3f}")

    def _log_step(self, epoch: int, step: int, keys: list[str], totals: list[float], n: int):
        """The means of the training metrics over the steps since the last point (rank 0's)."""
        assert self.trackers is not None  # called only with trackers
        n0, before = self._last_point
        if n > n0:
            before = before or [0.0] * len(totals)
            means = {k: (t - b) / (n - n0) for k, t, b in zip(keys, totals, before)}
            self.trackers.step(means, epoch * len(self.parts.loader) + step + 1)
        self._last_point = (n, totals)


def diverged(what: str, out: Path, staged: bool, lr: float) -> TrainingDiverged:
    """The error for a run that diverged `what` (e.g. 'after epoch 3: ...'), with advice."""
    where = where_run_stands(
        out,
        staged,
        "rerun with a lower --lr",
        "lower --lr and --overwrite again",
        f"continue from it with a lower lr: --resume --allow-change lr --lr {lr / 10:g}",
    )
    return TrainingDiverged(f"training diverged {what}; {where}. Check the method options too")


def not_good(state: dict[str, Any], finite_logits: bool) -> str | None:
    """Why a checkpoint is not good (non-finite weights, buffers or validation logits), or None."""
    floats = {k: t for k, t in state["model"].items() if t.is_floating_point()}
    ok = torch.stack([torch.isfinite(t).all() for t in floats.values()]).tolist() if floats else []
    for name, good in zip(floats, ok):  # one read for the whole state
        if not good:
            return f"the model's '{name}' is not finite"
    if not finite_logits:
        return "the validation logits are not finite"
    return None


def summary(record: dict[str, Any], keys: Sequence[str]) -> str:
    """The epoch's line: `keys` of `record` (those it has), in their order, and images/s."""
    shown = " ".join(f"{k}={record[k]:.4f}" for k in keys if k in record)
    return f"epoch {record['epoch']}: {shown} ({record['images_per_s']:.0f} img/s)"

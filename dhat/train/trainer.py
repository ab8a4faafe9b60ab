"""The training loop. It knows no method: it asks `method(model, batch)` for (loss, metrics).

Per step nothing is read back from the device: metrics are summed as tensors and read once
per `log_every` steps and at the end of the epoch (where a non-finite loss is detected and
the run stops). A checkpoint is written only if it is good: finite weights and buffers and
finite validation logits. The run directory is locked and overwritten safely (`rundir`).

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

import json
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..attacks.spec import make_attack
from ..checkpoint import CheckpointWriteError, load_model, read_checkpoint, save_checkpoint
from ..config import TrainConfig
from ..data import BatchLoader, load_dataset, validation_split
from ..distributed import (
    all_ranks,
    all_reduce_sum,
    barrier,
    broadcast_module,
    cleanup_distributed,
    rank_seed,
    reduce_sums,
    setup_distributed,
    shard,
    split_batch,
)
from ..errors import UserError
from ..eval.robust import correct_under
from ..methods import RunInfo, create_method, method_options
from ..methods.base import RUN_WIDE
from ..models import create_model, unwrap
from ..modes import model_mode
from ..rundir import (
    RUN_FILES,
    RunLock,
    append_jsonl,
    check_out_dir,
    check_run_files,
    clean_temp_files,
    holds_run,
    jsonl,
    make_staging,
    read_log,
    recover,
    register,
    staging_dir,
    swap_in,
    write_log,
)
from .ema import EMA
from .loggers import TENSORBOARD_DIR, Loggers
from .schedule import onecycle_lr, piecewise_lr

# Config fields a resume may always change: they do not alter the training trajectory.
FREE_ON_RESUME = ("epochs", "progress", "device", "threads", "out_dir", "log_every", "loggers")
# Config fields a resume can never change, even with --allow-change: last.pt's state is made
# for them.
FIXED_ON_RESUME = {
    "model": "last.pt holds weights of the run's architecture",
    "model_args": "last.pt holds weights of the run's architecture",
    "ema_decay": "last.pt's averaged weights (or their absence) belong to the run's EMA",
    "aux_data": "the run's batches and generator state are made for its generated data",
}


class TrainingDiverged(UserError):
    """A loss or a checkpoint became non-finite; nothing non-finite was saved."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; `resumable` says whether the run directory holds a run that
    --resume can continue (not before the first checkpoint, nor during a staged overwrite)."""

    def __init__(self, resumable: bool):
        super().__init__()
        self.resumable = resumable


def method_args(cfg: TrainConfig) -> dict[str, Any]:
    """The method's options: the run's threat model (eps, step_size, steps) where the method
    has them, and `cfg.method_args`."""
    valid = method_options(cfg.method)
    return {**{k: getattr(cfg, k) for k in RUN_WIDE if k in valid}, **cfg.method_args}


def frozen_models(cfg: TrainConfig, device: torch.device) -> dict[str, torch.nn.Module]:
    """Load every method option that names a checkpoint (DHAT's cam_model) as a frozen,
    eval-mode module with no parameter gradients."""
    out = {}
    for name, spec in method_options(cfg.method).items():
        value = cfg.method_args.get(name, spec.default)
        if spec.kind == "checkpoint" and value != "self":
            net = load_model(value, device=device)
            out[name] = net.requires_grad_(False).eval()
    return out


def autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{name: (saved, current)} over TrainConfig fields and method options (by option name);
    fields a resume may always change are left out."""
    defaults = {f: getattr(TrainConfig, f, None) for f in current}
    out: dict[str, tuple[Any, Any]] = {}
    for k, v in current.items():
        old = saved.get(k, defaults.get(k))
        if k in FREE_ON_RESUME or old == v:
            continue
        if k == "method_args" and isinstance(old, dict):
            for opt in sorted(set(old) | set(v)):
                if old.get(opt) != v.get(opt):
                    out[opt] = (old.get(opt), v.get(opt))
        else:
            out[k] = (old, v)
    return out


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
        self.cfg = cfg.validate()
        self.out = Path(cfg.out_dir)
        self.allow_change = set(allow_change or ())
        self.dist, self.device = setup_distributed(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.lock: RunLock | None = None
        self.trackers: Loggers | None = None  # rank 0's experiment trackers (--loggers)
        self.changes: dict[str, tuple[Any, Any]] = {}
        if self.dist.main:
            check_out_dir(self.out, resume=resume, overwrite=overwrite)
            self.lock = RunLock(self.out).acquire()
        try:
            self._claim(resume, overwrite)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _claim(self, resume: bool, overwrite: bool) -> None:
        if self.dist.main:
            recover(self.out)
            check_out_dir(self.out, resume=resume, overwrite=overwrite)  # again, under the lock
        here = resume and holds_run(self.out)
        everywhere = all_ranks(here, self.dist, self.device)  # both collectives on all ranks
        nowhere = all_ranks(not here, self.dist, self.device)
        if not (everywhere or nowhere):
            raise UserError(
                f"only some processes see {self.out / 'last.pt'}; under torchrun the "
                "run directory must be on a filesystem that every node shares"
            )
        self.resume = everywhere
        self._saved: dict[str, Any] | None = None  # last.pt on the main process of a resume
        if self.dist.main and self.out.is_dir():
            check_run_files(self.out)
        if self.resume and self.dist.main:
            self._saved = read_checkpoint(self.out / "last.pt")
            self.changes = self._check_resume_config(self._saved["config"])
            clean_temp_files(self.out)
            self._repair(self._saved)
        self.staged = overwrite and holds_run(self.out)
        self.run_dir = staging_dir(self.out) if self.staged else self.out

    def _repair(self, last: dict[str, Any]) -> None:
        """Bring best.pt, config.yaml and events.jsonl in step with last.pt after an
        interruption between the writes of one epoch (see the module docstring)."""
        import shutil

        from ..io import atomic_write, write_text

        best = self.out / "best.pt"
        if last.get("best_epoch") == last["epoch"] and (
            not best.is_file() or read_checkpoint(best)["epoch"] != last["epoch"]
        ):
            atomic_write(best, lambda tmp: shutil.copyfile(self.out / "last.pt", tmp))
        for name, text in (
            ("config.yaml", last.get("config_yaml")),
            ("events.jsonl", jsonl(last["events"]) if "events" in last else None),
        ):
            path = self.out / name
            now = path.read_text() if path.is_file() else None
            if text is not None and now != text and (now is not None or text):
                write_text(path, text)

    def _check_resume_config(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        current = json.loads(json.dumps(asdict(self.cfg), default=str))
        changes = config_changes(saved, current)
        fixed = sorted(k for k in changes if k in FIXED_ON_RESUME)
        if fixed:
            k = fixed[0]
            raise UserError(
                f"--resume cannot change {k} ({changes[k][0]} -> {changes[k][1]}): "
                f"{FIXED_ON_RESUME[k]}; resume with the run's {k}, or start a new run "
                "(--overwrite, or another --out-dir)"
            )
        refused = sorted(k for k in changes if k not in self.allow_change)
        if refused:
            shown = ", ".join(f"{k} ({changes[k][0]} -> {changes[k][1]})" for k in refused)
            raise UserError(
                f"--resume with settings that differ from the run's: {shown}; resume "
                f"with the same settings, or accept the change explicitly with "
                f"--allow-change {','.join(refused)}"
            )
        return changes

    # --- setup -----------------------------------------------------------------------
    def _build(self):
        cfg, d = self.cfg, self.dist
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        data = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download, **cfg.dataset_args)
        if cfg.train_subset:
            data.subset_train(cfg.train_subset, cfg.seed)
        if cfg.val_size >= len(data.train_y):
            raise UserError(
                f"--val-size {cfg.val_size} leaves nothing to train on: "
                f"{cfg.dataset} has {len(data.train_y)} training images here"
            )
        train_idx, val_idx = validation_split(data.train_y, cfg.val_size, cfg.seed)
        self.data = data
        view = getattr(data, "train_view", None)  # stored images -> model inputs (imagefolder)
        val_x = data.train_x[val_idx]
        self.val = (view(val_x) if view else val_x, data.train_y[val_idx])
        gen = torch.Generator().manual_seed(cfg.seed)
        split = split_batch(cfg.batch_size, cfg.aux_fraction if cfg.aux_data else 0.0, d.world_size)
        if split.note and d.main:
            print(f"torchrun: {split.note}", flush=True)
        k_aux = split.aux
        self.loader = BatchLoader(
            data.train_x[train_idx],
            data.train_y[train_idx],
            split.batch - k_aux,
            shuffle=True,
            augment=cfg.augment,
            drop_last=False,
            generator=gen,
            device=self.device,
            rank=d.rank,
            world_size=d.world_size,
            augment_fn=getattr(data, "train_augment", None),
            view_fn=view,
        )
        self.batches: Any = self.loader
        self.aux_generator = None
        if k_aux:
            from ..data.aux import AuxMixer, open_aux

            assert cfg.aux_data is not None  # k_aux > 0 only with aux_data
            images, labels = open_aux(cfg.aux_data)
            self.aux_generator = torch.Generator().manual_seed(cfg.seed + 1)
            self.batches = AuxMixer(
                self.loader,
                images,
                labels,
                k_aux,
                num_classes=data.num_classes,
                size=(data.train_x.shape[-2], data.train_x.shape[-1]),
                generator=self.aux_generator,
                augment=cfg.augment,
            )
        self.model_spec = dict(
            name=cfg.model,
            num_classes=data.num_classes,
            mean=list(data.mean),
            std=list(data.std),
            kwargs=dict(cfg.model_args),
        )
        model = create_model(
            cfg.model, num_classes=data.num_classes, mean=data.mean, std=data.std, **cfg.model_args
        ).to(self.device)
        if cfg.channels_last:
            model = model.to(  # type: ignore[call-overload]  # torch's stub omits memory_format
                memory_format=torch.channels_last
            )
        self.model = model
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.method = create_method(cfg.method, **method_args(cfg))
        self.method.setup(
            RunInfo(
                num_classes=data.num_classes,
                num_train=len(data.train_y),
                epochs=cfg.epochs,
                device=self.device,
                label_smoothing=cfg.label_smoothing,
                frozen_models=frozen_models(cfg, self.device),
            )
        )
        self.ema = EMA(model, cfg.ema_decay, cfg.ema_every) if cfg.ema_decay else None
        self._ema_net: torch.nn.Module | None = None
        self.net: torch.nn.Module = model  # what the step calls (compiled, DDP-wrapped)
        if cfg.compile:
            self.net = torch.compile(  # type: ignore[assignment]  # stub: Callable; it is a Module
                self.net
            )
        if d.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.start_epoch, self.best = 0, -1.0
        self.best_epoch: int | None = None
        self.events: list[dict[str, Any]] = []

    def _restore(self) -> None:
        last = self.out / "last.pt"
        state = self._saved if self._saved is not None else read_checkpoint(last)
        self._saved = None
        try:
            self._load_state(state)
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise UserError(
                f"{last} does not fit the settings of this resume ({type(e).__name__}: "
                f"{first}); resume with the run's settings"
            ) from None
        self.start_epoch, self.best = state["epoch"] + 1, state["best_val_robust"]
        self.best_epoch = state.get("best_epoch")
        if "events" in state:
            self.events = list(state["events"])
        elif self.dist.main:  # a run saved before last.pt kept its events
            self.events = read_log(self.out / "events.jsonl")
        log = self.out / "log.jsonl"
        if self.dist.main:  # drop lines of an epoch the checkpoint lacks (and a torn last line)
            write_log(log, [r for r in read_log(log) if r.get("epoch", 0) <= self.start_epoch])
            if self.changes:  # written with the resumed run's first checkpoint
                change = {k: {"from": a, "to": b} for k, (a, b) in self.changes.items()}
                self.events.append(
                    {
                        "event": "resume",
                        "from_epoch": self.start_epoch,
                        "changed": change,
                        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    },
                )
                tqdm.write(
                    f"resuming at epoch {self.start_epoch + 1} with changed settings: "
                    + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.changes.items())
                )

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state.get("method_state", {}))
        self.scaler.load_state_dict(state.get("scaler", {}) or self.scaler.state_dict())
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and rng.get("cuda") is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(_to_random_state(rng["python"]))
        self.loader.generator.set_state(rng["data"])
        if self.aux_generator is not None:
            self.aux_generator.set_state(rng["aux"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
            "model_spec": self.model_spec,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.cfg.method,
            "method_options": _plain(self.method.options()),
            "method_state": self.method.state_dict(),
            "extra_models": {
                **self.method.extra_models(),
                **({"ema": self.ema.state_dict()} if self.ema else {}),
            },
            "ema": self.ema.state_dict() if self.ema else None,
            "epoch": epoch,  # 0-based, as best_epoch; the log counts from 1
            "best_val_robust": self.best,
            "best_epoch": self.best_epoch,
            "config": json.loads(json.dumps(asdict(self.cfg), default=str)),
            "config_yaml": config_text(self.cfg),
            "events": self.events,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python": _from_random_state(random.getstate()),
                "data": self.loader.generator.get_state(),
                "aux": self.aux_generator.get_state() if self.aux_generator else None,
            },
        }

    # --- loop ------------------------------------------------------------------------
    def fit(self) -> Path:
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
        self._build()
        if d.main and not self.resume:  # a resumed run's files change with its first save
            from ..io import write_text

            if self.staged:
                make_staging(self.out)
            else:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            register(self.run_dir, RUN_FILES)
            write_text(self.run_dir / "config.yaml", config_text(cfg))
            (self.run_dir / "log.jsonl").unlink(missing_ok=True)
        if self.resume:
            self._restore()
        if d.main:
            self._open_trackers()
        barrier(d)
        saved_here = False
        for epoch in range(self.start_epoch, cfg.epochs):
            record = self._train_epoch(epoch)
            broadcast_module(self.model, d)  # rank 0's BN statistics: every rank validates it
            record.update(self._validate(unwrap(self.model)))
            finite_logits = record.pop("_val_logits_finite")
            if self.ema is not None:
                ema_rec = self._validate(self._ema_model())
                finite_logits = finite_logits and ema_rec["_val_logits_finite"]
                record.update({f"{k}_ema": v for k, v in ema_rec.items() if not k.startswith("_")})
            record.update(
                self.method.end_epoch(
                    unwrap(self.model), epoch, {"val_class_acc": record.pop("_val_class_acc")}
                )
            )
            key = f"val_{self.cfg.select_metric}_acc" + ("_ema" if self.cfg.select == "ema" else "")
            improved = record[key] > self.best
            self.best = max(self.best, record[key])
            if improved:
                self.best_epoch = epoch
            record["best"] = improved
            state = self._state(epoch) if d.main else None
            problem = _not_good(state, finite_logits) if state is not None else None
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
                    self.trackers.epoch(record, (epoch + 1) * len(self.loader))
                if cfg.progress:
                    tqdm.write(_summary(record))
            barrier(d)
        return self.out

    def _open_trackers(self) -> None:
        """Rank 0's trackers beside log.jsonl; TensorBoard's folder joins the run's files."""
        if "tensorboard" in self.cfg.loggers:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            register(self.run_dir, [TENSORBOARD_DIR])
        config = json.loads(json.dumps(asdict(self.cfg), default=str))
        self.trackers = Loggers(self.cfg.loggers, self.run_dir, self.out.resolve().name, config)

    def _commit(self, record: dict[str, Any], state: dict[str, Any], improved: bool, first: bool):
        """Write one good epoch, in the order of the module docstring."""
        from ..io import write_text

        append_jsonl(self.run_dir / "log.jsonl", record)
        if first and self.resume:  # a run saved before manifests: name its files now
            register(self.run_dir, RUN_FILES)
        save_checkpoint(self.run_dir / "last.pt", state)
        if improved:
            save_checkpoint(self.run_dir / "best.pt", state)
        if first and self.resume:
            write_text(self.run_dir / "config.yaml", state["config_yaml"])
            if self.events or (self.run_dir / "events.jsonl").exists():
                write_text(self.run_dir / "events.jsonl", jsonl(self.events))
        if self.staged:  # the first good checkpoint of an overwrite: swap it in
            if self.trackers:
                self.trackers.move(self.out)  # TensorBoard reopens its files there
            swap_in(self.out, self.run_dir)
            self.staged, self.run_dir = False, self.out

    def _where(self, fresh: str, staged: str, resumable: str) -> str:
        """Where the run stands after a failure, with the advice for each case."""
        last = self.out / "last.pt"
        if holds_run(self.out) and not self.staged:
            return (
                f"the last good checkpoint is {last} (epoch "
                f"{read_checkpoint(last)['epoch'] + 1}); {resumable}"
            )
        if self.staged:
            return f"nothing was saved and {self.out} still holds the old run; {staged}"
        return f"no good checkpoint exists yet (so {self.out} holds no run); {fresh}"

    def _diverged(self, what: str) -> TrainingDiverged:
        where = self._where(
            "rerun with a lower --lr",
            "lower --lr and --overwrite again",
            "continue from it with a lower lr: "
            f"--resume --allow-change lr --lr {self.cfg.lr / 10:g}",
        )
        return TrainingDiverged(f"training diverged {what}; {where}. Check the method options too")

    def _write_failed(self, epoch: int, e: CheckpointWriteError | OSError) -> UserError:
        if isinstance(e, OSError):
            why = f"cannot write {e.filename}: {e.strerror or e}" if e.filename else str(e)
        else:
            why = str(e)
        where = self._where(
            "free space and rerun", "free space and --overwrite again", "free space, then --resume"
        )
        return UserError(f"saving epoch {epoch + 1} failed: {why}; {where}")

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, d = self.cfg, self.dist
        lr = (
            onecycle_lr(cfg.lr, epoch, cfg.epochs, cfg.lr_warmup)
            if cfg.lr_schedule == "onecycle"
            else piecewise_lr(cfg.lr, epoch, cfg.milestones, cfg.lr_gamma)
        )
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.net.train()
        if d.enabled:  # distinct attack noise per rank; an epoch-boundary resume stays exact
            torch.manual_seed(rank_seed(cfg.seed, epoch, d.rank))
        self.method.start_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        bad: dict[str, torch.Tensor] = {}
        n_seen, t0 = 0, time.perf_counter()
        self._last_point: tuple[int, list[float]] = (0, [])  # (n_seen, sums) at the last point
        bar = tqdm(
            self.batches,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not (cfg.progress and d.main),
        )
        for step, batch in enumerate(bar):
            if cfg.channels_last:
                batch.x = batch.x.contiguous(memory_format=torch.channels_last)
            with autocast(cfg, self.device):
                loss, metrics = self.method(self.net, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.method.after_step(unwrap(self.model))
            if self.ema is not None:
                self.ema.update(unwrap(self.model), epoch * len(self.loader) + step + 1)
            b = len(batch.y)
            values = {"loss": loss.detach(), **metrics}
            if cfg.log_clean_acc:
                with torch.no_grad(), model_mode(self.model, "eval"):
                    values["clean_acc"] = (self.model(batch.x).argmax(1) == batch.y).float().mean()
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
        self._log_point(epoch, len(self.loader) - 1, sums, bad, n_seen, None)
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
            raise self._diverged(
                f"in epoch {epoch + 1} {at}: term '{term or 'loss'}' is not finite"
            )
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
            self.trackers.step(means, epoch * len(self.loader) + step + 1)
        self._last_point = (n, totals)

    def _ema_model(self) -> torch.nn.Module:
        """A copy of the model holding the averaged weights (made once, refreshed each call)."""
        assert self.ema is not None  # called only with --ema-decay
        if self._ema_net is None:
            import copy

            self._ema_net = copy.deepcopy(unwrap(self.model))
        self._ema_net.load_state_dict(self.ema.state_dict())
        broadcast_module(self._ema_net, self.dist)  # rank 0's copied BN statistics everywhere
        return self._ema_net

    def _validate(self, model: torch.nn.Module) -> dict[str, Any]:
        """Clean and PGD accuracy of `model` on the held-out split; under DDP each rank attacks
        a strided share and the per-class counts are summed, so every rank gets the same
        numbers."""
        cfg, d = self.cfg, self.dist
        x, y = self.val
        attack = make_attack(f"pgd{cfg.val_steps}", cfg.eps, cfg.step_size)
        part = shard(len(y), d)
        x, y = x[part], y[part]
        with torch.no_grad(), model_mode(model, "eval"):
            probe = x[:64].to(self.device)
            probe = probe.float().div(255) if probe.dtype == torch.uint8 else probe.float()
            finite = bool(torch.isfinite(model(probe)).all()) if len(probe) else True
        clean = correct_under(model, x, y, None, batch_size=256, device=self.device)
        robust = correct_under(model, x, y, attack, batch_size=256, device=self.device)
        k = self.data.num_classes
        y = y.cpu()
        counts = torch.stack(
            [
                torch.bincount(y, minlength=k),
                torch.bincount(y[clean], minlength=k),
                torch.bincount(y[robust], minlength=k),
            ]
        ).double()
        total, clean_hits, robust_hits = all_reduce_sum(counts, d, self.device)
        n = total.sum()
        return {
            "val_clean_acc": (clean_hits.sum() / n).item(),
            "val_robust_acc": (robust_hits.sum() / n).item(),
            "_val_class_acc": robust_hits / total,
            "_val_logits_finite": finite,
        }


def _not_good(state: dict[str, Any], finite_logits: bool) -> str | None:
    """Why a checkpoint is not good (non-finite weights, buffers or validation logits), or None."""
    floats = {k: t for k, t in state["model"].items() if t.is_floating_point()}
    ok = torch.stack([torch.isfinite(t).all() for t in floats.values()]).tolist() if floats else []
    for name, good in zip(floats, ok):  # one read for the whole state
        if not good:
            return f"the model's '{name}' is not finite"
    if not finite_logits:
        return "the validation logits are not finite"
    return None


def config_text(cfg: TrainConfig) -> str:
    """config.yaml's text."""
    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """Method options as JSON-able plain values (for the checkpoint and result cards)."""
    return {
        k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        for k, v in options.items()
    }


def _from_random_state(state):
    version, internal, gauss = state
    return {
        "version": version,
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss": gauss,
    }


def _to_random_state(d):
    return (d["version"], tuple(int(v) for v in d["internal"].tolist()), d["gauss"])


def _summary(r: dict[str, Any]) -> str:
    keys = [
        k
        for k in (
            "loss",
            "ce",
            "dhlr",
            "floe",
            "kl",
            "adv_acc",
            "clean_acc",
            "val_clean_acc",
            "val_robust_acc",
        )
        if k in r
    ]
    return (
        f"epoch {r['epoch']}: "
        + " ".join(f"{k}={r[k]:.4f}" for k in keys)
        + f" ({r['images_per_s']:.0f} img/s)"
    )


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

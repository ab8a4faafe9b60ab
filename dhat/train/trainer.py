"""The training loop. It knows no method: it asks `method(model, batch)` for (loss, metrics)."""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checkpoint import read_checkpoint, save_checkpoint
from ..config import TrainConfig, save_yaml
from ..data import BatchLoader, load_dataset, validation_split
from ..errors import UserError
from ..eval.robust import correct_under, make_attack
from ..methods import RunInfo, create_method, method_options
from ..models import create_model, unwrap
from ..modes import model_mode
from .distributed import (all_ranks, all_reduce_sum, barrier, broadcast_module,
                          cleanup_distributed, rank_seed, reduce_sums, setup_distributed, shard)
from .schedule import piecewise_lr


class TrainingDiverged(UserError):
    """A loss became non-finite; the last good checkpoint is kept."""


def method_args(cfg: TrainConfig) -> dict[str, Any]:
    """The method's options: the run-wide eps/step_size/steps where the method has them,
    overridden by `cfg.method_args`."""
    valid = method_options(cfg.method)
    args = {k: getattr(cfg, k) for k in ("eps", "step_size", "steps") if k in valid}
    return {**args, **cfg.method_args}


def autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class Trainer:
    """Runs one `TrainConfig` into `cfg.out_dir`: config.yaml, log.jsonl, last.pt, best.pt."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg.validate()
        self.out = Path(cfg.out_dir)
        self.dist, self.device = setup_distributed(cfg.device)
        self._check_out_dir(resume, overwrite)
        here = resume and (self.out / "last.pt").is_file()
        everywhere = all_ranks(here, self.dist, self.device)       # both collectives on all ranks
        nowhere = all_ranks(not here, self.dist, self.device)
        self.resume = everywhere
        if not (everywhere or nowhere):
            raise UserError(f"only some processes see {self.out / 'last.pt'}; under torchrun the "
                            "run directory must be on a filesystem that every node shares")

    def _check_out_dir(self, resume: bool, overwrite: bool) -> None:
        taken = self.out.is_dir() and any(self.out.iterdir())
        if taken and not (resume or overwrite):
            raise UserError(f"{self.out} already holds a run; pass --resume to continue it, "
                            "--overwrite to replace it, or choose another --out-dir")
        if resume and (self.out / "config.yaml").is_file() and (self.out / "last.pt").is_file():
            saved = read_checkpoint(self.out / "last.pt")["config"]
            if saved != json.loads(json.dumps(asdict(self.cfg), default=str)):
                differing = sorted(k for k in saved if saved.get(k) != asdict(self.cfg).get(k))
                if any(k not in ("epochs", "progress", "device") for k in differing):
                    raise UserError(f"--resume with a config that differs from the run's in "
                                    f"{', '.join(differing)}; resume with the same settings")

    # --- setup -----------------------------------------------------------------------
    def _build(self):
        cfg, d = self.cfg, self.dist
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        data = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download, **cfg.dataset_args)
        if cfg.train_subset:
            data.subset_train(cfg.train_subset, cfg.seed)
        train_idx, val_idx = validation_split(data.train_y, cfg.val_size, cfg.seed)
        self.data = data
        view = getattr(data, "train_view", None)   # stored images -> model inputs (imagefolder)
        val_x = data.train_x[val_idx]
        self.val = (view(val_x) if view else val_x, data.train_y[val_idx])
        gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.batch_size % d.world_size:
            raise UserError(f"--batch-size {cfg.batch_size} must divide by the "
                            f"{d.world_size} processes")
        self.loader = BatchLoader(data.train_x[train_idx], data.train_y[train_idx], cfg.batch_size,
                                  shuffle=True, augment=cfg.augment, drop_last=False,
                                  generator=gen, device=self.device, rank=d.rank,
                                  world_size=d.world_size,
                                  augment_fn=getattr(data, "train_augment", None),
                                  view_fn=view)
        self.model_spec = dict(name=cfg.model, num_classes=data.num_classes,
                               mean=list(data.mean), std=list(data.std), kwargs=dict(cfg.model_args))
        model = create_model(cfg.model, num_classes=data.num_classes, mean=data.mean, std=data.std,
                             **cfg.model_args).to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.method = create_method(cfg.method, **method_args(cfg))
        self.method.setup(RunInfo(num_classes=data.num_classes, num_train=len(data.train_y),
                                  epochs=cfg.epochs, device=self.device))
        self.net = model
        if cfg.compile:
            self.net = torch.compile(self.net)
        if d.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.start_epoch, self.best = 0, -1.0

    def _restore(self) -> None:
        state = read_checkpoint(self.out / "last.pt")
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
        self.start_epoch, self.best = state["epoch"] + 1, state["best_val_robust"]
        log = self.out / "log.jsonl"
        if self.dist.main and log.is_file():  # drop lines of an epoch the checkpoint lacks
            lines = [ln for ln in log.read_text().splitlines()
                     if ln.strip() and json.loads(ln)["epoch"] <= self.start_epoch]
            log.write_text("".join(ln + "\n" for ln in lines))

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
            "model_spec": self.model_spec,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.cfg.method,
            "method_state": self.method.state_dict(),
            "extra_models": self.method.extra_models(),
            "epoch": epoch,
            "best_val_robust": self.best,
            "config": json.loads(json.dumps(asdict(self.cfg), default=str)),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "python": _from_random_state(random.getstate()),
                    "data": self.loader.generator.get_state()},
        }

    # --- loop ------------------------------------------------------------------------
    def fit(self) -> Path:
        cfg, d = self.cfg, self.dist
        self._build()
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, self.out / "config.yaml")
        if self.resume:
            self._restore()
        elif d.main:
            (self.out / "log.jsonl").unlink(missing_ok=True)
        barrier(d)
        for epoch in range(self.start_epoch, cfg.epochs):
            record = self._train_epoch(epoch)
            broadcast_module(self.model, d)    # rank 0's BN statistics: every rank validates it
            record.update(self._validate())
            record.update(self.method.end_epoch(unwrap(self.model), epoch,
                                                {"val_class_acc": record.pop("_val_class_acc")}))
            improved = record["val_robust_acc"] > self.best
            self.best = max(self.best, record["val_robust_acc"])
            record["best"] = improved
            if d.main:
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                state = self._state(epoch)
                save_checkpoint(self.out / "last.pt", state)
                if improved:
                    save_checkpoint(self.out / "best.pt", state)
                if cfg.progress:
                    tqdm.write(_summary(record))
            barrier(d)
        return self.out

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, d = self.cfg, self.dist
        lr = piecewise_lr(cfg.lr, epoch, cfg.milestones, cfg.lr_gamma)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.net.train()
        if d.enabled:   # distinct attack noise per rank; an epoch-boundary resume stays exact
            torch.manual_seed(rank_seed(cfg.seed, epoch, d.rank))
        self.method.start_epoch(epoch)
        sums: dict[str, float] = {}
        n_seen, t0 = 0, time.perf_counter()
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and d.main))
        for step, batch in enumerate(bar):
            if cfg.channels_last:
                batch.x = batch.x.contiguous(memory_format=torch.channels_last)
            with autocast(cfg, self.device):
                loss, metrics = self.method(self.net, batch)
            if not all_ranks(math.isfinite(loss.item()), d, self.device):  # all ranks stop together
                bad = next((k for k, v in metrics.items() if not math.isfinite(v)), "loss")
                raise TrainingDiverged(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1} (term '{bad}' = "
                    f"{metrics.get(bad, loss.item())}); the last good checkpoint is "
                    f"{self.out / 'last.pt'}. Lower --lr or check the method options")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.method.after_step(unwrap(self.model))
            b = len(batch.y)
            metrics = {"loss": loss.item(), **metrics}
            if cfg.log_clean_acc:
                with torch.no_grad(), model_mode(self.model, "eval"):
                    metrics["clean_acc"] = (self.model(batch.x).argmax(1) == batch.y).float().mean().item()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * b
            n_seen += b
            bar.set_postfix(loss=f"{loss.item():.3f}")
        sums["_n"] = n_seen
        sums = reduce_sums(sums, d, self.device)
        secs = time.perf_counter() - t0
        n = sums.pop("_n")
        return {"epoch": epoch + 1, "lr": lr, **{k: v / n for k, v in sums.items()},
                "images": int(n), "seconds": round(secs, 3), "images_per_s": round(n / secs, 2)}

    def _validate(self) -> dict[str, Any]:
        """Clean and PGD accuracy on the held-out split; under DDP each rank attacks a strided
        share and the per-class counts are summed, so every rank gets the same numbers."""
        cfg, d = self.cfg, self.dist
        x, y = self.val
        if len(y) == 0:
            return {"val_clean_acc": float("nan"), "val_robust_acc": 0.0, "_val_class_acc": None}
        attack = make_attack(f"pgd{cfg.val_steps}", cfg.eps, cfg.step_size)
        model = unwrap(self.model)
        part = shard(len(y), d)
        x, y = x[part], y[part]
        clean = correct_under(model, x, y, None, batch_size=256, device=self.device)
        robust = correct_under(model, x, y, attack, batch_size=256, device=self.device)
        k = self.data.num_classes
        y = y.cpu()
        counts = torch.stack([torch.bincount(y, minlength=k), torch.bincount(y[clean], minlength=k),
                              torch.bincount(y[robust], minlength=k)]).double()
        total, clean_hits, robust_hits = all_reduce_sum(counts, d, self.device)
        n = total.sum()
        return {"val_clean_acc": (clean_hits.sum() / n).item(),
                "val_robust_acc": (robust_hits.sum() / n).item(),
                "_val_class_acc": robust_hits / total}


def _from_random_state(state):
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss}


def _to_random_state(d):
    return (d["version"], tuple(int(v) for v in d["internal"].tolist()), d["gauss"])


def _summary(r: dict[str, Any]) -> str:
    keys = [k for k in ("loss", "ce", "dhlr", "floe", "kl", "adv_acc", "clean_acc",
                        "val_clean_acc", "val_robust_acc") if k in r]
    return f"epoch {r['epoch']}: " + " ".join(f"{k}={r[k]:.4f}" for k in keys) + \
        f" ({r['images_per_s']:.0f} img/s)"


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train per `cfg`; returns the run directory."""
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        cleanup_distributed(trainer.dist)

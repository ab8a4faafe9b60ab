"""A run's checkpoint state (what last.pt and best.pt hold) and its way back into the parts.

The state carries every random generator the run draws from (torch, CUDA, Python's `random`,
the data order, the generated data's), so a resume at an epoch boundary continues exactly.
Checkpoint states count epochs from 0 (`epoch`, `best_epoch`); log.jsonl counts from 1.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import yaml

from ..config import TrainConfig
from ..models import unwrap
from .assembly import Parts

# Config fields a resume may always change: they do not alter the training trajectory.
FREE_ON_RESUME = ("epochs", "progress", "device", "threads", "out_dir", "log_every", "loggers")


@dataclass
class Progress:
    """Where a run stands: the next epoch to train (0-based), the best selection score so far
    and its epoch (0-based; None before one), and the run's events (resumes with changes)."""

    start_epoch: int = 0
    best: float = -1.0
    best_epoch: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as JSON values (what checkpoints and trackers record)."""
    return json.loads(json.dumps(asdict(cfg), default=str))


def config_text(cfg: TrainConfig) -> str:
    """config.yaml's text."""
    return yaml.safe_dump(asdict(cfg), sort_keys=False)


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


def checkpoint_state(
    cfg: TrainConfig, parts: Parts, epoch: int, progress: Progress
) -> dict[str, Any]:
    """The state saved after 0-based `epoch` (the RNG states as they are now)."""
    p = parts
    return {
        "model": unwrap(p.model).state_dict(),
        "model_spec": p.model_spec,
        "optimizer": p.optimizer.state_dict(),
        "scaler": p.scaler.state_dict(),
        "method": cfg.method,
        "method_options": _plain(p.method.options()),
        "method_state": p.method.state_dict(),
        "extra_models": {
            **p.method.extra_models(),
            **({"ema": p.ema.state_dict()} if p.ema else {}),
        },
        "ema": p.ema.state_dict() if p.ema else None,
        "epoch": epoch,  # 0-based, as best_epoch; the log counts from 1
        "best_val_robust": progress.best,
        "best_epoch": progress.best_epoch,
        "config": config_dict(cfg),
        "config_yaml": config_text(cfg),
        "events": progress.events,
        "rng": rng_state(parts),
    }


def load_state(parts: Parts, state: dict[str, Any]) -> None:
    """Put a checkpoint state back into `parts` and the random generators."""
    p = parts
    p.model.load_state_dict(state["model"])
    p.optimizer.load_state_dict(state["optimizer"])
    p.method.load_state_dict(state.get("method_state", {}))
    p.scaler.load_state_dict(state.get("scaler", {}) or p.scaler.state_dict())
    set_rng_state(parts, state["rng"])
    if p.ema is not None:
        p.ema.load_state_dict(state["ema"])


def rng_state(parts: Parts) -> dict[str, Any]:
    """Every generator's state: torch, CUDA, Python's `random`, the data's, the aux data's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": _from_random_state(random.getstate()),
        "data": parts.loader.generator.get_state(),
        "aux": parts.aux_generator.get_state() if parts.aux_generator else None,
    }


def set_rng_state(parts: Parts, rng: dict[str, Any]) -> None:
    """Restore `rng_state`'s generators."""
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng.get("cuda") is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(_to_random_state(rng["python"]))
    parts.loader.generator.set_state(rng["data"])
    if parts.aux_generator is not None:
        parts.aux_generator.set_state(rng["aux"])


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

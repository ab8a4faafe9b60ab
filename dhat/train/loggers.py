"""Experiment trackers beside log.jsonl: TensorBoard, Weights & Biases, MLflow (`--loggers`).

log.jsonl is always written (it is the run's record: resume, `dhat report`); `jsonl` in
`--loggers` names it. Every other tracker receives, from rank 0 only,

* each epoch's log.jsonl record, every number in it (booleans as 0/1), as `epoch/<key>`;
* with `--log-every N`, every N optimizer steps, the mean of each training metric over those
  N steps (rank 0's slice of the batches), as `train/<key>`.

The x-axis of both is the optimizer step counted from 1 over the whole run (an epoch's record
sits at the epoch's last step). A tracker's package is imported only when it is asked for.
TensorBoard writes into `<run>/tensorboard`; W&B and MLflow go where their own settings say
(WANDB_MODE=offline, WANDB_PROJECT, MLFLOW_TRACKING_URI, ...), the project defaulting to
"dhat" and the run's name to the run directory's.
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..trackers import check_loggers

TENSORBOARD_DIR = "tensorboard"


def scalars(record: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of `record` (booleans as 0/1) as {prefix/key: float}."""
    out = {}
    for k, v in record.items():
        if isinstance(v, (bool, int, float)) and math.isfinite(float(v)):
            out[f"{prefix}/{k}"] = float(v)
    return out


class Logger(abc.ABC):
    """One tracker: `log(values, step)` with values {tag: float}; `close()` at the end. A
    subclass that forgets `log` fails when it is built."""

    @abc.abstractmethod
    def log(self, values: dict[str, float], step: int) -> None:
        """Record `values` ({tag: float}) at optimizer step `step`."""

    def move(self, run_dir: Path) -> None:  # noqa: B027 (optional hook: most trackers ignore a move)
        """The run directory is about to be renamed to `run_dir` (a no-op by default)."""

    def close(self) -> None:  # noqa: B027 (optional hook: nothing to release by default)
        """Flush and release the tracker (a no-op by default)."""


class TensorBoardLogger(Logger):
    """Event files in `<run>/tensorboard`; the writer opens at the first value and closes
    when the run directory moves (an overwrite's staged run swapped into place)."""

    def __init__(self, run_dir: Path):
        self.folder = run_dir / TENSORBOARD_DIR
        self.writer: Any = None
        self._open()

    def _open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional dependency: tensorboard

        if self.folder.is_symlink():
            raise UserError(
                f"{self.folder} is a symbolic link (dhat never writes through one in a run "
                "directory); remove it"
            )
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def log(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            self._open()
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)

    def move(self, run_dir: Path) -> None:
        self.close()
        self.folder = run_dir / TENSORBOARD_DIR

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(Logger):
    def __init__(self, name: str, config: dict[str, Any]):
        import wandb  # optional dependency: wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "dhat"), name=name, config=config
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger(Logger):
    def __init__(self, name: str, config: dict[str, Any]):
        import mlflow  # optional dependency: mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "dhat"))
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v)[:500] for k, v in config.items()})

    def log(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class Loggers:
    """The run's trackers (none for jsonl alone): `epoch(record, step)`, `step(means, step)`."""

    def __init__(self, names: Sequence[str], run_dir: Path, name: str, config: dict[str, Any]):
        self.items: list[Logger] = []
        try:
            for n in check_loggers(names):
                if n == "tensorboard":
                    self.items.append(TensorBoardLogger(run_dir))
                elif n == "wandb":
                    self.items.append(WandbLogger(name, config))
                elif n == "mlflow":
                    self.items.append(MlflowLogger(name, config))
        except BaseException:
            self.close()
            raise

    def __bool__(self) -> bool:
        return bool(self.items)

    def epoch(self, record: dict[str, Any], step: int) -> None:
        values = scalars(record, "epoch")
        for lg in self.items:
            lg.log(values, step)

    def step(self, means: dict[str, float], step: int) -> None:
        values = scalars(means, "train")
        for lg in self.items:
            lg.log(values, step)

    def move(self, run_dir: Path) -> None:
        """Before the run directory is renamed to `run_dir`: files open in it are closed."""
        for lg in self.items:
            lg.move(run_dir)

    def close(self) -> None:
        for lg in self.items:
            lg.close()
        self.items = []

"""What a training method is: a small unit that turns (model, batch) into (loss, metrics).

The trainer knows no method. It calls, per run, `setup`; per epoch, `start_epoch` and
`end_epoch`; per step, `method(model, batch)` then (after `optimizer.step()`) `after_step`.
A method splits its step into `inputs` (attacks, masks: no parameter gradients) and
`objective` (the differentiable loss), so that wrappers such as AWP can reuse the inputs.
Options are dataclass fields declared with `dhat.schema.option` (type, default, help,
range), so the CLI, YAML files and `create_method(name, **options)` validate them alike.

Metrics are 0-d tensors on the training device, never Python floats: reading one is a
host-device synchronisation, which the trainer does once per log interval, not per step.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import Batch

Metrics = dict[str, torch.Tensor]

# Options every attack-based method takes from the run's threat model (TrainConfig's eps,
# step_size, steps): one source for the budget. They are fields, but never method flags.
RUN_WIDE = ("eps", "step_size", "steps")


@dataclass
class RunInfo:
    """What a method may need to know about the run (given once, in `setup`).
    `frozen_models`: modules the trainer loaded for options that name a checkpoint (e.g.
    DHAT's `cam_model`), by option name. `label_smoothing` applies to every CE training term."""

    num_classes: int
    num_train: int
    epochs: int
    device: torch.device
    label_smoothing: float = 0.0
    frozen_models: dict[str, nn.Module] = field(default_factory=dict)


@dataclass
class Method(abc.ABC):
    """Base class. Subclasses are dataclasses whose fields are their options."""

    name = "base"

    def setup(self, info: RunInfo) -> None:
        self.info = info

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def inputs(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Everything the loss needs that carries no parameter gradient (attacks, masks)."""
        return {}

    @abc.abstractmethod
    def objective(
        self, model: nn.Module, batch: Batch, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Metrics]:
        """The loss and its metrics from `inputs` (see `inputs`); every method defines it."""

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        return self.objective(model, batch, self.inputs(model, batch))

    def after_step(self, model: nn.Module) -> None:  # noqa: B027  (optional hook: default does nothing)
        """Called after `optimizer.step()` (AWP restores the weights here)."""

    def end_epoch(self, model: nn.Module, epoch: int, stats: dict[str, Any]) -> dict[str, Any]:
        """Called after validation; `stats` may hold `val_class_acc` (K,); returns log fields."""
        return {}

    def extra_models(self) -> dict[str, dict[str, torch.Tensor]]:
        """Named extra weights to save beside the model (e.g. CFA's averaged model)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Method state that must survive a resume (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027  (optional hook: stateless default)
        pass

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def ce(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The training cross-entropy, with the run's label smoothing (`--label-smoothing`)."""
        s = getattr(getattr(self, "info", None), "label_smoothing", 0.0)
        return smoothed_ce(logits, y, s, reduction)


def smoothed_ce(
    logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of logits (B, K) against labels (B,) or probabilities (B, K), smoothed by
    `label_smoothing` S (targets (1 − S)·t + S/K). S = 0 calls `F.cross_entropy` without the
    argument, so an unsmoothed run is the official codes' exact call."""
    if label_smoothing:
        return F.cross_entropy(logits, y, reduction=reduction, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, y, reduction=reduction)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy as a detached 0-d tensor (no host synchronisation)."""
    return (logits.detach().argmax(1) == y).float().mean()

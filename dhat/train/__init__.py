"""Training: the loop, the schedule, checkpoints, torchrun/DDP."""

from .schedule import piecewise_lr
from .trainer import Trainer, TrainingDiverged, method_args, train

__all__ = ["piecewise_lr", "Trainer", "TrainingDiverged", "method_args", "train"]

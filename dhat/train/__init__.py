"""Training: the trainer (`trainer`) and its parts (`assembly`, `loop`, `validation`, `state`,
`resume`), the schedule, the EMA and the experiment trackers."""

from .schedule import piecewise_lr
from .trainer import Trainer, TrainingDiverged, TrainingInterrupted, train

__all__ = [
    "piecewise_lr",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "train",
]

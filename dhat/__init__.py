"""dhat: adversarial training (DHAT and its baselines), robustness evaluation and attention
analysis for image classifiers. Inputs and budgets are in [0, 1] pixel units throughout."""

from .attacks import inverse_pgd, pgd
from .cam import grad_cam
from .checkpoint import load_model
from .data import BatchLoader, load_dataset
from .errors import UserError
from .models import create_model, list_models

__version__ = "0.2.0"

__all__ = [
    "inverse_pgd",
    "pgd",
    "grad_cam",
    "load_model",
    "BatchLoader",
    "load_dataset",
    "UserError",
    "create_model",
    "list_models",
    "__version__",
]

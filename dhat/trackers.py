"""Which experiment trackers `--loggers` may name, and what each needs installed.

The trackers themselves live in `dhat.train.loggers`; this list sits on the base floor so that
the config can check `--loggers` when it is built, before any training code is imported.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from .errors import UserError, unknown_name

# name -> (the module it imports, the pip extra that installs it); jsonl needs none.
LOGGERS: dict[str, tuple[str, str] | None] = {
    "jsonl": None,
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


def check_loggers(names: Sequence[str], flag: str = "--loggers") -> list[str]:
    """The names, known and with their package installed (checked without importing it);
    else one line naming the fix."""
    for name in names:
        if name not in LOGGERS:
            raise unknown_name(f"logger ({flag})", name, LOGGERS)
        need = LOGGERS[name]
        if need is not None and importlib.util.find_spec(need[0]) is None:
            raise UserError(
                f"{flag} {name} needs the {need[0]} package: pip install 'dhat[{need[1]}]'"
            )
    return list(dict.fromkeys(names))

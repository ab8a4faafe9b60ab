"""Method options that name a checkpoint (DHAT's `cam_model`): declared, checked and loaded here.

Such an option is either "self" (use the model being trained) or the path of a `dhat train`
checkpoint, which the run loads once as a frozen, eval-mode module with no parameter
gradients and hands to the method in `RunInfo.frozen_models[option name]`. The config checks
the path exists when it is built (`check_frozen_paths`), the trainer loads it
(`load_frozen_models`); nothing else reads the option's kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_model
from ..errors import UserError
from ..schema import option
from .registry import method_options

KIND = "checkpoint"
SELF = "self"


def checkpoint_option(help: str) -> Any:
    """Declare a method option naming a frozen network: 'self' (the default) or a path."""
    return option(SELF, help, kind=KIND)


def frozen_paths(method: str, options: dict[str, Any]) -> dict[str, str]:
    """{option name: checkpoint path} for every checkpoint option of `method` set to a path
    in `options` (resolved method options; unset options take their default, 'self')."""
    out = {}
    for name, spec in method_options(method).items():
        value = options.get(name, spec.default)
        if spec.kind == KIND and value != SELF:
            out[name] = str(value)
    return out


def check_frozen_paths(method: str, options: dict[str, Any], hint: str = "") -> None:
    """Every checkpoint the options name exists, else one line naming the option and how to
    make the file (`hint`, default: train one with --method standard)."""
    for name, path in frozen_paths(method, options).items():
        if not Path(path).expanduser().is_file():
            raise UserError(
                f"--{name.replace('_', '-')} {path}: no such checkpoint; "
                + (hint or "train one with --method standard")
            )


def load_frozen_models(
    method: str, options: dict[str, Any], device: torch.device
) -> dict[str, nn.Module]:
    """{option name: the checkpoint's model, eval mode, requires_grad False, on `device`}."""
    return {
        name: load_model(path, device=device).requires_grad_(False).eval()
        for name, path in frozen_paths(method, options).items()
    }

"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A training checkpoint is a dict of tensors and plain values (torch.save); it is loaded
with `weights_only=True`. A model can also be exported as a plain safetensors state dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .io import atomic_write

FORMAT = "dhat-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (it gets a `format` tag)."""
    state = {"format": FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a dhat checkpoint weights-only; a missing, corrupt or foreign file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/foreign files
        raise UserError(
            f"{path} is not a readable dhat checkpoint ({type(e).__name__}); "
            "pass a last.pt/best.pt written by `dhat train`"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a dhat checkpoint (no '{FORMAT}' tag); for a plain "
            "state dict use `dhat eval --weights-file FILE --model NAME`"
        )
    return state


def model_from_state(state: dict[str, Any], device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    from .models import create_model

    spec = state["model_spec"]
    model = create_model(
        spec["name"],
        num_classes=spec["num_classes"],
        mean=spec["mean"],
        std=spec["std"],
        **spec.get("kwargs", {}),
    )
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu", weights: str = "model"):
    """The model stored in a dhat checkpoint, in eval mode. `weights` picks an extra model
    saved beside it (e.g. "fawa" for CFA's averaged weights)."""
    state = read_checkpoint(path)
    if weights != "model":
        extra = state.get("extra_models", {})
        if weights not in extra:
            raise UserError(
                f"{path} holds no '{weights}' weights; it has: {', '.join(['model', *extra])}"
            )
        state = {**state, "model": extra[weights]}
    return model_from_state(state, device)

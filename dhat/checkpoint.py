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
from .models import create_model

FORMAT = "dhat-checkpoint-v1"


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, I/O error); the file it was to replace
    is unchanged and no partial file is left."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (it gets a `format` tag). A failed write is a
    `CheckpointWriteError` and leaves `path` as it was: an OSError (ENOSPC), or the
    RuntimeError torch's zip writer raises when the disk fills under it (a state of tensors
    and plain values fails to save for no other reason)."""
    state = {"format": FORMAT, **state}
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except OSError as e:
        raise CheckpointWriteError(f"cannot write {path}: {e.strerror or e}") from None
    except RuntimeError as e:
        first = (str(e).splitlines() or ["RuntimeError"])[0][:200]
        raise CheckpointWriteError(
            f"cannot write {path} (torch: {first}; is the disk full?)"
        ) from None


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
    spec = state.get("model_spec")
    if not isinstance(spec, dict) or not {"name", "num_classes"} <= set(spec):
        raise UserError(
            "the checkpoint has no usable model_spec (not written by `dhat train`?): "
            "evaluate plain weights with --weights-file FILE --model NAME"
        )
    try:
        model = create_model(
            spec["name"],
            num_classes=spec["num_classes"],
            mean=spec.get("mean"),
            std=spec.get("std"),
            **spec.get("kwargs", {}),
        )
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            f"the checkpoint's weights do not fit its model_spec ({spec['name']}): {first}"
        ) from None
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu", weights: str = "model"):
    """The model stored in a dhat checkpoint, in eval mode. `weights` picks an extra model
    saved beside it (e.g. "fawa" for CFA's averaged weights)."""
    return model_from_state(select_weights(read_checkpoint(path), weights, path), device)


def select_weights(state: dict[str, Any], weights: str, path: str | Path) -> dict[str, Any]:
    """`state` with its "model" weights replaced by the extra model saved as `weights` in its
    "extra_models" (e.g. "fawa", CFA's averaged weights); "model" returns `state` itself. A
    name the checkpoint lacks is a UserError naming `path` and the weights it has."""
    if weights == "model":
        return state
    extra = state.get("extra_models", {})
    if weights not in extra:
        raise UserError(
            f"{path} holds no '{weights}' weights; it has: {', '.join(['model', *extra])}"
        )
    return {**state, "model": extra[weights]}

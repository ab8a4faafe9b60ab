"""`dhat export CKPT --out model.safetensors`: a plain, portable state dict of a trained model.

The safetensors file holds the model's `state_dict()`, normalisation buffers `mean`/`std`
included (inputs stay [0, 1] pixels); a JSON sidecar of the same name (`model.json`) records
the architecture, its arguments, the class count and mean/std, so any code that builds the
same architecture loads it:

    from safetensors.torch import load_file
    model = dhat.create_model(meta["architecture"], num_classes=meta["num_classes"], **meta["kwargs"])
    model.load_state_dict(load_file("model.safetensors"))

or `dhat.export.load_exported("model.safetensors")`, or `dhat eval --weights-file model.safetensors`.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_model, read_checkpoint
from .config import config_hash
from .errors import UserError
from .io import atomic_write, file_sha256, write_json
from .models.weights import load_weights_file, sidecar_path

FORMAT = "dhat-export-v1"


def _default_out(checkpoint: Path, weights: str) -> Path:
    suffix = "" if weights == "model" else f"_{weights}"
    return checkpoint.with_name(f"{checkpoint.parent.name or 'model'}_{checkpoint.stem}{suffix}.safetensors")


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None,
                      weights: str = "model") -> tuple[Path, Path]:
    """Write `out` (.safetensors) and its sidecar `out.with_suffix('.json')`; return both paths."""
    from safetensors.torch import save_file

    from . import __version__
    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint)
    model = load_model(checkpoint, "cpu", weights=weights)  # validates the weights load
    out = Path(out) if out else _default_out(checkpoint, weights)
    if out.suffix != ".safetensors":
        raise UserError(f"--out must end in .safetensors, got {out}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    spec = state["model_spec"]
    run_cfg = state.get("config", {})
    meta: dict[str, Any] = {
        "format": FORMAT,
        "architecture": spec["name"], "kwargs": spec.get("kwargs", {}),
        "num_classes": spec["num_classes"],
        "mean": [float(v) for v in model.mean.flatten()], "std": [float(v) for v in model.std.flatten()],
        "input": "(B, 3, H, W) float pixels in [0, 1]; normalisation (x - mean) / std is inside the "
                 "model (buffers 'mean', 'std' of shape (1, 3, 1, 1))",
        "weights": weights, "source_checkpoint": str(checkpoint), "epoch": state.get("epoch"),
        "method": state.get("method"), "dataset": run_cfg.get("dataset"),
        "eps": run_cfg.get("eps"), "config_hash": config_hash(run_cfg) if run_cfg else None,
        "dhat": __version__, "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    flat = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()}
    atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=flat))
    meta["file"] = out.name
    meta["sha256"] = file_sha256(out)
    side = sidecar_path(out)
    write_json(side, meta)
    return out, side


def load_exported(path: str | Path, device: str | torch.device = "cpu"):
    """The model of an exported .safetensors (architecture from its sidecar), in eval mode."""
    model, _ = load_weights_file(path, device=device)
    return model

"""What an evaluation measures and where it came from: the model (a dhat checkpoint or a plain
weights file) with its provenance for the result card (file hash, model, method, run config),
the run's ε and ε_inv, the library versions and hardware, and the training images of the
robust gap."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy
import torch

from .. import __version__
from ..attacks.autoattack import import_autoattack
from ..checkpoint import model_from_state, read_checkpoint, select_weights
from ..config import EvalConfig, config_hash
from ..data import DataBundle, validation_split
from ..data.datasets import check_dataset_args
from ..errors import UserError
from ..io import file_sha256
from ..models.weights import load_weights_file

DEFAULT_EPS = 8 / 255
"""The evaluation's L-inf budget when neither `EvalConfig.eps` nor the checkpoint gives one."""

DEFAULT_INVERSE_EPS = 4 / 255
"""ε_inv of the background measures' inverse images when the checkpoint records none (no
"eps_inv" in its resolved method options nor in its method_args): DHAT's default."""


def environment() -> dict[str, Any]:
    """Library versions and hardware, recorded with every result."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    try:
        _, aa_name, aa_version = import_autoattack()
        aa = f"{aa_name} {aa_version}"
    except UserError:
        aa = None
    return {
        "dhat": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "autoattack_package": aa,
        "hardware": f"{dev}; {platform.processor() or platform.machine()}; "
        f"{torch.get_num_threads()} CPU threads",
    }


def training_images(
    data: DataBundle, cfg: dict[str, Any], n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` images (seeded order) of the images the run trained on (its subset minus
    its validation split), without augmentation: ((n, 3, H, W), (n,))."""
    seed = cfg.get("seed", 0)
    if cfg.get("train_subset"):
        data.subset_train(cfg["train_subset"], seed)
    train_idx, _ = validation_split(data.train_y, cfg.get("val_size", 0), seed)
    order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed))]
    pick = order[:n]
    view = getattr(data, "train_view", None)  # e.g. imagefolder: center crop to the resolution
    x = data.train_x[pick]
    return (view(x) if view else x), data.train_y[pick]


def load_for_eval(cfg: EvalConfig, device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model to evaluate and what the card says about it (dhat checkpoint or plain weights).
    The card's "epoch" counts from 1, as log.jsonl does (a checkpoint stores it from 0, which
    resume relies on); for plain weights it is the export sidecar's, also from 1."""
    if cfg.weights_file:
        model, info = load_weights_file(
            cfg.weights_file,
            cfg.model,
            num_classes=cfg.num_classes,
            model_args=cfg.model_args,
            normalization=cfg.normalization,
            device=device,
        )
        meta = info.get("sidecar") or {}
        return model, {
            "source": "state-dict",
            "checkpoint": str(cfg.weights_file),
            "checkpoint_sha256": info["sha256"],
            "weights": "model",
            "epoch": meta.get("epoch"),
            "run_dir": None,
            "model": info["model"],
            "model_kwargs": info["model_kwargs"],
            "num_classes": info["num_classes"],
            "normalization": {
                "mean": info["mean"],
                "std": info["std"],
                "source": info["normalization_source"],
            },
            "method": meta.get("method"),
            "method_args": {},
            "method_options": meta.get("method_options") or {},
            "config_hash": meta.get("config_hash"),
            "run_config": {},
            "dataset_default": meta.get("dataset"),
            "eps_default": meta.get("eps"),
            "robustbench_model": info.get("robustbench_model"),
        }
    if not cfg.checkpoint:
        raise UserError(
            "pass a checkpoint (a best.pt/last.pt of `dhat train`) or --weights-file "
            "FILE --model NAME"
        )
    state = select_weights(read_checkpoint(cfg.checkpoint), cfg.weights, cfg.checkpoint)
    run_cfg = state.get("config", {})
    model = model_from_state(state, device)
    spec = state["model_spec"]
    return model, {
        "source": "dhat-checkpoint",
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": file_sha256(cfg.checkpoint),
        "weights": cfg.weights,
        "epoch": None if state.get("epoch") is None else state["epoch"] + 1,  # as log.jsonl
        "run_dir": str(Path(cfg.checkpoint).resolve().parent),
        "model": spec["name"],
        "model_kwargs": spec.get("kwargs", {}),
        "num_classes": spec["num_classes"],
        "normalization": {
            "mean": [float(v) for v in model.mean.flatten()],
            "std": [float(v) for v in model.std.flatten()],
            "source": "checkpoint",
        },
        "method": state.get("method"),
        "method_args": run_cfg.get("method_args", {}),
        "method_options": state.get("method_options", {}),
        "config_hash": config_hash(run_cfg),
        "run_config": run_cfg,
        "dataset_default": run_cfg.get("dataset"),
        "eps_default": run_cfg.get("eps"),
    }


def data_source(
    cfg: EvalConfig, info: dict[str, Any], run_cfg: dict[str, Any]
) -> tuple[str, str | None, dict[str, Any]]:
    """(name, root, arguments) of the dataset to evaluate on: `cfg.dataset`, else the run's
    (`info`'s "dataset_default"), else cifar10; the run's root and dataset arguments go with
    the run's own dataset."""
    dataset = cfg.dataset or info.get("dataset_default") or "cifar10"
    same = dataset == run_cfg.get("dataset")
    root = cfg.data_root or (run_cfg.get("data_root") if same else None)
    args = check_dataset_args(dataset, dict(run_cfg.get("dataset_args") or {})) if same else {}
    return dataset, root, args


def check_num_classes(info: dict[str, Any], data: DataBundle, dataset: str) -> None:
    """A one-line UserError unless the model (`load_for_eval`'s info) has `dataset`'s classes."""
    if data.num_classes != info["num_classes"]:
        raise UserError(
            f"the model has {info['num_classes']} classes but {dataset} has "
            f"{data.num_classes}; pass --dataset (or --num-classes)"
        )


def run_inverse_eps(info: dict[str, Any]) -> list[float]:
    """The run's ε_inv (`load_for_eval`'s `info`): its resolved method options (the trainer
    saves them in every checkpoint), else its method_args, else DEFAULT_INVERSE_EPS."""
    for options in (info.get("method_options") or {}, info.get("method_args") or {}):
        if "eps_inv" in options:
            return [float(options["eps_inv"])]
    return [DEFAULT_INVERSE_EPS]

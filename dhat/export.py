"""`dhat export CKPT`: a plain, portable state dict of a trained model.

`--out model.safetensors` (default): the safetensors file holds the model's `state_dict()`,
normalisation buffers `mean`/`std` included (inputs stay [0, 1] pixels); a JSON sidecar of
the same name (`model.json`) records the architecture, its arguments, the class count and
mean/std, so any code that builds the same architecture loads it:

    from safetensors.torch import load_file
    model = dhat.create_model(meta["architecture"], num_classes=meta["num_classes"],
                              **meta["kwargs"])
    model.load_state_dict(load_file("model.safetensors"))

or `dhat.export.load_exported("model.safetensors")`, or
`dhat eval --weights-file model.safetensors`.

`--robustbench` (`export_robustbench`): a RobustBench submission, in the folder layout that
RobustBench's `load_model(name, model_dir=OUT/models, dataset, threat_model)` reads:

    OUT/models/<dataset>/Linf/<name>.pt        {'state_dict': ...}, read with torch.load
    OUT/models/<dataset>/Linf/<name>.json      dhat sidecar (for `dhat eval --weights-file`)
    OUT/model_info/<dataset>/Linf/<name>.json  RobustBench's model card

Keys follow RobustBench's own class where it has one (`ROBUSTBENCH_CLASSES`; the WideResNet
gets `blockN.layer.M.` and `convShortcut`), and the normalisation buffers are named
`mu`/`sigma` (1, 3, 1, 1), as in RobustBench's model wrappers (x - mu) / sigma: the model
takes [0, 1] pixels. The card's numbers come from the checkpoint's validated result card
(`dhat eval`), which must have run AutoAttack: RobustBench ranks by `autoattack_acc` and its
leaderboard reads it as a number, so a card without one is refused rather than left null.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_model, read_checkpoint
from .config import config_hash
from .errors import UserError, unknown_name
from .io import atomic_write, file_sha256, write_json
from .models.weights import load_weights_file, sidecar_path

FORMAT = "dhat-export-v1"
ROBUSTBENCH_DATASETS = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}  # test images
ROBUSTBENCH_EPS = {"cifar10": 8 / 255, "cifar100": 8 / 255, "imagenet": 4 / 255}  # Linf
# Card fields a user may set (--rb-field KEY=VALUE); the accuracies, eps and `unreliable`
# come from the result card only.
CARD_FIELDS = {
    "link": str,
    "name": str,
    "authors": str,
    "venue": str,
    "reported": str,
    "footnote": str,
    "additional_data": bool,
    "number_forward_passes": int,
    "dataset": str,
    "architecture": str,
}
# The paper of the methods it describes (DHAT, DHAT-AWP and DHAT-CFA are rows of its tables).
DHAT_PAPER = {
    "link": "https://arxiv.org/abs/2408.06079",
    "name": "Towards Adversarial Robustness via Debiased High-Confidence Logit Alignment",
    "authors": "Kejia Zhang, Juanjuan Weng, Shaozi Li, Zhiming Luo",
    "venue": "ICCV 2025",
}


def _default_out(checkpoint: Path, weights: str) -> Path:
    suffix = "" if weights == "model" else f"_{weights}"
    return checkpoint.with_name(
        f"{checkpoint.parent.name or 'model'}_{checkpoint.stem}{suffix}.safetensors"
    )


def _meta(checkpoint: Path, state: dict[str, Any], model, weights: str) -> dict[str, Any]:
    """The sidecar's record of what was exported, from where."""
    from . import __version__

    spec = state["model_spec"]
    run_cfg = state.get("config", {})
    return {
        "format": FORMAT,
        "architecture": spec["name"],
        "kwargs": spec.get("kwargs", {}),
        "num_classes": spec["num_classes"],
        "mean": [float(v) for v in model.mean.flatten()],
        "std": [float(v) for v in model.std.flatten()],
        "input": "(B, 3, H, W) float pixels in [0, 1]; normalisation (x - mean) / std is inside "
        "the model (buffers 'mean', 'std' of shape (1, 3, 1, 1))",
        "weights": weights,
        "source_checkpoint": str(checkpoint),
        "epoch": state.get("epoch"),
        "method": state.get("method"),
        "dataset": run_cfg.get("dataset"),
        "eps": run_cfg.get("eps"),
        "config_hash": config_hash(run_cfg) if run_cfg else None,
        "dhat": __version__,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def export_checkpoint(
    checkpoint: str | Path, out: str | Path | None = None, weights: str = "model"
) -> tuple[Path, Path]:
    """Write `out` (.safetensors) and its sidecar `out.with_suffix('.json')`; return both paths."""
    from safetensors.torch import save_file

    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint)
    model = load_model(checkpoint, "cpu", weights=weights)  # validates the weights load
    out = Path(out) if out else _default_out(checkpoint, weights)
    if out.suffix != ".safetensors":
        raise UserError(f"--out must end in .safetensors, got {out}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = _meta(checkpoint, state, model, weights)
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


# ----------------------------------------------------------------------------- RobustBench
WRN_MODELS = ("wide_resnet", "wrn_28_10", "wrn_34_10")
LABELS = {
    "preact_resnet18": "PreActResNet-18",
    "resnet18": "ResNet-18",
    "resnet50": "ResNet-50",
    "vgg16_bn": "VGG-16-BN",
    "inception_v3": "Inception-v3",
    "small_cnn": "SmallCNN",
}
STANDARD_WIDTH = {
    "preact_resnet18": 64,
    "resnet18": 64,
    "resnet50": 64,
    "vgg16_bn": 64,
    "inception_v3": 1.0,
}


def _arg(name: str, kwargs: dict[str, Any], key: str) -> Any:
    """A factory argument as built: given, else the factory's default (None if it has none)."""
    from .models.registry import model_arg_defaults

    return kwargs.get(key, model_arg_defaults(name).get(key))


def _wrn_shape(name: str, kwargs: dict[str, Any]) -> tuple[int, int]:
    if name == "wide_resnet":
        return int(_arg(name, kwargs, "depth")), int(_arg(name, kwargs, "widen"))
    depth, widen = name.split("_")[1:]
    return int(depth), int(widen)


def architecture_label(name: str, kwargs: dict[str, Any]) -> str:
    """The card's `architecture` in RobustBench's spelling ('WideResNet-28-10',
    'PreActResNet-18'), with the width where it is not the standard one."""
    if name in WRN_MODELS:
        return "WideResNet-{}-{}".format(*_wrn_shape(name, kwargs))
    width = _arg(name, kwargs, "width_mult" if name == "inception_v3" else "width")
    label = LABELS.get(name, name)
    return (
        label
        if width is None or width == STANDARD_WIDTH.get(name)
        else f"{label} (width {width:g})"
    )


def robustbench_class(name: str, kwargs: dict[str, Any], num_classes: int) -> str | None:
    """The RobustBench class whose `load_state_dict` takes the export (plus buffers mu, sigma),
    or None where RobustBench has none (the keys then stay dhat's)."""
    arch = "robustbench.model_zoo.architectures"
    if name in WRN_MODELS:
        depth, widen = _wrn_shape(name, kwargs)
        drop = _arg(name, kwargs, "drop_rate")
        return (
            f"{arch}.wide_resnet.WideResNet(depth={depth}, num_classes={num_classes}, "
            f"widen_factor={widen}{f', dropRate={drop}' if drop else ''})"
        )
    blocks = {
        "preact_resnet18": "PreActBlockV2, [2, 2, 2, 2]",
        "resnet18": "BasicBlock, [2, 2, 2, 2]",
        "resnet50": "Bottleneck, [3, 4, 6, 3]",
    }.get(name)
    if (
        blocks is None
        or _arg(name, kwargs, "width") != 64
        or _arg(name, kwargs, "variant") not in (None, "cifar")
    ):
        return None
    if name == "preact_resnet18":
        return f"{arch}.resnet.PreActResNet({blocks}, num_classes={num_classes}, bn_before_fc=True)"
    return f"{arch}.resnet.ResNet({blocks}, num_classes={num_classes})"


def robustbench_state_dict(
    state: dict[str, torch.Tensor], name: str, has_class: bool
) -> dict[str, torch.Tensor]:
    """Our state dict in RobustBench's key names: mean/std -> mu/sigma; for its WideResNet
    `blockN.M.` -> `blockN.layer.M.` and `conv_shortcut` -> `convShortcut`."""
    wrn = has_class and name in WRN_MODELS
    out = {}
    for k, v in state.items():
        k = {"mean": "mu", "std": "sigma"}.get(k, k)
        if wrn:
            k = re.sub(r"^(block\d+)\.(\d+)\.", r"\1.layer.\2.", k).replace(
                "conv_shortcut", "convShortcut"
            )
        out[k] = v.detach().cpu().contiguous().clone()
    return out


def parse_card_fields(items: dict[str, str]) -> dict[str, Any]:
    """--rb-field KEY=VALUE pairs typed by CARD_FIELDS (unknown keys: the nearest name)."""
    from .schema import parse_bool, parse_int

    out: dict[str, Any] = {}
    for k, v in items.items():
        if k not in CARD_FIELDS:
            raise unknown_name("--rb-field", k, CARD_FIELDS)
        kind = CARD_FIELDS[k]
        out[k] = (
            parse_bool(v, f"--rb-field {k}")
            if kind is bool
            else parse_int(v, f"--rb-field {k}")
            if kind is int
            else v
        )
    return out


def _eval_command(checkpoint: Path, weights: str) -> str:
    extra = "" if weights == "model" else f" --weights {weights}"
    return f"dhat eval {checkpoint}{extra} --attacks clean pgd10 cw aa"


def read_eval_card(checkpoint: Path, weights: str, card: str | Path | None) -> dict[str, Any]:
    """The validated result card of `checkpoint`'s `weights` (default: eval_<stem>.json beside
    it), which must hold clean and AutoAttack accuracies of exactly this file."""
    from .config import EvalConfig
    from .eval.card import read_card
    from .eval.evaluate import default_card_path

    path = (
        Path(card)
        if card
        else default_card_path(
            EvalConfig(checkpoint=str(checkpoint), weights=weights), str(checkpoint)
        )
    )
    run = _eval_command(checkpoint, weights)
    if not path.is_file():
        raise UserError(f"no result card {path}: run `{run}` first (or pass --card PATH)")
    result = read_card(path)
    if (
        result.get("checkpoint_sha256") != file_sha256(checkpoint)
        or result.get("weights", "model") != weights
    ):
        raise UserError(
            f"{path} is the result card of another file or weights than {checkpoint} "
            f"({weights}): run `{run}`"
        )
    missing = [a for a in ("clean", "aa") if a not in result["accuracy"]]
    if missing:
        raise UserError(
            f"{path} has no {' or '.join(missing)} accuracy (RobustBench ranks by "
            f"AutoAttack): run `{run}`"
        )
    return result


def robustbench_card(
    result: dict[str, Any],
    arch: str,
    method: str | None,
    run_cfg: dict[str, Any],
    fields: dict[str, Any],
) -> dict[str, Any]:
    """RobustBench's model-card fields (numbers as strings in percent, as its cards have them)
    from a validated result card; `fields` (typed --rb-field values) win."""
    from .schema import format_value

    dataset = fields.get("dataset", result["dataset"])
    if dataset not in ROBUSTBENCH_DATASETS:
        raise UserError(
            f"RobustBench has no '{dataset}' leaderboard (it has "
            f"{', '.join(ROBUSTBENCH_DATASETS)}); pass --rb-field dataset=NAME if the "
            "card's data is one of them"
        )
    notes = []
    full = ROBUSTBENCH_DATASETS[dataset]
    partial = [
        f"{what} on the first {n}"
        for what, n in (("clean accuracy", result["n_test"]), ("AutoAttack", result["n_aa"]))
        if n < full
    ]
    if partial:
        text = " and ".join(partial)
        notes.append(f"{text[0].upper()}{text[1:]} of the {full} test images.")
    if abs(result["eps"] - ROBUSTBENCH_EPS[dataset]) > 1e-9:
        notes.append(
            f"Evaluated at \\(\\ell_\\infty\\) = {format_value(result['eps'])} instead of "
            f"{format_value(ROBUSTBENCH_EPS[dataset])}."
        )
    if run_cfg.get("aux_data"):
        notes.append(
            f"Trained with generated images ({100 * run_cfg.get('aux_fraction', 0):g}% "
            "of every batch)."
        )
    aa = f"{100 * result['accuracy']['aa']:.2f}"
    paper = (
        DHAT_PAPER
        if method and method.startswith("dhat")
        else {"link": "", "name": "", "authors": "", "venue": ""}
    )
    card = {
        **paper,
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": dataset,
        "architecture": arch,
        "eps": format_value(result["eps"]),
        "clean_acc": f"{100 * result['accuracy']['clean']:.2f}",
        "reported": aa,
        "autoattack_acc": aa,
        "footnote": " ".join(notes) or None,
        "unreliable": bool(result["unreliable"]),
    }
    card.update({k: v for k, v in fields.items() if k != "dataset"})
    return card


def export_robustbench(
    checkpoint: str | Path,
    out: str | Path | None = None,
    weights: str = "model",
    card: str | Path | None = None,
    model_name: str | None = None,
    fields: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the RobustBench layout (module docstring) under `out` (default: `robustbench/`
    beside the checkpoint) -> {"weights", "sidecar", "model_info"} paths. `fields`: typed
    card fields that override the defaults (see `parse_card_fields`)."""
    checkpoint = Path(checkpoint)
    result = read_eval_card(checkpoint, weights, card)
    state = read_checkpoint(checkpoint)
    model = load_model(checkpoint, "cpu", weights=weights)
    spec = state["model_spec"]
    name = model_name or re.sub(
        r"[^A-Za-z0-9_-]",
        "_",
        f"{checkpoint.parent.name or 'model'}_"
        f"{checkpoint.stem}{'' if weights == 'model' else '_' + weights}",
    )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"--model-name {name!r}: use letters, digits, '_', '-' and '.'")
    arch = architecture_label(spec["name"], spec.get("kwargs", {}))
    cls = robustbench_class(spec["name"], spec.get("kwargs", {}), spec["num_classes"])
    model_card = robustbench_card(
        result, arch, state.get("method"), state.get("config", {}), dict(fields or {})
    )
    root = Path(out) if out else checkpoint.parent / "robustbench"
    sub = Path(model_card["dataset"]) / result["threat_model"]
    pt = root / "models" / sub / f"{name}.pt"
    sd = robustbench_state_dict(model.state_dict(), spec["name"], cls is not None)
    atomic_write(pt, lambda tmp: torch.save({"state_dict": sd}, tmp))
    meta = {
        **_meta(checkpoint, state, model, weights),
        "file": pt.name,
        "sha256": file_sha256(pt),
        "key_names": "robustbench" if cls else "dhat",
        "robustbench_class": cls,
        "input": "(B, 3, H, W) float pixels in [0, 1]; (x - mu) / sigma with the buffers 'mu', "
        "'sigma' of shape (1, 3, 1, 1) comes first (as RobustBench's model wrappers)",
        "result_card": result["path"],
    }
    side = sidecar_path(pt)
    write_json(side, meta)
    info = root / "model_info" / sub / f"{name}.json"
    write_json(info, model_card)
    return {"weights": pt, "sidecar": side, "model_info": info}

"""`dhat export CKPT`: a plain, portable state dict of a trained model.

`--out model.safetensors` (default): the safetensors file holds the model's `state_dict()`,
normalisation buffers `mean`/`std` included (inputs stay [0, 1] pixels); a JSON sidecar of
the same name (`model.json`) records the architecture, its arguments, the class count,
mean/std and the epoch (counted from 1, as in log.jsonl), so any code that builds the same
architecture loads it:

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

Keys follow RobustBench's own class where it has one (`robustbench_class`; the WideResNet
gets `blockN.layer.M.` and `convShortcut`). The sidecar's `robustbench_code` defines the class
it names (`robustbench_class`), into which the state dict loads strictly: for RobustBench's
WideResNet / PreActResNet / ResNet a subclass with RobustBench's wrapper idiom, buffers
`mu`/`sigma` (1, 3, 1, 1) and `(x - mu) / sigma` first; for its DMWideResNet / DMPreActResNet
the class itself, its own `mean`/`std` arguments holding the normalisation. The model takes
[0, 1] pixels. The card's numbers come from the checkpoint's validated result card
(`dhat eval`), which must have run AutoAttack: RobustBench ranks by `autoattack_acc` and its
leaderboard reads it as a number, so a card without one is refused rather than left null.
AutoAttack on fewer than the test set's images is marked `unreliable` and its count is in
the footnote; `reported` (the paper's figure) and the paper's link, name, authors and venue
come only from the user (default "unknown").

Nothing is overwritten without `force`, and a `.json` beside the weights that `dhat export`
did not write is never replaced.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from . import __version__
from .checkpoint import load_model, read_checkpoint
from .config import config_hash
from .errors import UserError, unknown_name
from .eval.card import read_card
from .eval.evaluate import checkpoint_cards
from .io import atomic_write, file_sha256, write_json
from .models.registry import model_arg_defaults
from .models.weights import export_sidecar, load_weights_file, sidecar_path
from .schema import format_value, parse_bool, parse_int

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
# The paper's fields when the user gives none: RobustBench's cards need them, we cannot know them.
UNKNOWN_PAPER = {"link": "unknown", "name": "unknown", "authors": "unknown", "venue": "unknown"}


def check_outputs(paths: list[Path], sidecars: list[Path], force: bool) -> None:
    """Refuse before writing anything: an existing output without `force`, a `.json` sidecar
    that `dhat export` did not write (even with `force`), a folder where a file goes, and a
    parent that is a file."""
    for path in paths:
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise UserError(f"cannot write {path}: {parent} is a file, not a folder")
        if path.is_dir():
            raise UserError(f"{path} is a folder: pass a file path")
        if path in sidecars and path.exists() and not export_sidecar(path):
            raise UserError(
                f"{path} exists and was not written by `dhat export`: choose another --out "
                "(it is never replaced)"
            )
        if path.exists() and not force:
            raise UserError(f"{path} exists: pass --force to replace it, or another --out")


def _default_out(checkpoint: Path, weights: str) -> Path:
    suffix = "" if weights == "model" else f"_{weights}"
    return checkpoint.with_name(
        f"{checkpoint.parent.name or 'model'}_{checkpoint.stem}{suffix}.safetensors"
    )


def _meta(checkpoint: Path, state: dict[str, Any], model, weights: str) -> dict[str, Any]:
    """The sidecar's record of what was exported, from where."""
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
        "epoch": None if state.get("epoch") is None else state["epoch"] + 1,  # as log.jsonl
        "method": state.get("method"),
        "method_options": state.get("method_options", {}),  # the run's resolved options
        "dataset": run_cfg.get("dataset"),
        "eps": run_cfg.get("eps"),
        "config_hash": config_hash(run_cfg) if run_cfg else None,
        "dhat": __version__,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    weights: str = "model",
    force: bool = False,
) -> tuple[Path, Path]:
    """Write `out` (.safetensors) and its sidecar `out.with_suffix('.json')`; return both paths.
    Existing files are replaced only with `force`, and a sidecar only if `dhat export` wrote it."""
    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint)
    model = load_model(checkpoint, "cpu", weights=weights)  # validates the weights load
    out = Path(out) if out else _default_out(checkpoint, weights)
    if out.suffix != ".safetensors":
        raise UserError(f"--out must end in .safetensors, got {out}")
    side = sidecar_path(out)
    check_outputs([out, side], [side], force)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = _meta(checkpoint, state, model, weights)
    flat = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()}
    atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=flat))
    meta["file"] = out.name
    meta["sha256"] = file_sha256(out)
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
    "per_image_wrn": "WideResNet",
}
STANDARD_WIDTH = {
    "preact_resnet18": 64,
    "resnet18": 64,
    "resnet50": 64,
    "vgg16_bn": 64,
    "inception_v3": 1.0,
    "dm_preact": 64,
}
ARCH = "robustbench.model_zoo.architectures"


def _arg(name: str, kwargs: dict[str, Any], key: str) -> Any:
    """A factory argument as built: given, else the factory's default (None if it has none)."""
    return kwargs.get(key, model_arg_defaults(name).get(key))


def _wrn_shape(name: str, kwargs: dict[str, Any]) -> tuple[int, int]:
    if name in ("wide_resnet", "per_image_wrn"):
        return int(_arg(name, kwargs, "depth")), int(_arg(name, kwargs, "widen"))
    if name == "dm_wrn":
        return int(_arg(name, kwargs, "depth")), int(_arg(name, kwargs, "width"))
    depth, widen = name.split("_")[1:]
    return int(depth), int(widen)


def architecture_label(name: str, kwargs: dict[str, Any]) -> str:
    """The card's `architecture` in RobustBench's spelling ('WideResNet-28-10',
    'PreActResNet-18'), with the width where it is not the standard one."""
    if name in (*WRN_MODELS, "dm_wrn", "per_image_wrn"):
        return "WideResNet-{}-{}".format(*_wrn_shape(name, kwargs))
    if name == "dm_preact":
        label = f"PreActResNet-{_arg(name, kwargs, 'depth')}"
    else:
        label = LABELS.get(name, name)
    width = _arg(name, kwargs, "width_mult" if name == "inception_v3" else "width")
    return (
        label
        if width is None or width == STANDARD_WIDTH.get(name)
        else f"{label} (width {width:g})"
    )


def _floats(values) -> str:
    return "(" + ", ".join(repr(float(v)) for v in values) + ")"


def robustbench_class(
    name: str,
    kwargs: dict[str, Any],
    num_classes: int,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    class_name: str = "Net",
) -> dict[str, str] | None:
    """{"class": class_name, "code": Python source defining it}: a RobustBench architecture
    into which the export loads strictly, or None where RobustBench has none (the keys then
    stay dhat's). RobustBench's WideResNet / PreActResNet / ResNet get a subclass with
    buffers mu/sigma that normalises first (its wrapper idiom, e.g. Rice2020OverfittingNet);
    DMWideResNet / DMPreActResNet take mean/std as arguments."""
    call = None
    if name in WRN_MODELS:
        depth, widen = _wrn_shape(name, kwargs)
        drop = _arg(name, kwargs, "drop_rate")
        module, base = "wide_resnet", "WideResNet"
        call = (
            f"depth={depth}, num_classes={num_classes}, widen_factor={widen}"
            f"{f', dropRate={drop}' if drop else ''}"
        )
    elif name in ("dm_wrn", "dm_preact"):
        if name == "dm_preact" and _arg(name, kwargs, "width") != 64:
            return None
        act = "Swish" if _arg(name, kwargs, "activation") == "silu" else "nn.ReLU"
        base = "DMWideResNet" if name == "dm_wrn" else "DMPreActResNet"
        size = (
            "depth={}, width={}".format(*_wrn_shape(name, kwargs))
            if name == "dm_wrn"
            else f"depth={_arg(name, kwargs, 'depth')}, width=0"
        )
        code = (
            "import torch.nn as nn\n"
            f"from {ARCH}.dm_wide_resnet import {base}, Swish\n\n\n"
            f"def {class_name}():\n"
            f"    return {base}(num_classes={num_classes}, {size}, activation_fn={act}, "
            f"mean={_floats(mean)}, std={_floats(std)})\n"
        )
        return {"class": class_name, "code": code}
    elif _arg(name, kwargs, "width") == 64 and _arg(name, kwargs, "variant") in (None, "cifar"):
        module, base = "resnet", {"preact_resnet18": "PreActResNet"}.get(name, "ResNet")
        call = {
            "preact_resnet18": "PreActBlockV2, [2, 2, 2, 2], num_classes={}, bn_before_fc=True",
            "resnet18": "BasicBlock, [2, 2, 2, 2], num_classes={}",
            "resnet50": "Bottleneck, [3, 4, 6, 3], num_classes={}",
        }.get(name, "")
        call = call.format(num_classes) if call else None
        block = call.split(",")[0] if call else ""
        base = f"{base}, {block}"
    if call is None:
        return None
    first = base.split(",")[0]
    code = (
        "import torch\n"
        f"from {ARCH}.{module} import {base}\n\n\n"
        f"class {class_name}({first}):\n"
        '    """Takes [0, 1] pixels; normalises with the buffers mu, sigma first."""\n\n'
        "    def __init__(self):\n"
        f"        super().__init__({call})\n"
        f"        self.register_buffer('mu', torch.tensor({_floats(mean)}).view(1, 3, 1, 1))\n"
        f"        self.register_buffer('sigma', torch.tensor({_floats(std)}).view(1, 3, 1, 1))\n"
        "\n"
        "    def forward(self, x):\n"
        "        return super().forward((x - self.mu) / self.sigma)\n"
    )
    return {"class": class_name, "code": code}


def robustbench_state_dict(
    state: dict[str, torch.Tensor], name: str, has_class: bool
) -> dict[str, torch.Tensor]:
    """Our state dict in RobustBench's key names: mean/std -> mu/sigma (dropped for its DM
    classes, which take them as arguments); for its WideResNet `blockN.M.` ->
    `blockN.layer.M.` and `conv_shortcut` -> `convShortcut`."""
    wrn = has_class and name in WRN_MODELS
    dm = has_class and name in ("dm_wrn", "dm_preact")
    out = {}
    for k, v in state.items():
        if dm and k in ("mean", "std"):
            continue
        k = {"mean": "mu", "std": "sigma"}.get(k, k)
        if wrn:
            k = re.sub(r"^(block\d+)\.(\d+)\.", r"\1.layer.\2.", k).replace(
                "conv_shortcut", "convShortcut"
            )
        out[k] = v.detach().cpu().contiguous().clone()
    return out


def parse_card_fields(items: dict[str, str]) -> dict[str, Any]:
    """--rb-field KEY=VALUE pairs typed by CARD_FIELDS (unknown keys: the nearest name)."""
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
    """The validated result card of `checkpoint`'s `weights` (default: of the cards beside
    it, eval_<stem>*.json, the one of exactly this file with clean and AutoAttack accuracies
    on the most images, the newest on a tie), which must hold clean and AutoAttack accuracies
    of exactly this file."""
    run = _eval_command(checkpoint, weights)
    if card:
        path = Path(card)
    else:
        sha = file_sha256(checkpoint)
        usable = []
        for p in checkpoint_cards(checkpoint, weights):
            try:
                c = read_card(p)
            except UserError:
                continue
            if (
                c.get("checkpoint_sha256") == sha
                and c.get("weights", "model") == weights
                and {"clean", "aa"} <= set(c["accuracy"])
            ):
                usable.append((c.get("n_aa") or 0, p))
        if not usable:
            raise UserError(
                f"no result card with AutoAttack beside {checkpoint}: run `{run}` first "
                "(or pass --card PATH)"
            )
        path = max(usable, key=lambda t: t[0])[1]  # stable: the newest among the largest
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
    run_cfg: dict[str, Any],
    fields: dict[str, Any],
) -> dict[str, Any]:
    """RobustBench's model-card fields (numbers as strings in percent, as its cards have them)
    from a validated result card; `fields` (typed --rb-field values, the paper flags) win.
    AutoAttack on a subset of the test set is `unreliable` and counted in the footnote."""
    dataset = fields.get("dataset", result["dataset"])
    if dataset not in ROBUSTBENCH_DATASETS:
        raise UserError(
            f"RobustBench has no '{dataset}' leaderboard (it has "
            f"{', '.join(ROBUSTBENCH_DATASETS)}); pass --rb-field dataset=NAME if the "
            "card's data is one of them"
        )
    notes = []
    full = ROBUSTBENCH_DATASETS[dataset]
    n_aa = int(result["n_aa"])
    partial = [
        f"{what} on the first {n}"
        for what, n in (("clean accuracy", result["n_test"]), ("AutoAttack", n_aa))
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
    card = {
        **UNKNOWN_PAPER,
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": dataset,
        "architecture": arch,
        "eps": format_value(result["eps"]),
        "clean_acc": f"{100 * result['accuracy']['clean']:.2f}",
        "reported": "",
        "autoattack_acc": f"{100 * result['accuracy']['aa']:.2f}",
        "footnote": " ".join(notes) or None,
        "unreliable": bool(result["unreliable"]) or n_aa < full or result["n_test"] < full,
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
    force: bool = False,
) -> dict[str, Path]:
    """Write the RobustBench layout (module docstring) under `out` (default: `robustbench/`
    beside the checkpoint) -> {"weights", "sidecar", "model_info"} paths. `fields`: typed
    card fields that override the defaults (see `parse_card_fields`). Existing files are
    replaced only with `force`, and the sidecar only if `dhat export` wrote it."""
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
    cls = robustbench_class(
        spec["name"],
        spec.get("kwargs", {}),
        spec["num_classes"],
        model.mean.flatten().tolist(),
        model.std.flatten().tolist(),
        class_name=re.sub(r"\W", "_", name if name[0].isalpha() else "M" + name) + "Net",
    )
    model_card = robustbench_card(result, arch, state.get("config", {}), dict(fields or {}))
    root = Path(out) if out else checkpoint.parent / "robustbench"
    sub = Path(model_card["dataset"]) / result["threat_model"]
    pt = root / "models" / sub / f"{name}.pt"
    side = sidecar_path(pt)
    info = root / "model_info" / sub / f"{name}.json"
    check_outputs([pt, side, info], [side], force)
    sd = robustbench_state_dict(model.state_dict(), spec["name"], cls is not None)
    atomic_write(pt, lambda tmp: torch.save({"state_dict": sd}, tmp))
    dm = cls is not None and spec["name"] in ("dm_wrn", "dm_preact")
    meta = {
        **_meta(checkpoint, state, model, weights),
        "file": pt.name,
        "sha256": file_sha256(pt),
        "key_names": "robustbench" if cls else "dhat",
        "robustbench_class": cls["class"] if cls else None,
        "robustbench_code": cls["code"] if cls else None,
        "input": "(B, 3, H, W) float pixels in [0, 1]; "
        + (
            "the class normalises with its mean/std arguments (not in the state dict)"
            if dm
            else "(x - mu) / sigma with the buffers 'mu', 'sigma' of shape (1, 3, 1, 1) "
            "comes first (as RobustBench's model wrappers)"
        ),
        "result_card": result["path"],
        "autoattack_n": int(result["n_aa"]),
    }
    write_json(side, meta)
    write_json(info, model_card)
    return {"weights": pt, "sidecar": side, "model_info": info}

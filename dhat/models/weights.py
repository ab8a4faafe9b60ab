"""Third-party weights: a plain state dict (.pt/.pth/.safetensors) into a registered architecture.

    model, info = load_weights_file("resnet18_cifar.pt", "resnet18", normalization="cifar10")

* `.pt`/`.pth`/`.ckpt` files are read with `torch.load(weights_only=True)` (no arbitrary
  unpickling); the common wrappers {'state_dict': ...}, {'model_state_dict': ...},
  {'model': ...}, {'net': ...} are unwrapped and the `module.` (DataParallel) and `_orig_mod.`
  (torch.compile) prefixes stripped, and `model.` where the architecture has no such key
  (RobustBench's `load_model` strips `module.` and `model.` alike).
* `.safetensors` files are read with safetensors; a `dhat export` sidecar (same name, `.json`)
  supplies the architecture, its arguments and the class count when they are not given.
* Key names are mapped onto ours where a known variant of the widespread CIFAR ResNet / WRN
  layout is used: `downsample` -> `shortcut`, `fc` <-> `linear`, `shortcut.conv/bn` ->
  `shortcut.0/1`, WRN `blockN.layer.` -> `blockN.`, `convShortcut` -> `conv_shortcut`, and
  the normalisation buffers `mu`/`sigma` of RobustBench's model wrappers -> `mean`/`std`. A
  rename is used only where it turns an unknown key into one the model has. RobustBench's
  (TRADES') WideResNet `sub_block1.*` is built but never used in its forward: it is dropped.
  RobustBench's `PreActResNet` (with `bn_before_fc=True` and the shortcut on the activated
  input: its `PreActBlockV2`) and `ResNet` already use our names. Its `PreActBlock` without
  `out_shortcut` (Wong2020Fast) is another network with the same block keys; it lacks our
  final `bn` and is refused for that.
* RobustBench: `model_name` may be one of its CIFAR-10/100 L∞ rows (`Gowal2020Uncovering_70_16`;
  table and reasons for the refused rows in `models/robustbench.py`), and a file that keeps a
  row's name, as RobustBench's loader saves it, is recognised without one. The row fixes the
  architecture (its DMWideResNet / DMPreActResNet are `dm_wrn` / `dm_preact`), its arguments
  and its normalisation, including what its forward does besides (x - mean) / std:
  Hendrycks2019Using's 2x - 1 is normalisation 0.5/0.5, Ding2020MMA's per-image
  standardisation is `per_image_wrn`. Flags that contradict the row are refused.
* Normalisation: our models normalise inside (`mean`/`std` buffers). A state dict without them
  takes them from `normalization`: 'none' (mean 0, std 1: the model sees [0, 1] pixels, as
  RobustBench's bare architectures do), 'cifar10', 'cifar100', 'imagenet', or 'M,M,M/S,S,S'.
* A state dict that does not fit raises a one-line UserError naming the first missing,
  unexpected or mis-shaped keys.
"""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import UserError
from ..io import file_sha256
from ..schema import Where, parse_number
from . import robustbench as rb
from .base import NORMALIZATION
from .registry import check_model_args, create_model, is_model, list_models, model_arg_defaults

NORMALIZATIONS = {"none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), **NORMALIZATION}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
STRIP_PREFIXES = ("module.", "_orig_mod.")
OPTIONAL_PREFIXES = ("model.",)  # stripped unless the architecture has keys under it
KEY_ALIASES = {"mu": "mean", "sigma": "std"}  # RobustBench wrappers' normalisation buffers
UNUSED_PREFIXES = ("sub_block1.",)  # RobustBench's / TRADES' WRN: built, never in the forward
# (old, new) substrings; a rename applies only where it yields a key the model has.
RENAMES = (
    ("downsample.", "shortcut."),
    ("shortcut.conv.", "shortcut.0."),
    ("shortcut.bn.", "shortcut.1."),
    ("fc.", "linear."),
    ("linear.", "fc."),
    ("classifier.", "linear."),
    (".layer.", "."),
    ("convShortcut", "conv_shortcut"),
)
SKIPPABLE = ("num_batches_tracked",)  # absent from state dicts saved by old PyTorch versions


def parse_normalization(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """'none' | 'cifar10' | 'cifar100' | 'imagenet' | 'M,M,M/S,S,S' ('M/S': all channels)."""
    key = text.strip().lower()
    if key in NORMALIZATIONS:
        return NORMALIZATIONS[key]
    try:
        mean_s, std_s = key.split("/")
        mean = tuple(parse_number(v) for v in mean_s.split(","))
        std = tuple(parse_number(v) for v in std_s.split(","))
    except (ValueError, UserError):
        raise UserError(
            f"--normalization {text!r}: use none, cifar10, cifar100, imagenet or "
            "MEAN,MEAN,MEAN/STD,STD,STD (e.g. 0.5,0.5,0.5/0.25,0.25,0.25)"
        ) from None
    if len(mean) == 1:
        mean = mean * 3
    if len(std) == 1:
        std = std * 3
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError(f"--normalization {text!r}: need 3 means and 3 positive stds")
    return mean, std


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The `dhat export` sidecar beside a weights file, or {}."""
    side = sidecar_path(path)
    return {} if side.suffix == Path(path).suffix else export_sidecar(side)


def export_sidecar(side: str | Path) -> dict[str, Any]:
    """The JSON file `side` if `dhat export` wrote it (its `format` says so), else {}."""
    try:
        meta = json.loads(Path(side).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return (
        meta
        if isinstance(meta, dict) and str(meta.get("format", "")).startswith("dhat-export")
        else {}
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a .pt/.pth (weights-only, wrappers unwrapped) or .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise UserError(
                f"{path} is not a readable safetensors file ({type(e).__name__})"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"{path} cannot be loaded weights-only ({type(e).__name__}); if it holds a "
            "pickled model object, re-save model.state_dict() with torch.save"
        ) from None
    for _ in range(3):  # nested wrappers, e.g. {'model': {'state_dict': ...}}
        if isinstance(obj, dict) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_tensor_dict(obj):
        kind = type(obj).__name__
        keys = ", ".join(list(obj)[:5]) if isinstance(obj, dict) else ""
        raise UserError(
            f"{path} holds no state dict of tensors (a {kind}{': ' + keys if keys else ''}); "
            f"expected a state dict or one under {'/'.join(WRAPPER_KEYS)}"
        )
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and sum(isinstance(v, torch.Tensor) for v in d.values()) >= max(1, len(d) // 2)


def _strip(key: str, prefixes: tuple[str, ...] = STRIP_PREFIXES) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _rename(key: str, target: set[str]) -> str:
    """`key` renamed onto a target key by an alias or a combination of RENAMES, else as is."""
    if KEY_ALIASES.get(key) in target:
        return KEY_ALIASES[key]
    rules = [r for r in RENAMES if r[0] in key]
    for n in range(1, len(rules) + 1):
        for combo in itertools.combinations(rules, n):
            k = key
            for old, repl in combo:
                k = k.replace(old, repl)
            if k in target:
                return k
    return key


def map_keys(
    state: dict[str, torch.Tensor], target_keys
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rename the keys of a third-party state dict onto `target_keys` where a known variant
    fits -> (mapped state, {"renamed_keys": count, "dropped_keys": [unused keys left out]})."""
    target = set(target_keys)
    prefixes = STRIP_PREFIXES + tuple(
        p for p in OPTIONAL_PREFIXES if not any(t.startswith(p) for t in target)
    )
    state = {_strip(k, prefixes): v for k, v in state.items()}
    # one shared wrapper prefix ('net.', ...) that no target key has: drop it
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) == 1 and "." in next(iter(state)) and not any(k in target for k in state):
        head = next(iter(heads)) + "."
        if not any(t.startswith(head) for t in target):
            state = {k[len(head) :]: v for k, v in state.items()}
    unused = tuple(p for p in UNUSED_PREFIXES if not any(t.startswith(p) for t in target))
    dropped = [k for k in state if k.startswith(unused)]
    out: dict[str, torch.Tensor] = {}
    renamed = 0
    for key, value in state.items():
        if key.startswith(unused):
            continue
        new = key if key in target else _rename(key, target)
        renamed += new != key
        out[new] = value
    return out, {"renamed_keys": renamed, "dropped_keys": dropped}


def fit_state_dict(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str = "state dict",
    normalization: str | None = None,
) -> dict[str, Any]:
    """Load `state` (keys already mapped) into `model`, filling `mean`/`std` from `normalization`
    where the state dict has none. One-line UserError if it does not fit."""
    own = model.state_dict()
    missing = [
        k for k in own if k not in state and not k.endswith(SKIPPABLE) and k not in ("mean", "std")
    ]
    unexpected = [k for k in state if k not in own]
    shapes = [
        k
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape) and k not in ("mean", "std")
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys, first: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys, first: {', '.join(unexpected[:3])}")
        if shapes:
            k = shapes[0]
            parts.append(
                f"shape of {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                + (f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else "")
            )
        raise UserError(
            f"{source} does not fit {type(model).__name__}: "
            + "; ".join(parts)
            + " (check --model, --num-classes and --model-arg, e.g. width=...)"
        )
    note = "from the state dict"
    has_norm = "mean" in state and "std" in state
    if normalization is not None:
        mean, std = parse_normalization(normalization)
        if has_norm:
            file_mean = tuple(round(v, 6) for v in state["mean"].flatten().tolist())
            file_std = tuple(round(v, 6) for v in state["std"].flatten().tolist())
            if file_mean != tuple(round(v, 6) for v in mean) or file_std != tuple(
                round(v, 6) for v in std
            ):
                warnings.warn(
                    f"{source} holds mean={file_mean}, std={file_std}; --normalization "
                    f"{normalization} overrides them",
                    stacklevel=2,
                )
        note = f"--normalization {normalization}"
    elif has_norm:
        mean = tuple(state["mean"].flatten().tolist())
        std = tuple(state["std"].flatten().tolist())
    else:
        raise UserError(
            f"{source} holds no normalisation buffers (mean/std): pass --normalization "
            "none (the network sees [0, 1] pixels), cifar10, or MEAN,MEAN,MEAN/STD,STD,STD "
            "as the network was trained"
        )
    state = dict(state)
    state["mean"] = torch.tensor(mean, dtype=torch.float32).view_as(own["mean"])
    state["std"] = torch.tensor(std, dtype=torch.float32).view_as(own["std"])
    for k in own:
        if k not in state:  # num_batches_tracked
            state[k] = own[k]
    model.load_state_dict(state)
    return {"mean": list(mean), "std": list(std), "normalization_source": note}


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    for k in ("linear.weight", "fc.weight", "classifier.weight", "linear.bias", "fc.bias"):
        for key, v in state.items():
            if key == k or key.endswith("." + k):
                return int(v.shape[0])
    return None


def _same_normalization(a: str, b: str) -> bool:
    pa, pb = parse_normalization(a), parse_normalization(b)
    return all(abs(u - v) < 1e-6 for x, y in zip(pa, pb) for u, v in zip(x, y))


def _canonical(name: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(architecture, all its arguments), the fixed-size WRNs as `wide_resnet`."""
    full = {**model_arg_defaults(name), **kwargs}
    if name in ("wrn_28_10", "wrn_34_10"):
        depth, widen = name.split("_")[1:]
        return "wide_resnet", {
            **model_arg_defaults("wide_resnet"),
            **full,
            "depth": int(depth),
            "widen": int(widen),
        }
    return name, full


def _args_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def _robustbench_row(
    path: Path,
    model_name: str | None,
    meta: dict[str, Any],
    num_classes: int | None,
):
    """(row name, dataset, Row) when `model_name` is a RobustBench row, or the file keeps a
    row's name (`Gowal2020Uncovering_70_16.pt`, as RobustBench's loader saves it); else None."""
    if model_name and not is_model(model_name):
        if not (rb.is_row_name(model_name) or rb.ROW_NAME.fullmatch(model_name)):
            return None  # not a row's spelling: create_model names the nearest architecture
        row_name = model_name  # a row, or a misspelt one: lookup names the nearest
    elif not meta and rb.ROW_NAME.fullmatch(path.stem) and rb.is_row_name(path.stem):
        row_name = path.stem
    else:
        return None
    dataset = rb.dataset_of(row_name, num_classes, path.resolve().parts)
    return row_name, dataset, rb.lookup(row_name, num_classes, dataset)


def load_weights_file(
    path: str | Path,
    model_name: str | None = None,
    *,
    num_classes: int | None = None,
    model_args: dict[str, Any] | None = None,
    normalization: str | None = None,
    device: str | torch.device = "cpu",
):
    """Build a registered architecture and load a plain state dict into it -> (model in eval
    mode, info). `model_name`/`num_classes`/`model_args` default to a `dhat export` sidecar's
    values; `num_classes` otherwise to the rows of the final linear layer.

    `model_name` may be a RobustBench CIFAR L∞ row (`Gowal2020Uncovering_70_16`): its
    architecture, arguments and normalisation are then RobustBench's (`models/robustbench.py`).
    A file that keeps a row's name is recognised without `model_name`, and an architecture,
    arguments or normalisation given for it that differ from the row's are refused."""
    path = Path(path)
    state = read_state_dict(path)
    meta = read_sidecar(path)
    file_classes = _infer_num_classes({_strip(k): v for k, v in state.items()})
    found = _robustbench_row(path, model_name, meta, num_classes or file_classes)
    rb_info: dict[str, Any] = {"robustbench_model": None}
    if found is not None:
        row_name, dataset, row = found
        rb_info = {"robustbench_model": f"{dataset}/Linf/{row_name}", "robustbench_note": row.note}
        how = f" ({row.note})" if row.note else ""
        if model_name in (None, row_name):
            if model_args:
                raise UserError(
                    f"RobustBench's {row_name} fixes its architecture ({row.arch} "
                    f"{_args_text(row.kwargs)}): drop --model-arg"
                )
            if normalization is not None and not _same_normalization(
                normalization, row.normalization
            ):
                raise UserError(
                    f"RobustBench's {row_name} takes --normalization {row.normalization}{how}: "
                    "drop --normalization"
                )
            model_name, model_args, normalization = row.arch, row.kwargs, row.normalization
            num_classes = num_classes or {"cifar10": 10, "cifar100": 100}[dataset]
    name = model_name or meta.get("architecture")
    if not name:
        raise UserError(
            f"pass --model NAME for {path}: one of {', '.join(list_models())}, or a "
            "RobustBench CIFAR L∞ model name such as Carmon2019Unlabeled"
        )
    kwargs = dict(meta.get("kwargs", {})) if name == meta.get("architecture") else {}
    kwargs.update(check_model_args(name, dict(model_args or {}), Where(prefix="--model-arg ")))
    if found is not None:  # an architecture given for a file named as RobustBench's row
        row_name, _, row = found
        if _canonical(name, kwargs) != _canonical(row.arch, row.kwargs):
            raise UserError(
                f"{path.name} is RobustBench's {row_name}, a {row.arch} with "
                f"{_args_text(row.kwargs)}"
                f"{how}: pass --model {row_name} (or rename the file if it is another network)"
            )
        if normalization is None:
            normalization = row.normalization
        elif not _same_normalization(normalization, row.normalization):
            raise UserError(
                f"{path.name} is RobustBench's {row_name}, which takes --normalization "
                f"{row.normalization}{how}: pass --model {row_name} or that normalisation"
            )
    n_cls = (
        num_classes
        or (meta.get("num_classes") if name == meta.get("architecture") else None)
        or file_classes
        or 10
    )
    model = create_model(name, num_classes=n_cls, **kwargs)
    if getattr(model, "per_image", False):  # standardises each image: mean/std are unused
        if normalization not in (None, "none"):
            raise UserError(
                f"{name} standardises each image by its own mean and std: drop --normalization"
            )
        normalization = "none"
    mapped, renames = map_keys(state, model.state_dict().keys())
    norm = fit_state_dict(model, mapped, source=str(path), normalization=normalization)
    if getattr(model, "per_image", False):
        norm["normalization_source"] = "per-image standardisation (mean/std unused)"
    elif found is not None:
        norm["normalization_source"] = f"RobustBench's {found[0]}{how}"
    info = {
        "weights_file": str(path),
        "sha256": file_sha256(path),
        "model": name,
        "model_kwargs": kwargs,
        "num_classes": n_cls,
        **norm,
        **renames,
        **rb_info,
        "sidecar": meta or None,
    }
    return model.to(device).eval(), info

"""`TrainConfig`: everything a training run needs, typed and validated once, when built.

The CLI (`dhat train --flag`), YAML files (`--config my.yaml`) and the Python API
(`TrainConfig(...)`) are three views of this one dataclass; all three go through the same
validation (`dhat.schema`), so `--omega 1/10`, YAML `omega: 1/10` and
`TrainConfig(method_args={"omega": "1/10"})` give the same object, and a bad value is one
line naming the flag or key, before any data is read. Precedence:
dataclass defaults < named preset < YAML file < command-line flags.

A `TrainConfig` is frozen: it is resolved and coerced once, when built, and nothing
downstream re-validates it (`dataclasses.replace(cfg, seed=1)` makes a checked copy). Its
`method_args` are the method's options typed by the method's own fields; `method_kwargs()`
adds the run's threat model where the method takes it, ready for `build_method`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from ..attacks.threat import ThreatModel, threat_model
from ..cam import check_cam_layer
from ..data.aux import check_aux_file
from ..data.datasets import check_dataset_args, list_datasets
from ..errors import UserError, clip, excerpt, unknown_name
from ..io import write_text
from ..methods import list_methods, method_options
from ..methods.base import RUN_WIDE
from ..methods.frozen import check_frozen_paths
from ..methods.registry import check_method_options
from ..models import create_model
from ..models.registry import check_model_args, is_model, list_models
from ..schema import (
    AT_LEAST_1,
    EPOCHS,
    NONNEG,
    POSITIVE,
    SEED,
    STEPS,
    THREADS,
    Range,
    Where,
    check_expanded_size,
    coerce,
    option,
    specs,
)
from ..trackers import check_loggers
from .presets import PRESET_HINTS, PRESET_WITH_AUX, PRESETS

DICT_FIELDS = ("method_args", "model_args", "dataset_args")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Budgets are in [0, 1] pixel units (8/255)."""

    # data
    dataset: str = option("shapes", "dataset (dhat.data.list_datasets())")
    data_root: str | None = option(None, "the dataset's folder (default: the usual places)")
    dataset_args: dict = option(
        default_factory=dict,
        flag=False,
        help="dataset arguments, e.g. rho=0.5 (--dataset-arg KEY=VALUE)",
    )
    download: bool = option(False, "download the dataset when it is missing (CIFAR)")
    train_subset: int = option(
        0, "train on a class-stratified subset of this many images (0 = all)", range=NONNEG
    )
    val_size: int = option(1000, "training images held out for model selection", range=AT_LEAST_1)
    augment: bool = option(True, "random crop (pad 4) + horizontal flip")
    # model
    model: str = option(
        "preact_resnet18",
        "architecture (dhat.list_models()), or your own: package.module:factory",
    )
    model_args: dict = option(
        default_factory=dict,
        flag=False,
        help="architecture arguments, e.g. width=16 (--model-arg KEY=VALUE)",
    )
    # method (its options: method_args, typed by the method's dataclass fields)
    method: str = option("dhat", "training method (dhat.methods.list_methods())")
    method_args: dict = option(
        default_factory=dict, flag=False, help="the method's options (flags such as --omega)"
    )
    # threat model: one source for every attack of the run, validation and evaluation
    eps: float = option(
        8 / 255, "L-inf budget of the training attacks and of validation", budget=True
    )
    step_size: float = option(2 / 255, "PGD step size", budget=True)
    steps: int = option(10, "PGD steps of the training attacks", range=STEPS)
    # optimisation: SGD, piecewise lr: lr * gamma^(number of milestones <= epoch index)
    epochs: int = option(110, "training epochs", range=EPOCHS)
    batch_size: int = option(128, "global batch size", range=AT_LEAST_1)
    lr: float = option(0.1, "initial learning rate", range=POSITIVE)
    momentum: float = option(0.9, "SGD momentum", range=Range(0, 1, high_open=True))
    weight_decay: float = option(5e-4, "SGD weight decay", range=NONNEG)
    milestones: list[int] = option(
        default_factory=lambda: [100, 105],
        help="0-based epochs at which lr is multiplied by lr_gamma",
    )
    lr_gamma: float = option(0.1, "lr factor at each milestone", range=POSITIVE)
    lr_schedule: Literal["piecewise", "onecycle"] = option(
        "piecewise",
        "piecewise (lr_gamma at each milestone) or onecycle (cosine one-cycle with "
        "warm-up over lr_warmup of the epochs, per epoch, as torch's OneCycleLR)",
    )
    lr_warmup: float = option(
        0.025,
        "onecycle: fraction of the epochs spent warming up",
        range=Range(0, 1, low_open=True, high_open=True),
    )
    nesterov: bool = option(False, "Nesterov momentum")
    label_smoothing: float = option(
        0.0,
        "label smoothing of every method's cross-entropy training terms (KL terms untouched)",
        range=Range(0, 1, high_open=True),
    )
    # weight averaging: an exponential moving average of the weights, validated beside them
    ema_decay: float = option(
        0.0,
        "EMA decay D of the weights (0 = off); effective decay min(D, (1 + n)/(10 + n)) at step n",
        range=Range(0, 1, high_open=True),
    )
    ema_every: int = option(1, "update the EMA every K optimizer steps", range=AT_LEAST_1)
    select: Literal["raw", "ema"] = option(
        "raw", "which weights' validation robust accuracy selects best.pt"
    )
    select_metric: Literal["robust", "clean"] = option(
        "robust", "the validation accuracy that selects best.pt (clean for standard training)"
    )
    # generated data mixed into every batch (the DM-Improves-AT .npz format)
    aux_data: str | None = option(
        None,
        "an .npz of generated images ('image' uint8 N×32×32×3, 'label' int), read memory-mapped",
    )
    aux_fraction: float = option(
        0.0, "fraction of every batch drawn from --aux-data", range=Range(0, 1, high_open=True)
    )
    # validation (robust accuracy on the held-out split, every epoch; selects "best")
    val_steps: int = option(10, "PGD steps of the per-epoch validation", range=STEPS)
    # run
    out_dir: str = option("runs/dhat", "run directory (config.yaml, log.jsonl, checkpoints)")
    seed: int = option(0, "seed of data order, augmentation and attacks", range=SEED)
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    amp: Literal["off", "bf16", "fp16"] = option("off", "automatic mixed precision")
    channels_last: bool = option(False, "channels-last memory format")
    compile: bool = option(False, "torch.compile the model (not the attack loop)")
    log_clean_acc: bool = option(
        True, "log eval-mode clean accuracy of each batch (one extra no-grad forward per step)"
    )
    progress: bool = option(True, "progress bars")
    log_every: int = option(
        20,
        "steps between reads of the running metrics from the device, and between the "
        "per-step points sent to --loggers (0 = once per epoch)",
        range=NONNEG,
    )
    loggers: list[str] = option(
        default_factory=lambda: ["jsonl"],
        help="experiment trackers: jsonl (log.jsonl, always written), tensorboard, wandb, "
        "mlflow (optional extras: pip install 'dhat[tensorboard]')",
    )
    threads: int = option(0, "CPU threads for torch (0 = torch's default)", range=THREADS)
    preset: str | None = option(None, "the named preset this config started from")

    def __post_init__(self) -> None:
        validate_train_config(self)

    __hash__ = None  # type: ignore[assignment]  # frozen, but its dict fields are unhashable

    def hash(self) -> str:
        return config_hash(self)

    @property
    def threat(self) -> ThreatModel:
        """The run's threat model: the training attacks' (and, with `val_steps`, validation's)."""
        return threat_model("Linf", self.eps, self.step_size, self.steps)

    def method_kwargs(self) -> dict[str, Any]:
        """The method's options for `build_method`: the run's threat model (eps, step_size,
        steps) where the method has those fields, then `method_args` (typed already)."""
        valid = method_options(self.method)
        threat = {k: getattr(self, k) for k in RUN_WIDE if k in valid}
        return {**threat, **self.method_args}


def config_hash(cfg) -> str:
    """12 hex digits identifying a config (a dataclass or its dict)."""
    d = cfg if isinstance(cfg, dict) else asdict(cfg)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- validation
def check_device(name: str) -> None:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', and available here."""

    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise UserError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"--device {name}: this torch has no CUDA device (use --device cpu, or "
            "install a CUDA build of torch)"
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here")


def resolve_device(name: str):
    """The torch.device for 'auto' (CUDA when available), 'cpu', 'cuda:N', ..."""

    check_device(name)
    return torch.device(
        name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )


def validate_train_config(
    cfg: TrainConfig, where: Where = Where(), sources: dict[str, Where] | None = None
) -> None:
    """Type and range-check every field (values are coerced: '8/255' -> 0.0314), then the
    registries and the cross-field rules; called once, by `TrainConfig.__post_init__`, on
    the object being built. `sources` names where each key came from."""
    sources = sources or {}
    set_ = object.__setattr__  # the frozen object is being built: coerced values go in once
    for name, spec in specs(TrainConfig).items():
        w = sources.get(name, where)
        set_(cfg, name, coerce(spec, getattr(cfg, name), w.key(name)))
    if cfg.dataset not in list_datasets(hidden=True):  # old aliases still load, unlisted
        raise unknown_name("dataset", cfg.dataset, list_datasets())
    if cfg.method not in list_methods():
        raise unknown_name("method", cfg.method, list_methods())
    if not is_model(cfg.model):  # a registered name, package.module:factory or an entry point
        raise unknown_name("model", cfg.model, list_models())
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise unknown_name("preset", cfg.preset, PRESETS)
    run_wide = [k for k in RUN_WIDE if k in cfg.method_args]
    if run_wide:
        k = run_wide[0]
        raise UserError(
            f"{k} is the run's threat model, shared by training, validation and "
            f"evaluation: set it with --{k.replace('_', '-')} (top-level '{k}:' in "
            "YAML), not among the method's options"
        )
    m_src = sources.get("method_args", where)
    set_(cfg, "method_args", check_method_options(cfg.method, cfg.method_args, m_src))
    model_where = _arg_where(sources.get("model_args", where), "model")
    set_(cfg, "model_args", check_model_args(cfg.model, cfg.model_args, model_where))
    _check_model_builds(cfg, model_where)
    set_(
        cfg,
        "dataset_args",
        check_dataset_args(
            cfg.dataset, cfg.dataset_args, _arg_where(sources.get("dataset_args", where), "dataset")
        ),
    )
    for m in cfg.milestones:
        if m < 0:
            raise UserError(
                f"{sources.get('milestones', where).key('milestones')}: epochs are >= 0, got {m}"
            )
    if cfg.train_subset and cfg.train_subset <= cfg.val_size:
        raise UserError(
            f"--train-subset {cfg.train_subset} leaves nothing to train on after "
            f"the {cfg.val_size}-image validation split: raise it or lower --val-size"
        )
    if cfg.select == "ema" and not cfg.ema_decay:
        raise UserError("--select ema needs --ema-decay D (e.g. 0.999)")
    if bool(cfg.aux_data) != bool(cfg.aux_fraction):
        raise UserError(
            "--aux-data and --aux-fraction go together (e.g. --aux-data 1m.npz --aux-fraction 0.7)"
        )
    if cfg.aux_data:
        check_aux_file(cfg.aux_data)
        if cfg.method == "sglr":
            raise UserError(
                "sglr keeps one soft label per real training image; it cannot mix in --aux-data"
            )
        if round(cfg.aux_fraction * cfg.batch_size) >= cfg.batch_size:
            raise UserError(
                f"--aux-fraction {cfg.aux_fraction} leaves no real image in a batch "
                f"of {cfg.batch_size}"
            )
    set_(cfg, "loggers", check_loggers(cfg.loggers, sources.get("loggers", where).key("loggers")))
    check_device(cfg.device)
    check_frozen_paths(cfg.method, cfg.method_args, PRESET_HINTS.get(cfg.preset or "", ""))


def _check_model_builds(cfg: TrainConfig, where: Where) -> None:
    """Build the model on the meta device (no memory, milliseconds), so that an argument its
    factory refuses (width=0, norm=nosuch) or a Grad-CAM layer it lacks is one line now,
    before any data is read or any file written."""
    try:
        with torch.device("meta"):
            model = create_model(cfg.model, num_classes=10, **cfg.model_args)
    except UserError:  # the factory's own check names the argument
        raise
    except Exception as e:  # any other refusal by the factory: the arguments' fault
        args = ", ".join(f"{where.key(k)}={excerpt(v, 20)}" for k, v in cfg.model_args.items())
        raise UserError(
            f"model '{cfg.model}' cannot be built with {args or 'its defaults'} "
            f"({type(e).__name__}: {clip(str(e), 160)})"
        ) from None
    layer = cfg.method_args.get("cam_layer")
    if "cam_layer" in method_options(cfg.method) and (
        cfg.method_args.get("cam_model", "self") == "self"
    ):  # the run's own model gives the Grad-CAM: its layer (named or default) must exist
        check_cam_layer(model, layer, "--cam-layer")


def _arg_where(w: Where, what: str) -> Where:
    return (
        Where("key", w.source, f"--{what}-arg ")
        if w.kind == "flag"
        else Where("key", w.source, f"{what}_args.")
    )


# ----------------------------------------------------------------------------- building
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping of TrainConfig fields. Refused with one line: a missing or
    binary file, invalid YAML, more than 1 MB, or more than 100,000 values once its anchors
    are expanded (an anchor bomb is refused before anything walks it)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        raw = p.read_bytes()
        if len(raw) > MAX_YAML_BYTES:
            raise UserError(
                f"config file {p} is {len(raw)} bytes; a TrainConfig YAML is a few kB "
                f"(at most {MAX_YAML_BYTES})"
            )
        data = yaml.safe_load(raw.decode("utf-8")) or {}
    except OSError as e:
        raise UserError(f"config file {p} cannot be read ({type(e).__name__})") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {p} is not UTF-8 text (a binary file?)") from None
    except yaml.YAMLError as e:
        raise UserError(f"{p} is not valid YAML: {clip(str(e).splitlines()[0])}") from None
    except (RecursionError, ValueError) as e:  # nesting too deep; an integer too long
        raise UserError(f"{p} is not a usable config ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p} must hold a mapping of TrainConfig fields, got {excerpt(data)}")
    check_expanded_size(data, MAX_YAML_VALUES, str(p))
    for k, v in data.items():
        if not isinstance(k, str):
            raise UserError(f"{p}: keys are TrainConfig field names, got {excerpt(k)}")
        if k in ("preset", "method") and v is not None and not isinstance(v, str):
            raise UserError(f"{k} ({p}): expected a name, got {excerpt(v)}")
    return data


def _field_default(f: dataclasses.Field[Any]) -> Any:
    """A dataclass field's default value (a fresh one from its factory)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"TrainConfig field {f.name!r} has no default")


def build_train_config(
    yaml_path: str | None = None,
    preset: str | None = None,
    *,
    flags: dict[str, Any] | None = None,
    yaml_data: dict[str, Any] | None = None,
    **overrides: Any,
) -> TrainConfig:
    """defaults < preset < YAML < flags < overrides (the CLI passes only the flags given).
    Every key is checked where it is given, so an error names the flag or the YAML key.
    `yaml_data`: the file's mapping when the caller has read it already (`read_yaml`), so
    the file is read once."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if yaml_data is None:
        yaml_data = read_yaml(yaml_path) if yaml_path else {}
    data = yaml_data
    flags = flags or {}
    preset = flags.get("preset") or overrides.get("preset") or preset or data.get("preset")
    layers: list[tuple[Where, dict[str, Any]]] = []
    if preset:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise unknown_name("preset", preset, PRESETS)
        layers.append((Where("key", f"preset {preset}"), {**PRESETS[preset], "preset": preset}))
    if data:
        layers.append((Where("key", str(yaml_path)), data))
    layers += [(Where("flag"), flags), (Where("key"), overrides)]
    merged: dict[str, Any] = {}
    sources: dict[str, Where] = {}
    method = next((lay["method"] for _, lay in reversed(layers) if "method" in lay), "dhat")
    for where, layer in layers:
        for k, v in layer.items():
            if k not in known:
                raise unknown_name(
                    f"TrainConfig field{where.suffix}", where.key(k), [where.key(n) for n in known]
                )
            if (
                k == "method_args"
                and where.source.startswith("preset")
                and layer.get("method") != method
            ):
                continue  # a preset's method options do not carry over to another method
            if k in DICT_FIELDS:
                if not isinstance(v, dict) or not all(isinstance(n, str) for n in v):
                    raise UserError(
                        f"{where.key(k)}: expected a mapping of KEY: VALUE, got {excerpt(v)}"
                    )
                merged[k] = {**merged.get(k, {}), **v}
            else:
                merged[k] = v
            sources[k] = where
    if preset in PRESET_WITH_AUX and merged.get("aux_data"):
        for k, v in PRESET_WITH_AUX[preset].items():
            if k not in sources or sources[k].source.startswith("preset"):
                merged[k] = v
                sources[k] = Where("key", f"preset {preset}")
    cfg = TrainConfig.__new__(TrainConfig)
    defaults = {f.name: _field_default(f) for f in dataclasses.fields(TrainConfig)}
    for k, v in {**defaults, **merged}.items():
        object.__setattr__(cfg, k, v)
    validate_train_config(cfg, sources=sources)  # the one validation, naming each key's source
    return cfg


def save_yaml(cfg, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(asdict(cfg), sort_keys=False))


__all__ = [
    "TrainConfig",
    "build_train_config",
    "check_device",
    "resolve_device",
    "config_hash",
    "read_yaml",
    "save_yaml",
    "validate_train_config",
]

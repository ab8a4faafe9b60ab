"""`dhat train | eval | attention | report | export`: parse flags -> a config -> the Python API.

Bad input prints one line naming the fix and exits with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from typing import Any

from .config import (EvalConfig, PRESETS, TrainConfig, build_train_config, parse_key_value,
                     parse_number)
from .errors import UserError

_NUMERIC = {"eps", "step_size", "lr", "lr_gamma", "momentum", "weight_decay"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _arg_type(field: dataclasses.Field, hints: dict[str, Any]):
    """argparse type and nargs for a dataclass field."""
    t = hints[field.name]
    origin = typing.get_origin(t)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        t = args[0]
        origin = typing.get_origin(t)
    if origin is typing.Literal:
        return dict(choices=list(typing.get_args(t)))
    if t is bool:
        return dict(action=argparse.BooleanOptionalAction)
    if t in (list, dict) or origin in (list, dict):
        return None
    if t is float or field.name in _NUMERIC:
        return dict(type=parse_number)
    return dict(type=t if t in (int, str) else str)


def _method_option_fields() -> dict[str, tuple[dataclasses.Field, dict]]:
    """Every method option (union over the registry), for `dhat train --<option>`, typed by a
    method that declares it (a wrapper such as AWP does not: its base's class does)."""
    from .methods import list_methods, method_options
    from .methods.registry import _METHODS
    typed: dict[str, tuple[dataclasses.Field, dict]] = {}
    untyped: dict[str, tuple[dataclasses.Field, dict]] = {}
    for name in list_methods():
        try:
            hints = typing.get_type_hints(_METHODS[name])
        except Exception:
            hints = {}
        for fname, f in method_options(name).items():
            if fname in hints:
                typed.setdefault(fname, (f, hints))
            else:
                default = type(f.default) if f.default is not dataclasses.MISSING else str
                untyped.setdefault(fname, (f, {fname: default}))
    return {**untyped, **typed}


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (see --preset, --method)",
                       description="Train a model. Precedence: defaults < --preset < --config "
                                   "YAML < flags. Method options (e.g. --dhlr paper) go to the "
                                   "chosen method.")
    p.add_argument("--config", help="YAML file of TrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out-dir")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.add_argument("--eval-n-test", type=int, default=1000,
                   help="test images for the evaluation after training (0 = all)")
    hints = typing.get_type_hints(TrainConfig)
    g = p.add_argument_group("run settings (TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        kw = _arg_type(f, hints)
        if f.name == "preset":
            g.add_argument("--preset", choices=sorted(PRESETS), default=None)
        elif f.name in ("model_args", "dataset_args"):
            what = f.name.split("_")[0]
            g.add_argument(f"--{what}-arg", dest=f.name, action="append", default=None,
                           metavar="KEY=VALUE", help=f"{what} argument, e.g. "
                           + ("width=16" if what == "model" else "rho=0.5 (shapes)"))
        elif f.name == "milestones":
            g.add_argument("--milestones", type=int, nargs="*", default=None)
        elif kw is not None:
            g.add_argument(_flag(f.name), dest=f.name, default=None, **kw)
    mg = p.add_argument_group("method options (only those of the chosen --method apply)")
    taken = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, (f, h) in sorted(_method_option_fields().items()):
        if name in taken:
            continue
        kw = _arg_type(f, h)
        if kw is not None:
            mg.add_argument(_flag(name), dest=f"method__{name}", default=None,
                            metavar=None if "choices" in kw or "action" in kw else name.upper(), **kw)


# Subcommands other than `train`: each module has `add_parser(subparsers)` and `run(ns)`.
SUBCOMMANDS = {
    "eval": "dhat.eval.command",
    "attention": "dhat.analysis.attention",
    "report": "dhat.analysis.report",
    "export": "dhat.export",
}


def _subcommand(name: str):
    try:
        return importlib.import_module(SUBCOMMANDS[name])
    except ModuleNotFoundError as e:  # a subcommand not in this build; real import errors rise
        if e.name != SUBCOMMANDS[name]:
            raise
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dhat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    for name in SUBCOMMANDS:
        module = _subcommand(name)
        if module is not None:
            module.add_parser(sub)
    return parser


def train_config_from_args(ns: argparse.Namespace) -> TrainConfig:
    given = {k: v for k, v in vars(ns).items() if v is not None}
    method_args = {k.split("__", 1)[1]: given.pop(k) for k in list(given) if k.startswith("method__")}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in given.items() if k in fields}
    if method_args:
        overrides["method_args"] = method_args
    for key in ("model_args", "dataset_args"):
        if key in overrides:
            flag = f"--{key.split('_')[0]}-arg"
            overrides[key] = dict(parse_key_value(kv, flag) for kv in overrides[key])
    cfg = build_train_config(ns.config, **overrides)
    from .methods import method_options
    valid = method_options(cfg.method)
    stray = [k for k in method_args if k not in valid]
    if stray:
        raise UserError(f"method '{cfg.method}' has no option --{stray[0].replace('_', '-')}; "
                        f"its options: {', '.join(sorted(valid))}")
    return cfg


def cmd_train(ns: argparse.Namespace) -> None:
    from .eval import evaluate_checkpoint, format_result
    from .train import train
    cfg = train_config_from_args(ns)
    out = train(cfg, resume=ns.resume, overwrite=ns.overwrite)
    print(f"run written to {out}")
    if not ns.no_eval and (out / "best.pt").is_file():
        card = evaluate_checkpoint(EvalConfig(checkpoint=str(out / "best.pt"), n_test=ns.eval_n_test,
                                              gap_train_images=min(1000, ns.eval_n_test or 1000),
                                              device=cfg.device), progress=cfg.progress)
        print(format_result(card))
        print(f"result written to {card['path']}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        if ns.command == "train":
            cmd_train(ns)
        else:
            _subcommand(ns.command).run(ns)
        return 0
    except UserError as e:
        print(f"dhat {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dhat {ns.command}: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

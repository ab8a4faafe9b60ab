"""`dhat train`: flags -> a TrainConfig -> `dhat.train.train`, then a quick evaluation.

The chosen method's options are flags (`dhat train --method dhat --help` lists DHAT's); the
method is read from --method, else the YAML file, else the preset, else the default (dhat).
`--resume` without `--config` starts from the run's saved config.yaml.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.smoke import quick_eval_config, run_comparison, smoke_summary
from ..config import PRESETS, TrainConfig, build_train_config, read_yaml
from ..config.presets import COMPARISONS
from ..distributed import is_main_process
from ..errors import UserError, unknown_name
from ..eval import evaluate_checkpoint
from ..methods import list_methods, method_options
from ..rundir import read_log
from ..schema import OptionSpec, specs
from ..train import train
from .common import add_config_options, add_key_values, add_option, flag, given, key_values

QUICK_N = 1000
TOP_LEVEL = {f for f, s in specs(TrainConfig).items() if s.flag}


def resumed_config(config: str | None, resume: bool, out_dir: str | None) -> str | None:
    """The YAML a run starts from: --config, else with --resume the run's own saved
    config.yaml (flags on top of it are then the changes `--allow-change` checks)."""
    if config or not resume:
        return config
    saved = Path(out_dir or TrainConfig.out_dir) / "config.yaml"
    return str(saved) if saved.is_file() else None


@dataclass(frozen=True)
class YamlSource:
    """The config file these arguments name, read once (its mapping, or why it cannot be)."""

    path: str | None = None
    data: dict[str, Any] | None = None
    error: UserError | None = None

    def mapping(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return self.data or {}


def read_config_file(argv: list[str]) -> YamlSource:
    """The YAML file of `dhat train` arguments (--config, else with --resume the run's saved
    config.yaml), read once; an unreadable file's error is raised when the config is built."""
    p = argparse.ArgumentParser(add_help=False)
    for name in ("--config", "--out-dir"):
        p.add_argument(name)
    p.add_argument("--resume", action="store_true")
    ns, _ = p.parse_known_args(argv)
    path = resumed_config(ns.config, ns.resume, ns.out_dir)
    if not path:
        return YamlSource()
    try:
        return YamlSource(path, read_yaml(path))
    except UserError as e:
        return YamlSource(path, error=e)


def chosen_method(argv: list[str], source: YamlSource | None = None) -> tuple[str, bool]:
    """(the method these arguments train, whether --method was given), without validating:
    --method, else the config file's method, else its or --preset's preset's, else dhat."""
    p = argparse.ArgumentParser(add_help=False)
    for name in ("--method", "--preset"):
        p.add_argument(name)
    ns, _ = p.parse_known_args(argv)
    if ns.method:
        return ns.method, True
    data = (source or read_config_file(argv)).data or {}
    if "method" in data:
        return str(data["method"]), False
    preset = ns.preset or data.get("preset")
    if preset in PRESETS and "method" in PRESETS[preset]:
        return PRESETS[preset]["method"], False
    return TrainConfig.method, False  # the field's default (a dataclass class attribute)


def method_flags(method: str) -> dict[str, OptionSpec]:
    return {k: s for k, s in method_options(method).items() if s.flag and k not in TOP_LEVEL}


def _method_listing() -> str:
    """Every method's options, grouped by method (the help epilog without --method)."""
    lines = [
        "method options (only those of the chosen --method apply; "
        "`dhat train --method NAME --help` shows one method's):"
    ]
    for name in list_methods():
        if name.startswith("_"):
            continue
        opts = method_flags(name)
        lines.append(f"  {name}:" + ("" if opts else " (no options)"))
        for spec in opts.values():
            lines.append(f"    {flag(spec.name):<20} {spec.describe()}")
    return "\n".join(lines)


def add_parser(sub, argv: list[str]) -> None:
    source = read_config_file(argv)
    method, explicit = chosen_method(argv, source)
    p = sub.add_parser(
        "train",
        help="train a model (see --preset, --method)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model. Precedence: defaults < --preset < --config YAML < flags. "
        "Budgets are pixel fractions: --eps 8/255.",
        epilog=None if explicit else _method_listing(),
    )
    p.add_argument("--config", help="YAML file of TrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out-dir")
    p.add_argument(
        "--allow-change",
        default=None,
        metavar="NAMES",
        help="with --resume: settings that may differ from the run's, comma-separated "
        "(e.g. lr,lr_gamma or a method option such as lambda1); logged to "
        "events.jsonl",
    )
    p.add_argument(
        "--no-eval", action="store_true", help="skip the quick evaluation after training"
    )
    g = p.add_argument_group("run settings (TrainConfig)")
    add_config_options(g, TrainConfig, skip=("preset",))
    g.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"a named preset ({', '.join(sorted([*PRESETS, *COMPARISONS]))}; "
        "smoke-compare trains and compares several methods)",
    )
    add_key_values(g, "model", "width=16")
    add_key_values(g, "dataset", "rho=0.5")
    if method in list_methods():
        mg = p.add_argument_group(f"options of method '{method}'")
        for name, spec in method_flags(method).items():
            add_option(mg, spec, dest=f"method__{name}")
    p.set_defaults(run=run, method_for_parse=method, config_file=source)


def train_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given as flags (method options and KEY=VALUE lists parsed)."""
    flags: dict[str, Any] = given(ns, TOP_LEVEL | {"preset"})
    method_args = {
        k.split("__", 1)[1]: v
        for k, v in vars(ns).items()
        if k.startswith("method__") and v is not None
    }
    if method_args:
        flags["method_args"] = method_args
    for key in ("model_args", "dataset_args"):
        if getattr(ns, key):
            flags[key] = key_values(getattr(ns, key), key.split("_")[0])
    return flags


def train_config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """The resolved, frozen config of parsed `dhat train` arguments (the YAML file was read
    once, when the parser was built)."""
    flags = train_flags(ns)
    source: YamlSource = ns.config_file
    return build_train_config(source.path, flags=flags, yaml_data=source.mapping())


def unknown_option_error(arg: str, method: str) -> UserError:
    """For `--beta` under a method without it: say which methods have it."""
    name = arg.split("=")[0]
    owners = [
        m
        for m in list_methods()
        if not m.startswith("_") and name in {flag(k) for k in method_flags(m)}
    ]
    if owners:
        opts = ", ".join(flag(k) for k in method_flags(method)) or "none"
        return UserError(
            f"method '{method}' has no option {name} (it is an option of "
            f"{', '.join(owners)}); its options: {opts}"
        )
    known = [flag(k) for k in TOP_LEVEL | set(method_flags(method))]
    return unknown_name("option of `dhat train`", name, known)


def run(ns: argparse.Namespace) -> None:
    if ns.preset in COMPARISONS:
        run_comparison_preset(ns)
        return
    cfg = train_config_from_args(ns)
    allow = [a.strip() for a in (ns.allow_change or "").split(",") if a.strip()]
    if allow and not ns.resume:
        raise UserError("--allow-change goes with --resume")
    out = train(cfg, resume=ns.resume, overwrite=ns.overwrite, allow_change=allow)
    if not is_main_process():  # under torchrun, rank 0 alone reports and evaluates
        return
    print(f"run written to {out}")
    best = out / "best.pt"
    if ns.no_eval or not best.is_file():
        return
    print(f"quick evaluation of {best.name} (up to {QUICK_N} images per split):")
    card = evaluate_checkpoint(quick_eval_config(best, cfg), progress=cfg.progress)
    print(smoke_summary(card, read_log(out / "log.jsonl")))
    print(f"result card (every number): {card['path']}")


def run_comparison_preset(ns: argparse.Namespace) -> None:
    """`--preset smoke-compare`: several methods on the same data, one table and one figure."""
    if ns.resume or ns.allow_change or ns.no_eval:
        raise UserError(
            f"--preset {ns.preset} trains and evaluates several runs: drop "
            "--resume/--allow-change/--no-eval"
        )
    flags = train_flags(ns)
    res = run_comparison(
        ns.preset,
        flags,
        yaml_path=ns.config,
        overwrite=ns.overwrite,
        progress=flags.get("progress", True),
    )
    print(res["markdown"])
    print(f"table -> {res['table']}" + (f"\nfigure -> {res['png']}" if res["png"] else ""))

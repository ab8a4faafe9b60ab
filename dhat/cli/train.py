"""`dhat train`: flags -> a TrainConfig -> `dhat.train.train`, then a quick evaluation.

The chosen method's options are flags (`dhat train --method dhat --help` lists DHAT's); the
method is read from --method, else the YAML file, else the preset, else the default (dhat).
`--resume` without `--config` starts from the run's saved config.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import PRESETS, TrainConfig, build_train_config, read_yaml
from ..config.presets import COMPARISONS
from ..errors import UserError
from ..methods import list_methods, method_options
from ..schema import OptionSpec, specs
from .common import add_config_options, add_option, flag, given, key_values

QUICK_N = 1000
TOP_LEVEL = {f for f, s in specs(TrainConfig).items() if s.flag}


def resumed_config(config: str | None, resume: bool, out_dir: str | None) -> str | None:
    """The YAML a run starts from: --config, else with --resume the run's own saved
    config.yaml (flags on top of it are then the changes `--allow-change` checks)."""
    if config or not resume:
        return config
    saved = Path(out_dir or TrainConfig.out_dir) / "config.yaml"
    return str(saved) if saved.is_file() else None


def chosen_method(argv: list[str]) -> tuple[str, bool]:
    """(the method these arguments train, whether --method was given), without validating."""
    p = argparse.ArgumentParser(add_help=False)
    for name in ("--method", "--preset", "--config", "--out-dir"):
        p.add_argument(name)
    p.add_argument("--resume", action="store_true")
    ns, _ = p.parse_known_args(argv)
    if ns.method:
        return ns.method, True
    ns.config = resumed_config(ns.config, ns.resume, ns.out_dir)
    if ns.config:
        try:
            data = read_yaml(ns.config)
            if "method" in data:
                return str(data["method"]), False
            ns.preset = ns.preset or data.get("preset")
        except UserError:
            pass
    if ns.preset in PRESETS and "method" in PRESETS[ns.preset]:
        return PRESETS[ns.preset]["method"], False
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
    method, explicit = chosen_method(argv)
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
    g.add_argument(
        "--model-arg",
        dest="model_args",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="architecture argument, e.g. width=16",
    )
    g.add_argument(
        "--dataset-arg",
        dest="dataset_args",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="dataset argument, e.g. rho=0.5",
    )
    if method in list_methods():
        mg = p.add_argument_group(f"options of method '{method}'")
        for name, spec in method_flags(method).items():
            add_option(mg, spec, dest=f"method__{name}")
    p.set_defaults(run=run, method_for_parse=method)


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
    flags = train_flags(ns)
    return build_train_config(
        resumed_config(ns.config, ns.resume, flags.get("out_dir")), flags=flags
    )


def unknown_option_error(arg: str, method: str) -> UserError:
    """For `--beta` under a method without it: say which methods have it."""
    from ..errors import unknown_name

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
    from ..analysis.smoke import quick_eval_config, smoke_summary
    from ..distributed import is_main_process
    from ..eval import evaluate_checkpoint
    from ..rundir import read_log
    from ..train import train

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
    from ..analysis.smoke import run_comparison

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

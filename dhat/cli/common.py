"""What every subcommand shares: a parser whose errors are one line with exit status 2, and
flags generated from a config dataclass's typed options (values are passed on as written;
the config validates them, so a bad value names its flag)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

from ..data import list_datasets
from ..errors import clip
from ..methods import list_methods
from ..models import list_models
from ..schema import OptionSpec, coerce, parse_key_value, specs


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`dhat CMD: error: ...`, a long value cut
    short) and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {clip(message, 400)}", file=sys.stderr)
        raise SystemExit(2)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_option(
    group, spec: OptionSpec, dest: str | None = None, names: list[str] | None = None
) -> None:
    """One flag for `spec`: --x/--no-x for booleans, choices for enumerations, N values for
    lists, else one value kept as text (typed later, with the flag's name in any error)."""
    kw: dict[str, Any] = dict(dest=dest or spec.name, default=None, help=spec.describe())
    if spec.type is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif spec.choices:
        kw["choices"] = [str(c) for c in spec.choices]
        kw["metavar"] = "{" + ",".join(map(str, spec.choices)) + "}"
    elif spec.type is list or getattr(spec.type, "__origin__", None) is list:
        kw["nargs"] = "*" if spec.name == "milestones" else "+"
        kw["metavar"] = (
            spec.name.upper().rstrip("S") if spec.name.endswith("s") else spec.name.upper()
        )
    elif names:  # a registry name: show the choices, check them in the config (nearest name)
        kw["metavar"] = "{" + ",".join(names) + "}"
    else:
        kw["metavar"] = spec.name.upper()
    group.add_argument(flag(spec.name), **kw)


def registry_names() -> dict[str, list[str]]:
    return {
        "dataset": list_datasets(),
        "model": list_models(),  # or package.module:factory (dhat.models.registry.is_model)
        "method": [m for m in list_methods() if not m.startswith("_")],
    }


def add_config_options(group, cls: type, skip: Iterable[str] = ()) -> dict[str, OptionSpec]:
    """Flags for every flag-able field of dataclass `cls` (but `skip`); returns their specs."""
    added = {}
    names = registry_names()
    for name, spec in specs(cls).items():
        if spec.flag and name not in skip:
            add_option(group, spec, names=names.get(name))
            added[name] = spec
    return added


def given(ns: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among `names` that the user gave (argparse leaves the others None)."""
    return {k: getattr(ns, k) for k in names if getattr(ns, k, None) is not None}


def from_flags(cls: type, flags: dict[str, Any], **fixed: Any) -> Any:
    """`cls(**fixed, **flags)` with every flag typed first, so an error names the flag."""
    sp = specs(cls)
    return cls(**fixed, **{k: coerce(sp[k], v, flag(k)) for k, v in flags.items()})


def add_key_values(group, what: str, example: str, help: str | None = None) -> None:
    """`--<what>-arg KEY=VALUE` (repeatable) into `<what>_args`: the one spelling of the
    architecture and dataset argument flags (`key_values` parses them)."""
    group.add_argument(
        f"--{what}-arg",
        dest=f"{what}_args",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help=help or f"{'architecture' if what == 'model' else what} argument, e.g. {example}",
    )


def key_values(items: list[str] | None, what: str) -> dict[str, str]:
    """['width=16', ...] -> {'width': '16'} (typed later, against the factory)."""
    return dict(parse_key_value(kv, f"--{what}-arg") for kv in (items or []))

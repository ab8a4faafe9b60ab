"""Typed options: one parser for numbers and fractions, and one validator for every option.

Every configurable value in dhat is a dataclass field (TrainConfig, EvalConfig, a method's
options) whose type and metadata say what it accepts. `option(default, help, ...)` declares
one; `coerce` turns what a user wrote (a flag's string, a YAML value, a Python value) into
that type and checks its range, raising a one-line `UserError` that names where the value
came from ("--omega", "omega (my.yaml)").

Numbers: 0.031, 1e-3 and fractions such as 8/255 are all accepted wherever a float is. A
pixel budget (ε, ε_inv, a step size) is a float in (0, 1]: "8" is refused with the hint
"8/255", so every command reads "8" the same way.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass, field
from fractions import Fraction
from typing import Any, Literal

from .errors import UserError, unknown_name


# ----------------------------------------------------------------------------- parsing
def parse_number(v: Any, where: str = "value") -> float:
    """A float from 0.031, '0.031', '1e-3' or '8/255'; bools and other text are refused."""
    if isinstance(v, bool):
        raise UserError(f"{where}: expected a number, got {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        try:
            return float(s)
        except ValueError:
            pass
        try:
            return float(Fraction(s))
        except (ValueError, ZeroDivisionError):
            pass
    raise UserError(f"{where}: not a number: {v!r} (write e.g. 0.031, 1e-3 or 8/255)")


def parse_budget(v: Any, where: str = "eps") -> float:
    """A pixel budget in (0, 1], e.g. 8/255; '8' is refused with the hint '8/255'."""
    x = parse_number(v, where)
    if not 0 < x <= 1 or math.isnan(x):
        hint = f"; did you mean {v}/255?" if x > 1 else ""
        raise UserError(f"{where} must lie in (0, 1] in pixel units (e.g. 8/255), got {v}{hint}")
    return x


def parse_int(v: Any, where: str = "value") -> int:
    if isinstance(v, bool):
        raise UserError(f"{where}: expected an integer, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise UserError(f"{where}: expected an integer, got {v!r}")


def parse_bool(v: Any, where: str = "value") -> bool:
    """True/False, or the strings true/false (a YAML yes/no arrives as a bool already)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise UserError(f"{where}: expected true or false, got {v!r}")


# ----------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class Range:
    """An interval; `low_open`/`high_open` exclude the end points."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            return False
        return True

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return (
            f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
            f"{')' if self.high_open else ']'}"
        )


BUDGET = Range(0, 1, low_open=True)  # ε, ε_inv, step sizes: (0, 1]
UNIT = Range(0, 1)  # probabilities, thresholds: [0, 1]
NONNEG = Range(0)
POSITIVE = Range(0, low_open=True)
AT_LEAST_1 = Range(1)


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    range: Range | None = None,
    budget: bool = False,
    default_factory: Any = MISSING,
    flag: bool = True,
    kind: str = "",
) -> Any:
    """A dataclass field that is a user option: its help text, its range, whether it is a
    pixel budget (then its range is (0, 1] and '8' gets the '8/255' hint), whether the CLI
    offers it as a flag, and its `kind` ("checkpoint": a path the trainer loads as a frozen
    model unless it is 'self')."""
    meta = {
        "help": help,
        "range": BUDGET if budget else range,
        "budget": budget,
        "flag": flag,
        "kind": kind,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class OptionSpec:
    """What one option accepts: from a dataclass field's type hint and metadata."""

    name: str
    type: Any
    default: Any
    help: str = ""
    range: Range | None = None
    budget: bool = False
    flag: bool = True
    optional: bool = False
    kind: str = ""

    @property
    def choices(self) -> tuple | None:
        return typing.get_args(self.type) if typing.get_origin(self.type) is Literal else None

    def describe(self) -> str:
        """'the Grad-CAM threshold ω (default 0.1, in [0, 1])'."""
        bits = []
        if self.default is not MISSING and self.default is not None:
            bits.append(f"default {format_value(self.default)}")
        if self.choices:
            bits.append("one of " + "|".join(str(c) for c in self.choices))
        elif self.range is not None:
            bits.append(f"in {self.range}" if self.range.high is not None else str(self.range))
        return f"{self.help} ({', '.join(bits)})" if bits else self.help


def format_value(v: Any) -> str:
    if isinstance(v, float):
        frac = Fraction(v).limit_denominator(255)
        if frac.denominator == 255 and abs(float(frac) - v) < 1e-12:
            return f"{frac.numerator}/255"
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def _unwrap_optional(t: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(t)) == 2:
            return args[0], True
    return t, False


def specs(cls: type) -> dict[str, OptionSpec]:
    """Every field of dataclass `cls` as an OptionSpec (fields named `_*` are skipped)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        t, optional = _unwrap_optional(hints.get(f.name, Any))
        default = (
            f.default
            if f.default is not MISSING
            else (f.default_factory() if f.default_factory is not MISSING else MISSING)
        )
        m = f.metadata
        out[f.name] = OptionSpec(
            f.name,
            t,
            default,
            m.get("help", ""),
            m.get("range"),
            m.get("budget", False),
            m.get("flag", True),
            optional,
            m.get("kind", ""),
        )
    return out


def coerce(spec: OptionSpec, value: Any, where: str) -> Any:
    """`value` as the option's type, range-checked; a one-line UserError naming `where`."""
    if value is None:
        if spec.optional:
            return None
        raise UserError(f"{where}: a value is required")
    t = spec.type
    if spec.choices:
        if value not in spec.choices:
            raise UserError(
                f"{where}: must be one of {', '.join(map(str, spec.choices))}, got {value!r}"
            )
        return value
    if t is bool:
        return parse_bool(value, where)
    if t is float:
        x = parse_budget(value, where) if spec.budget else parse_number(value, where)
    elif t is int:
        x = parse_int(value, where)
    elif t is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected text, got {value!r}")
        return value
    elif typing.get_origin(t) is list or t is list:
        items = value if isinstance(value, (list, tuple)) else None
        if items is None:
            raise UserError(
                f"{where}: expected a list (e.g. [100, 105] in YAML, or several "
                f"values after the flag), got {value!r}"
            )
        (inner,) = typing.get_args(t) or (Any,)
        item_spec = dataclasses.replace(spec, type=inner, optional=False)
        return [coerce(item_spec, v, where) if inner is not Any else v for v in items]
    elif typing.get_origin(t) is dict or t is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping of KEY: VALUE, got {value!r}")
        return dict(value)
    else:
        return value
    if spec.range is not None and not spec.budget and x not in spec.range:
        raise UserError(
            f"{where} must be {spec.range}"
            if spec.range.high is None
            else f"{where} must lie in {spec.range}, got {value}"
        )
    return x


def coerce_all(cls: type, data: dict[str, Any], where: Where) -> dict[str, Any]:
    """Coerce every key of `data` against `cls`'s specs; an unknown key names the nearest."""
    known = specs(cls)
    out = {}
    for k, v in data.items():
        if k not in known:
            raise unknown_name(f"option{where.suffix}", where.key(k), [where.key(n) for n in known])
        out[k] = coerce(known[k], v, where.key(k))
    return out


@dataclass(frozen=True)
class Where:
    """How to name a key in an error: as a flag (--eps-inv) or as a YAML/API key."""

    kind: Literal["flag", "key"] = "key"
    source: str = ""
    prefix: str = ""

    def key(self, name: str) -> str:
        if self.kind == "flag":
            return "--" + name.replace("_", "-")
        inside = f" in {self.source}" if self.source else ""
        return f"{self.prefix}{name}" + (f" ({inside.strip()})" if inside else "")

    @property
    def suffix(self) -> str:
        return f" in {self.source}" if self.source and self.kind == "key" else ""


def parse_key_value(text: str, flag: str = "--model-arg") -> tuple[str, str]:
    """'width=16' -> ('width', '16'); the value is typed later, against the factory."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"{flag} wants KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def coerce_like(default: Any, value: Any, where: str) -> Any:
    """A factory argument typed by its default's type (int, float, bool, str, None: as given)."""
    if isinstance(default, bool):
        return parse_bool(value, where)
    if isinstance(default, int):
        return parse_int(value, where)
    if isinstance(default, float):
        return parse_number(value, where)
    if isinstance(default, str) or default is None:
        if isinstance(value, str) and default is None:
            for parse in (parse_int, parse_number):
                try:
                    return parse(value, where)
                except UserError:
                    pass
            if value.lower() in ("true", "false"):
                return value.lower() == "true"
        return value
    return value


def check_factory_args(
    kind: str, name: str, known: dict[str, Any], args: dict[str, Any], where: Where
) -> dict[str, Any]:
    """`args` of a model or dataset factory, checked against its keyword arguments `known`
    (name: default; nearest name for a typo) and typed by their defaults (width=16 -> int)."""
    out = {}
    for k, v in args.items():
        if k not in known:
            if not known:
                raise UserError(f"{kind} '{name}' takes no arguments, got {where.key(k)}")
            raise unknown_name(f"argument of {kind} '{name}'", k, known)
        out[k] = coerce_like(known[k], v, where.key(k))
    return out

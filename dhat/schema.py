"""Typed options: one parser for numbers and fractions, and one validator for every option.

Every configurable value in dhat is a dataclass field (TrainConfig, EvalConfig, a method's
options) whose type and metadata say what it accepts. `option(default, help, ...)` declares
one; `coerce` turns what a user wrote (a flag's string, a YAML value, a Python value) into
that type and checks its range, raising a one-line `UserError` that names where the value
came from ("--omega", "omega (my.yaml)").

Numbers: 0.031, 1e-3 and fractions such as 8/255 are all accepted wherever a float is. A
pixel budget (ε, ε_inv, a step size) is a float in (0, 1]: "8" is refused with the hint
"8/255", so every command reads "8" the same way. NaN and ±inf are refused wherever a float
is parsed, and integers must fit in 64 bits; an error shows at most a short excerpt of the
value it refuses.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field
from fractions import Fraction
from typing import Any, Literal

from .errors import UserError, clip, excerpt, unknown_name


# ----------------------------------------------------------------------------- parsing
def parse_number(v: Any, where: str = "value") -> float:
    """A finite float from 0.031, '0.031', '1e-3' or '8/255'; bools, NaN, ±inf and other
    text are refused."""
    if isinstance(v, bool):
        raise UserError(f"{where}: expected a number, got {v!r}")
    x: float | None = None
    try:
        if isinstance(v, (int, float)):
            x = float(v)
        elif isinstance(v, str):
            s = v.strip()
            try:
                x = float(s)
            except ValueError:
                try:
                    x = float(Fraction(s))
                except (ValueError, ZeroDivisionError):
                    pass
    except OverflowError:  # an integer or fraction beyond the float range
        x = math.inf
    if x is None:
        raise UserError(f"{where}: not a number: {excerpt(v)} (write e.g. 0.031, 1e-3 or 8/255)")
    if not math.isfinite(x):
        raise UserError(f"{where}: must be a finite number, got {excerpt(v)}")
    return x


def parse_budget(v: Any, where: str = "eps") -> float:
    """A pixel budget in (0, 1], e.g. 8/255; '8' is refused with the hint '8/255'."""
    x = parse_number(v, where)
    if not 0 < x <= 1 or math.isnan(x):
        hint = f"; did you mean {v}/255?" if x > 1 else ""
        raise UserError(f"{where} must lie in (0, 1] in pixel units (e.g. 8/255), got {v}{hint}")
    return x


INT64_MAX = 2**63 - 1


def parse_int(v: Any, where: str = "value") -> int:
    """An integer from 16, 16.0 or '16' that fits in 64 bits (what torch and numpy hold)."""
    if isinstance(v, bool):
        raise UserError(f"{where}: expected an integer, got {v!r}")
    x: int | None = None
    if isinstance(v, int):
        x = v
    elif isinstance(v, float) and v.is_integer():
        x = int(v)
    elif isinstance(v, str):
        try:
            x = int(v.strip())
        except ValueError:  # not an integer, or more digits than Python converts
            pass
    if x is None:
        raise UserError(f"{where}: expected an integer, got {excerpt(v)}")
    if not -INT64_MAX - 1 <= x <= INT64_MAX:
        raise UserError(
            f"{where}: {excerpt(v, 30)} does not fit in a 64-bit integer (|value| <= {INT64_MAX})"
        )
    return x


def parse_bool(v: Any, where: str = "value") -> bool:
    """True/False, or the strings true/false (a YAML yes/no arrives as a bool already)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise UserError(f"{where}: expected true or false, got {excerpt(v)}")


# ----------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class Range:
    """An interval; `low_open`/`high_open` exclude the end points."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False  # NaN compares false with everything; ±inf is no setting
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            return False
        return True

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return (
            f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
            f"{')' if self.high_open else ']'}"
        )


def _num(x: float | None) -> str:
    """An integer bound in full (9223372036854775806, not 9.22337e+18); a float as %g."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def max_threads() -> int:
    """The most CPU threads an option may ask for: 4 per CPU of this machine, at least 64
    (torch segfaults for some very large counts; a config file stays portable)."""
    return max(64, 4 * (os.cpu_count() or 1))


BUDGET = Range(0, 1, low_open=True)  # ε, ε_inv, step sizes: (0, 1]
UNIT = Range(0, 1)  # probabilities, thresholds: [0, 1]
NONNEG = Range(0)
POSITIVE = Range(0, low_open=True)
AT_LEAST_1 = Range(1)
SEED = Range(0, INT64_MAX - 1)  # torch.manual_seed's range; the trainer also seeds with seed + 1
THREADS = Range(0, max_threads())  # 0 = torch's default
EPOCHS = Range(1, 10_000)
STEPS = Range(1, 10_000)  # attack steps (PGD, validation)
MAX_IMAGES = 5_000_000  # a generated dataset's size argument (n_train, n_test): 15 GB at 32 px


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
                f"{where}: must be one of {', '.join(map(str, spec.choices))}, got {excerpt(value)}"
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
            raise UserError(f"{where}: expected text, got {excerpt(value)}")
        return value
    elif typing.get_origin(t) is list or t is list:
        items = value if isinstance(value, (list, tuple)) else None
        if items is None:
            raise UserError(
                f"{where}: expected a list (e.g. [100, 105] in YAML, or several "
                f"values after the flag), got {excerpt(value)}"
            )
        (inner,) = typing.get_args(t) or (Any,)
        item_spec = dataclasses.replace(spec, type=inner, optional=False)
        return [coerce(item_spec, v, where) if inner is not Any else v for v in items]
    elif typing.get_origin(t) is dict or t is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping of KEY: VALUE, got {excerpt(value)}")
        return dict(value)
    else:
        return value
    if spec.range is not None and not spec.budget and x not in spec.range:
        got = clip(value, 30)
        raise UserError(
            f"{where} must be {spec.range}, got {got}"
            if spec.range.high is None
            else f"{where} must lie in {spec.range}, got {got}"
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


def check_expanded_size(data: Any, limit: int, where: str) -> None:
    """A one-line UserError if `data` holds more than `limit` values once shared references
    are expanded (as a walk, a repr or json.dumps would see them): a few hundred bytes of
    nested YAML anchors (or pickle memo references) expand to billions. Stops at `limit`."""
    seen, stack = 0, [data]
    while stack:
        v = stack.pop()
        seen += 1
        if seen > limit:
            raise UserError(
                f"{where} expands to more than {limit} values (nested YAML anchors or "
                "shared references?); a configuration holds a few dozen"
            )
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


def parse_key_value(text: str, flag: str = "--model-arg") -> tuple[str, str]:
    """'width=16' -> ('width', '16'); the value is typed later, against the factory."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"{flag} wants KEY=VALUE, got {excerpt(text)}")
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
    (name: default; nearest name for a typo) and typed by their defaults (width=16 -> int).
    A dataset's image counts (integer arguments named n_*) lie in [0, MAX_IMAGES]."""
    out = {}
    for k, v in args.items():
        if not isinstance(k, str):
            raise UserError(f"{kind} '{name}': argument names are text, got {excerpt(k)}")
        if k not in known:
            if not known:
                raise UserError(f"{kind} '{name}' takes no arguments, got {where.key(k)}")
            raise unknown_name(f"argument of {kind} '{name}'", k, known)
        out[k] = coerce_like(known[k], v, where.key(k))
        count = isinstance(out[k], int) and not isinstance(out[k], bool)
        if kind == "dataset" and k.startswith("n_") and count:
            if out[k] not in Range(0, MAX_IMAGES):
                raise UserError(
                    f"{where.key(k)}: an image count in [0, {MAX_IMAGES}], got {out[k]}"
                )
    return out

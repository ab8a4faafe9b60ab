"""Method registry and factory: `create_method("dhat", dhlr="paper")`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import unknown_name
from ..schema import OptionSpec, Where, coerce, specs
from .base import Method

_METHODS: dict[str, Callable[..., Method]] = {}


def register_method(name: str):
    """Register a Method dataclass (or a class with `option_specs()`) under `name`."""

    def wrap(cls):
        _METHODS[name] = cls
        return cls

    return wrap


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_options(name: str) -> dict[str, OptionSpec]:
    """The options a method accepts, typed (for a wrapper such as AWP: its own and its base's)."""
    if name not in _METHODS:
        raise unknown_name("method", name, _METHODS)
    target = _METHODS[name]
    own = getattr(target, "option_specs", None)
    return own() if own is not None else specs(target)  # type: ignore[arg-type]  # a dataclass


def check_method_options(
    name: str, options: dict[str, Any], where: Where = Where()
) -> dict[str, Any]:
    """`options` typed and range-checked against the method's options; an unknown name gets
    the nearest valid one."""
    valid = method_options(name)
    out = {}
    for key, value in options.items():
        if key not in valid:
            raise unknown_name(
                f"option of method '{name}'",
                where.key(key),
                [where.key(k) for k in valid if valid[k].flag],
            )
        out[key] = coerce(valid[key], value, where.key(key))
    return out


def create_method(name: str, **options: Any) -> Method:
    """Build a registered method; options are typed and checked as the CLI checks them."""
    return build_method(name, check_method_options(name, options))


def build_method(name: str, options: dict[str, Any]) -> Method:
    """Build a registered method from options that are already typed and checked (a
    resolved `TrainConfig`'s, or `check_method_options`'s output): no second coercion."""
    if name not in _METHODS:
        raise unknown_name("method", name, _METHODS)
    return _METHODS[name](**options)

"""Method registry and factory: `create_method("dhat", dhlr="paper")`."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable

from ..errors import UserError, unknown_name
from .base import Method

_METHODS: dict[str, Callable[..., Method]] = {}


def register_method(name: str):
    """Register a Method dataclass (or a factory returning one) under `name`."""
    def wrap(cls):
        _METHODS[name] = cls
        return cls
    return wrap


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_options(name: str) -> dict[str, dataclasses.Field]:
    """The option fields a method accepts (for a wrapper: its own and its base's)."""
    if name not in _METHODS:
        raise unknown_name("method", name, _METHODS)
    target = _METHODS[name]
    opts = getattr(target, "option_fields", None)
    if opts is not None:
        return opts()
    return {f.name: f for f in dataclasses.fields(target)}


def create_method(name: str, **options: Any) -> Method:
    """Build a registered method; an unknown option names the nearest valid one."""
    valid = method_options(name)
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"method '{name}' has no option '{key}'.{hint} "
                            f"Options: {', '.join(sorted(valid))}")
    return _METHODS[name](**options)

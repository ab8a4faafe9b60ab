"""User-facing errors: the CLI prints one line and exits with status 2."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from typing import Any


class UserError(Exception):
    """Bad input that the user can fix; the message names the fix."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 4, 4, 4
_SHORT.maxset = _SHORT.maxfrozenset = 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 40, 40, 24


def excerpt(value: Any, limit: int = 60) -> str:
    """A repr of `value` of at most `limit` characters, cheap on any input (a huge string,
    an integer of a million digits, a YAML anchor bomb's nested lists are never expanded)."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # a repr can fail, e.g. an int beyond Python's digit limit
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: object, limit: int = 200) -> str:
    """`text` on one line, cut to `limit` characters (an exception's message in an error)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unknown_name(kind: str, name: Any, known: Iterable[str]) -> UserError:
    """A `UserError` for an unknown registry name, with the nearest known name."""
    known = sorted(known)
    if not isinstance(name, str):
        return UserError(f"{kind}: expected a name, got {excerpt(name)}. Known: {', '.join(known)}")
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown {kind} '{clip(name, 60)}'.{hint} Known: {', '.join(known)}")

"""User-facing errors: the CLI prints one line and exits with status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input that the user can fix; the message names the fix."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UserError:
    """A `UserError` for an unknown registry name, with the nearest known name."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown {kind} '{name}'.{hint} Known: {', '.join(known)}")

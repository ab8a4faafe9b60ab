"""`dhat train | eval | attention | report | export`: flags -> a config -> the Python API.

Bad input prints one line naming the fix and exits with status 2; no traceback, no file
written before the whole configuration is valid. An unexpected error is one line too (add
--debug for its traceback); Ctrl-C and SIGTERM stop the command as an interrupt; output
piped into a reader that quits (`| head`) is dropped silently while the command finishes.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

from .. import __version__
from ..errors import UserError, clip
from . import attention, evaluate, export, report, train
from .common import Parser

COMMANDS = {
    "train": train,
    "eval": evaluate,
    "attention": attention,
    "report": report,
    "export": export,
}


def build_parser(argv: list[str] | None = None) -> Parser:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = Parser(prog="dhat", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an unexpected error, print its traceback (may go anywhere on the line)",
    )
    parser.add_argument("--version", action="version", version=f"dhat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub, argv[1:] if argv[:1] == ["train"] else [])
    return parser


class _PipeSafeStdout:
    """stdout that drops what it cannot deliver once its reader has gone (`dhat ... | head`):
    no BrokenPipeError reaches the command, which finishes its work (writes its result)."""

    def __init__(self, stream: Any):
        self._stream = stream
        self.broken = False

    def _broke(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)  # the buffered rest goes nowhere, so
            os.dup2(devnull, self._stream.fileno())  # the flush at exit cannot fail either
            os.close(devnull)

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._broke()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._broke()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _pipe_safe_stdout() -> Iterator[None]:
    real = sys.stdout
    sys.stdout = _PipeSafeStdout(real)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        sys.stdout = real


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[dict[str, int]]:
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does: the trainer stops at a consistent
    state) and is recorded in the yielded dict; a second one during the clean-up is ignored."""
    seen: dict[str, int] = {}

    def handler(signum: int, _frame: Any) -> None:
        if not seen:
            seen["signum"] = signum
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield seen
        return
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Warnings print as one line `dhat CMD: warning: ...` (not file:line + source)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        kind = "" if category is UserWarning else f" [{category.__name__}]"
        with contextlib.suppress(OSError):
            print(f"dhat {command}: warning: {clip(message, 400)}{kind}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv else ""
    prefix = f"dhat {command}".rstrip()
    with _pipe_safe_stdout(), _sigterm_as_interrupt() as term, _one_line_warnings(command):
        try:
            parser = build_parser(argv)  # chooses train's method: inside the handlers
            if command == "train":  # an unknown option may be another method's: say whose
                ns, extra = parser.parse_known_args(argv)
                if extra:
                    opt = next((a for a in extra if a.startswith("--")), extra[0])
                    raise train.unknown_option_error(opt, ns.method_for_parse)
            else:
                ns = parser.parse_args(argv)
            ns.run(ns)
            return 0
        except UserError as e:
            if debug:
                traceback.print_exc()
            print(f"{prefix}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            hint = "; continue it with --resume" if getattr(e, "resumable", False) else ""
            if term:
                print(f"{prefix}: terminated (SIGTERM){hint}", file=sys.stderr)
                return 128 + term["signum"]
            print(f"{prefix}: interrupted{hint}", file=sys.stderr)
            return 130
        except BrokenPipeError:  # stdout is guarded; this is another pipe: stay silent
            return 141
        except Exception as e:  # a bug or an unforeseen input: one line, traceback on demand
            if debug:
                traceback.print_exc()
            print(
                f"{prefix}: error: unexpected {type(e).__name__}: {clip(e, 300)}"
                + ("" if debug else " (rerun with --debug for the traceback)"),
                file=sys.stderr,
            )
            return 2


__all__ = ["main", "build_parser"]

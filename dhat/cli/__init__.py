"""`dhat train | eval | attention | report | export`: flags -> a config -> the Python API.

Bad input prints one line naming the fix and exits with status 2; no traceback, no file
written before the whole configuration is valid.
"""

from __future__ import annotations

import sys

from ..errors import UserError
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
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub, argv[1:] if argv[:1] == ["train"] else [])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    command = argv[0] if argv else ""
    try:
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
        print(f"dhat {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        hint = "; continue it with --resume" if getattr(e, "resumable", False) else ""
        print(f"dhat {command}: interrupted{hint}", file=sys.stderr)
        return 130


__all__ = ["main", "build_parser"]

"""`dhat eval CHECKPOINT`: evaluate one checkpoint into a JSON result and print a table."""
from __future__ import annotations

import argparse

from ..config import EvalConfig, parse_number
from .evaluate import evaluate_checkpoint, format_result


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (clean, PGD, CW, robust gap)")
    p.add_argument("checkpoint", help="a last.pt / best.pt written by `dhat train`")
    p.add_argument("--weights", default="model", help="'model' or an extra model, e.g. fawa")
    p.add_argument("--attacks", nargs="+", default=None,
                   help="clean pgd10 pgd20 pgd50 cw (pgdK/cwK for K steps)")
    p.add_argument("--eps", type=parse_number, default=None, help="e.g. 8/255")
    p.add_argument("--step-size", type=parse_number, default=None)
    p.add_argument("--n-test", type=int, default=None, help="first N test images (0 = all)")
    p.add_argument("--gap-train-images", type=int, default=None)
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="result JSON path")


def run(ns: argparse.Namespace) -> None:
    given = {k: v for k, v in vars(ns).items() if v is not None and k != "command"}
    card = evaluate_checkpoint(EvalConfig(**given))
    print(format_result(card))
    print(f"result written to {card['path']}")

"""`dhat eval CHECKPOINT` (or `--weights-file FILE --model NAME`): evaluate one model, print
its table, then write its JSON result card (to a named fallback path if that fails)."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..config import EvalConfig
from ..schema import specs
from .common import Parser, add_config_options, from_flags, given, key_values

FIELDS = {f for f, s in specs(EvalConfig).items() if s.flag}


def add_parser(sub, argv: list[str]) -> Parser:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint or a plain state dict (clean, PGD, CW, AA, robust gap)",
        description="Evaluate a model: accuracy under attack on the first N test images, the "
        "robust gap, sanity checks, optionally AutoAttack ('aa'), robustness curves "
        "and background-reliance measures; writes a JSON result card. Budgets are "
        "pixel fractions: --eps 8/255.",
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="a last.pt / best.pt written by `dhat train` (or use --weights-file)",
    )
    g = p.add_argument_group("evaluation settings (EvalConfig)")
    add_config_options(g, EvalConfig)
    g.add_argument(
        "--model-arg",
        dest="model_args",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="the weights file's architecture argument, e.g. width=64",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=True,
        help="no progress bars",
    )
    p.set_defaults(run=run)
    return p


def config_from_args(ns: argparse.Namespace) -> EvalConfig:
    kw = given(ns, FIELDS)
    if ns.model_args:
        kw["model_args"] = key_values(ns.model_args, "model")
    return from_flags(EvalConfig, kw, checkpoint=ns.checkpoint or "")


def run(ns: argparse.Namespace) -> None:
    from ..eval import evaluate_checkpoint, format_card, save_card
    from ..eval.evaluate import default_card_path
    from ..eval.sanity import SanityWarning

    cfg = config_from_args(ns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        card = evaluate_checkpoint(
            cfg, progress=ns.progress, write=False, log=print, check_out=True
        )
    for w in caught:  # sanity failures are in the table below; other warnings go to stderr
        if not issubclass(w.category, SanityWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    print(format_card(card))  # the numbers first: a failing write must not lose them
    if card.get("sanity_failed"):
        print(
            f"dhat eval: WARNING: sanity checks failed: {', '.join(card['sanity_failed'])} "
            "(see docs/sanity_checks.md)",
            file=sys.stderr,
        )
    out = default_card_path(cfg, card["checkpoint"])
    if "curves" in card:
        from ..eval.evaluate import plot_card_curves

        plot_card_curves(card, out.with_name(f"{out.stem}_curves.png"))
        if card["curves"].get("png"):
            print(f"curves plotted to {card['curves']['png']}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = save_card(card, out)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"result written to {path}")

"""`dhat eval CHECKPOINT` (or `--weights-file FILE --model NAME`): evaluate one model, print
its table, then write its JSON result card (to a named fallback path if that fails)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..config import EvalConfig
from ..distributed import cleanup_distributed
from ..errors import UserError
from ..eval.card import format_card
from ..eval.evaluate import run_evaluation
from ..eval.output import curves_png_path, default_card_path, write_evaluation
from ..eval.records import records_path
from ..eval.sanity import SanityWarning
from ..io import check_output_path, same_file
from ..models.weights import sidecar_path
from ..schema import specs
from .common import Parser, add_config_options, add_key_values, from_flags, given, key_values

FIELDS = {f for f, s in specs(EvalConfig).items() if s.flag}


def add_parser(sub, argv: list[str]) -> Parser:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint or a plain state dict (clean, PGD, CW, AA, robust gap)",
        description="Evaluate a model: accuracy under attack on the first N test images, the "
        "robust gap, sanity checks, optionally AutoAttack ('aa') or its single attacks, the "
        "per-image worst case over all attacks, robustness curves and background-reliance "
        "measures; writes a JSON result card. Budgets are pixel fractions: --eps 8/255. "
        "Resumable: every finished attack batch is saved beside the card "
        "(<card>.eval-state.pt, removed once the card is written); after an interruption, "
        "even kill -9 inside AutoAttack, the same command with --resume finishes with the "
        "card an uninterrupted run writes. Sharded: `torchrun --nproc-per-node N -m dhat.cli "
        "eval ...` splits every attack's batches across N processes (gloo on CPU, NCCL on "
        "GPU) and rank 0 writes one card, identical to one process's for the same images "
        "and seed (attack randomness is drawn per batch from the seed, the attack and the "
        "batch index).",
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="a last.pt / best.pt written by `dhat train` (or use --weights-file)",
    )
    g = p.add_argument_group("evaluation settings (EvalConfig)")
    add_config_options(g, EvalConfig)
    add_key_values(
        g, "model", "width=64", "the weights file's architecture argument, e.g. width=64"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the state file beside the card (refused if it is another "
        "evaluation's: other checkpoint, attacks, images, seed or eps)",
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


def check_outputs(cfg: EvalConfig) -> None:
    """The card, its records and its curves plot are refused (one line, before any work) if
    one would overwrite an input (the checkpoint, the weights file or its sidecar) or another
    output, or if the card is not named .json / the records .npz."""
    inputs = [cfg.checkpoint, cfg.weights_file]
    if cfg.weights_file:
        inputs.append(str(sidecar_path(cfg.weights_file)))
    card = default_card_path(cfg, cfg.weights_file or cfg.checkpoint)
    check_output_path(card, inputs, [".json"], flag="--out", writable=False)
    if cfg.records != "off":
        rec = Path(cfg.records) if cfg.records else records_path(card)
        if same_file(rec, card):
            raise UserError(f"--records {rec} is the result card's path; name another file")
        check_output_path(rec, inputs, [".npz"], flag="--records", writable=False)
    if cfg.curves:
        png = curves_png_path(card)
        check_output_path(png, inputs, flag="--out (its curves plot)", writable=False)


def run(ns: argparse.Namespace) -> None:
    """`dhat eval`: evaluate, print the table, then write the card through `write_evaluation`,
    the write path `evaluate_checkpoint` uses too."""
    cfg = config_from_args(ns)
    check_outputs(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = run_evaluation(
            cfg, progress=ns.progress, log=print, check_out=True, resume=ns.resume, shard=True
        )
    if ev.group is not None:  # the attacks' collectives are over
        cleanup_distributed(ev.group)
    if not ev.main:  # another rank of a sharded evaluation: rank 0 prints and writes
        return
    for w in caught:  # sanity failures are in the table below; other warnings go to stderr
        if not issubclass(w.category, SanityWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    card = ev.card
    print(format_card(card))  # the numbers first: a failing write must not lose them
    if card.get("sanity_failed"):
        print(
            f"dhat eval: WARNING: sanity checks failed: {', '.join(card['sanity_failed'])} "
            "(see docs/sanity_checks.md)",
            file=sys.stderr,
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_evaluation(ev, cfg)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if card["curves"].get("png") if "curves" in card else False:
        print(f"curves plotted to {card['curves']['png']}")
    if card.get("records"):
        print(f"per-image records written to {path.parent / card['records']['file']}")
    print(f"result written to {path}")

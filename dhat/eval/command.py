"""`dhat eval CHECKPOINT` (or `dhat eval --weights-file FILE --model NAME`): evaluate one model
into a JSON result card and print a table. Sanity checks run by default (`--no-sanity`)."""
from __future__ import annotations

import argparse
import sys
import warnings

from ..config import EvalConfig, parse_key_value, parse_number
from .evaluate import evaluate_checkpoint, format_result


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint or a plain state dict (clean, PGD, CW, AA, robust gap)",
        description="Evaluate a model: accuracy under attack on the first N test images, the "
                    "robust gap, sanity checks, optionally AutoAttack ('aa') and robustness curves; "
                    "writes a JSON result card.")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="a last.pt / best.pt written by `dhat train` (or use --weights-file)")
    p.add_argument("--weights", default=None, help="'model' or an extra model, e.g. fawa")
    p.add_argument("--attacks", nargs="+", default=None,
                   help="clean pgd10 pgd20 pgd50 cw aa (pgdK/cwK for K steps; aa = standard "
                        "AutoAttack, needs `pip install --no-deps pyautoattack`)")
    p.add_argument("--eps", type=parse_number, default=None, help="e.g. 8/255")
    p.add_argument("--step-size", type=parse_number, default=None, help="PGD step, e.g. 2/255")
    p.add_argument("--n-test", type=int, default=None, help="first N test images (0 = all)")
    p.add_argument("--aa-n", type=int, default=None,
                   help="AutoAttack on the first N test images (default: --n-test)")
    p.add_argument("--gap-train-images", type=int, default=None,
                   help="robust gap: PGD-10 on this many training images (0 = skip)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True,
                   help="no progress bars")
    p.add_argument("--out", default=None, help="result JSON path (default: eval_<name>.json beside "
                                                "the checkpoint)")
    g = p.add_argument_group("curves and sanity checks")
    g.add_argument("--curves", action="store_true", default=None,
                   help="accuracy vs eps (PGD-20, CW; 2..16/255) and vs PGD steps (1..50): "
                        "into the JSON and a PNG beside it")
    g.add_argument("--curves-n", type=int, default=None, help="curves on the first N test images "
                                                               "(default 1000; 0 = --n-test)")
    g.add_argument("--no-sanity", dest="sanity", action="store_false", default=None,
                   help="skip the sanity checks (docs/sanity_checks.md)")
    g.add_argument("--sanity-n", type=int, default=None, help="images for the sanity checks (100)")
    t = p.add_argument_group("third-party weights (a plain state dict instead of a checkpoint)")
    t.add_argument("--weights-file", default=None,
                   help=".pt/.pth (loaded weights-only; {'state_dict'|'model': ...} wrappers and "
                        "'module.' prefixes accepted) or .safetensors")
    t.add_argument("--model", default=None, help="registered architecture, e.g. resnet18")
    t.add_argument("--model-arg", dest="model_args", action="append", default=None,
                   metavar="KEY=VALUE", help="architecture argument, e.g. width=64")
    t.add_argument("--num-classes", type=int, default=None,
                   help="default: the rows of the final linear layer")
    t.add_argument("--normalization", default=None,
                   help="if the state dict has no mean/std: none (mean 0, std 1), cifar10, "
                        "cifar100, or MEAN,MEAN,MEAN/STD,STD,STD")


def options_from_args(ns: argparse.Namespace) -> EvalConfig:
    given = {k: v for k, v in vars(ns).items() if v is not None and k not in ("command", "progress")}
    if "model_args" in given:
        given["model_args"] = dict(parse_key_value(kv) for kv in given["model_args"])
    if given.get("checkpoint") is None:
        given["checkpoint"] = ""
    return EvalConfig(**given)


def run(ns: argparse.Namespace) -> None:
    opts = options_from_args(ns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        card = evaluate_checkpoint(opts, progress=getattr(ns, "progress", True))
    from .sanity import SanityWarning
    for w in caught:  # sanity failures are in the table below; other warnings go to stderr
        if not issubclass(w.category, SanityWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    print(format_result(card))
    if card.get("sanity_failed"):
        print(f"dhat eval: WARNING: sanity checks failed: {', '.join(card['sanity_failed'])} "
              "(see docs/sanity_checks.md)", file=sys.stderr)
    if card.get("curves", {}).get("png"):
        print(f"curves plotted to {card['curves']['png']}")
    print(f"result written to {card['path']}")

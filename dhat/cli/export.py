"""`dhat export CKPT`: a checkpoint's weights as a plain safetensors state dict + JSON sidecar,
or (`--robustbench`) as a RobustBench submission: checkpoint + model card."""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..export import export_checkpoint, export_robustbench, parse_card_fields
from ..schema import parse_key_value
from .common import Parser

# (flag, model-card field, help): the paper behind the model, which only the user knows
PAPER_FLAGS = (
    ("--paper", "name", "the paper's title (default: unknown)"),
    ("--authors", "authors", "the paper's authors, in its order (default: unknown)"),
    ("--venue", "venue", "where it appeared, e.g. 'ICCV 2025' (default: unknown)"),
    ("--paper-link", "link", "the paper's URL (default: unknown)"),
    (
        "--reported",
        "reported",
        "the paper's own AutoAttack accuracy in percent (default: empty)",
    ),
)


def add_parser(sub, argv: list[str]) -> Parser:
    p = sub.add_parser(
        "export",
        help="export a checkpoint's weights as safetensors + JSON sidecar, or for RobustBench",
        description="A plain, portable state dict of a trained model "
        "(normalisation inside; inputs in [0, 1]).",
    )
    p.add_argument("checkpoint", help="a last.pt / best.pt written by `dhat train`")
    p.add_argument(
        "--out",
        default=None,
        help="the .safetensors path (default: beside the checkpoint); the sidecar is "
        "the same path with .json. With --robustbench: the folder that gets "
        "models/ and model_info/ (default: robustbench/ beside the checkpoint)",
    )
    p.add_argument("--weights", default="model", help="'model' or an extra model, e.g. fawa, ema")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace existing output files (a .json that `dhat export` did not write is "
        "never replaced)",
    )
    rb = p.add_argument_group("RobustBench")
    rb.add_argument(
        "--robustbench",
        action="store_true",
        help="write OUT/models/<dataset>/Linf/NAME.pt ({'state_dict': ...}, RobustBench's "
        "key names) and the model card OUT/model_info/<dataset>/Linf/NAME.json, "
        "filled from the checkpoint's `dhat eval` result card (it must include "
        "AutoAttack: --attacks clean pgd10 cw aa); the sidecar NAME.json holds the "
        "class the weights load into strictly (robustbench_code)",
    )
    rb.add_argument(
        "--card",
        default=None,
        help="the result card (default: eval_<checkpoint>.json beside the checkpoint)",
    )
    rb.add_argument(
        "--model-name",
        default=None,
        help="RobustBench's model name, e.g. Zhang2025Towards (default: <run>_<checkpoint>)",
    )
    for flag, key, what in PAPER_FLAGS:
        metavar = {"name": "TITLE", "link": "URL", "reported": "PERCENT"}.get(key, key.upper())
        rb.add_argument(flag, default=None, metavar=metavar, help=what)
    rb.add_argument(
        "--rb-field",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="set a model-card field: link, name, authors, venue, reported, footnote, "
        "additional_data, number_forward_passes, dataset, architecture",
    )
    p.set_defaults(run=run)
    return p


def run(ns: argparse.Namespace) -> None:
    paper = {key: getattr(ns, flag[2:].replace("-", "_")) for flag, key, _ in PAPER_FLAGS}
    if not ns.robustbench:
        given = [
            f
            for f, v in (
                ("--card", ns.card),
                ("--model-name", ns.model_name),
                ("--rb-field", ns.rb_field),
                *((flag, paper[key]) for flag, key, _ in PAPER_FLAGS),
            )
            if v
        ]
        if given:
            raise UserError(f"{given[0]} belongs to --robustbench")

        out, side = export_checkpoint(ns.checkpoint, ns.out, ns.weights, force=ns.force)
        print(f"weights written to {out}")
        print(f"metadata written to {side}")
        return

    fields = parse_card_fields(dict(parse_key_value(kv, "--rb-field") for kv in ns.rb_field or []))
    for flag, key, _ in PAPER_FLAGS:
        if paper[key] is not None:
            if key in fields:
                raise UserError(f"{flag} and --rb-field {key}= both set it: pass one")
            fields[key] = paper[key]
    paths = export_robustbench(
        ns.checkpoint,
        ns.out,
        ns.weights,
        card=ns.card,
        model_name=ns.model_name,
        fields=fields,
        force=ns.force,
    )
    print(f"weights written to {paths['weights']} (sidecar {paths['sidecar'].name})")
    print(f"model card written to {paths['model_info']}")

"""`dhat report RUN_DIR_OR_JSON ...`: result cards side by side (Markdown, CSV or LaTeX) and a
figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.report import (
    BACKGROUND_COLUMNS,
    DEFAULT_COLUMNS,
    FORMATS,
    format_table,
    load_cards,
    paired_table,
    plot_report,
)
from ..errors import UserError
from ..io import check_output_path, same_file, write_text
from .common import Parser

SUFFIXES = {"md": [".md", ".markdown", ".txt"], "csv": [".csv", ".txt"], "latex": [".tex", ".txt"]}


def add_parser(sub, argv: list[str]) -> Parser:
    p = sub.add_parser(
        "report",
        help="compare result cards in a table (Markdown, CSV or LaTeX) and a plot",
        description="Result cards side by side, as a table like the paper's, with each "
        "column's image count and, on request, 95 %% intervals.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN_DIR_OR_JSON",
        help="run directories (their eval_*.json) or result JSON files",
    )
    p.add_argument("--out", default=None, help="write the table here (default: stdout)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="md",
        help="md: Markdown (default); csv: a row per card, each column with its interval "
        "(KEY_lo, KEY_hi) and image count (KEY_n), always; latex: a booktabs tabular",
    )
    p.add_argument(
        "--intervals",
        action="store_true",
        help="show each value's 95 %% interval in the md and latex tables: Wilson for an "
        "accuracy under attack, the card's bootstrap interval for the robust gap and the "
        "background measures (csv always has them)",
    )
    p.add_argument("--plot", default=None, metavar="PATH", help="also write a PNG figure")
    p.add_argument(
        "--columns",
        default=None,
        help="comma-separated: clean, pgdK, cw, cwK, aa, gap, bg_gap, bg_gap_pgd10, "
        "acc:SPLIT, pgd10:SPLIT, share, share_null, share_gain, scene_map, fg_iou, bg_iou, "
        f"fg_iou_inv, bg_iou_inv (default: {','.join(DEFAULT_COLUMNS)}, plus bg_gap, share, "
        "share_null, share_gain, fg_iou for cards with background measures)",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="LABEL",
        help="also print each row's paired difference against this row (same images, 95 %% "
        "interval from the cards' per-image records; rows sharing a label are seeds)",
    )
    p.add_argument("--labels", nargs="+", default=None, help="one row label per card, in order")
    p.add_argument("--bold-best", action="store_true", help="bold the best value per column")
    p.add_argument(
        "--no-notes",
        dest="notes",
        action="store_false",
        help="the table only, without the notes under it",
    )
    p.set_defaults(run=run)
    return p


def check_outputs(ns: argparse.Namespace) -> None:
    """--out (the table) and --plot (PNG) are refused, before any card is read, if one would
    overwrite an input card (given, or an eval_*.json of a given run folder) or the other,
    has the wrong suffix, or lies where nothing can be written."""
    inputs: list[Path] = []
    for p in map(Path, ns.inputs):
        inputs += sorted(p.glob("eval_*.json")) if p.is_dir() else [p]
    if ns.out:
        check_output_path(ns.out, inputs, SUFFIXES[ns.format], flag="--out")
    if ns.plot:
        if ns.out and same_file(ns.plot, ns.out):
            raise UserError(f"--plot {ns.plot} is also --out; name another file")
        check_output_path(ns.plot, inputs, [".png"], flag="--plot")


def run(ns: argparse.Namespace) -> None:
    if ns.reference and ns.format != "md":
        raise UserError("--reference prints a Markdown table: drop --format or pass --format md")
    check_outputs(ns)
    rows = load_cards(ns.inputs)
    if ns.labels:
        if len(ns.labels) != len(rows):
            raise UserError(f"--labels: {len(ns.labels)} labels for {len(rows)} cards")
        rows = [(label, card) for label, (_, card) in zip(ns.labels, rows)]
    if ns.columns:
        columns = [c.strip() for c in ns.columns.split(",") if c.strip()]
    else:
        columns = list(DEFAULT_COLUMNS)
        if any(card.get("background") for _, card in rows):
            columns += [c for c in BACKGROUND_COLUMNS if c != "bg_gap_pgd10"]
    text = format_table(
        rows, columns, ns.format, bold_best=ns.bold_best, notes=ns.notes, intervals=ns.intervals
    )
    if ns.reference:
        text += "\n" + paired_table(rows, ns.reference, columns)
    if ns.out:
        write_text(ns.out, text)
        print(f"table written to {ns.out}")
    else:
        print(text, end="")
    if ns.plot:
        print(f"plot written to {plot_report(rows, ns.plot, columns)}")

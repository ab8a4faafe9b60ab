"""Result cards side by side: a Markdown table like the paper's (Clean, PGD-10, CW, AA, Robust
Gap; accuracies in %), with the image count of every column, and a figure.

A run directory contributes every `eval_*.json` in it; a JSON file is one card (as written by
`dhat eval`). Every card is validated on reading. Rows are labelled `method (run)`, with the
checkpoint name added where one run has several cards.

Columns: every registered attack (clean, pgdK, cw, cwK, apgd-ce, apgd-t, fab-t, square, aa;
`dhat.attacks.registry`), worst (per-image worst case), gap (robust gap) and, for cards with
background-reliance
measures, bg_gap / bg_gap_pgd10 (mixed_same − mixed_rand), acc:SPLIT / pgd10:SPLIT (accuracy
on a split), share / share_null / share_gain (object share of the Grad-CAM, its shuffled-
mask null and share − null), scene_map (background share of the scene class's map − its
null), fg_iou / bg_iou (natural images, mixed_rand) and fg_iou_inv / bg_iou_inv (inverse
images), each optionally :SPLIT.

`interval` gives each number's 95 % interval in the table's units: the bootstrap interval the
card stores (background measures, attention, robust gap), a Wilson score interval for an
accuracy under attack (the card holds its image count n and the fraction k/n), and a
bootstrap over the per-image records for `scene_map`. `markdown_table(intervals=True)`,
`csv_table` and `latex_table` show them.

`paired_table` compares every row with a reference row on the same images: the paired
difference of each column, from the cards' per-image records, with a 95 % interval; rows
sharing a label are the seeds of one method, and their interval includes seed variation
(`dhat.analysis.paired`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..attacks.registry import find_attack
from ..errors import UserError
from ..eval.background import bootstrap_indices, mean_ci
from ..eval.card import read_card
from ..eval.curves import figure, plot_curves
from ..eval.records import card_records
from ..io import atomic_write
from .paired import hierarchical_bootstrap, paired_values

DEFAULT_COLUMNS = ("clean", "pgd10", "cw", "aa", "gap")
BACKGROUND_COLUMNS = ("bg_gap", "bg_gap_pgd10", "share", "share_null", "share_gain", "fg_iou")
ATTENTION_COLUMNS = {  # column -> the card's attention measure (natural images)
    "share": "object_share",
    "share_null": "object_share_null",
    "share_gain": "object_share_minus_null",
    "fg_iou": "fg_iou",
    "bg_iou": "bg_iou",
    "fg_iou_null": "fg_iou_null",
    "bg_iou_null": "bg_iou_null",
}
IOU_DEFAULT_SPLIT = "mixed_rand"


def column_title(key: str) -> str:
    titles = {
        "gap": "Robust Gap",
        "bg_gap": "BG-gap",
        "bg_gap_pgd10": "BG-gap (PGD-10)",
        "fg_iou": "fg IoU",
        "bg_iou": "bg IoU",
        "fg_iou_inv": "fg IoU (x̌)",
        "bg_iou_inv": "bg IoU (x̌)",
        "share": "object share",
        "share_null": "share null",
        "share_gain": "share − null",
        "scene_map": "scene map on bg − null",
        "fg_iou_null": "fg IoU null",
        "bg_iou_null": "bg IoU null",
    }
    base, _, split = key.partition(":")
    if base in titles:
        return titles[base] + (f" {split}" if split else "")
    if base == "acc":
        return split
    if base == "worst":
        return "Worst case"
    attack = find_attack(base)
    if attack is not None:
        return f"{attack.title} {split}".strip()
    return key


def load_cards(paths: Sequence[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """[(label, card)] for run directories (every eval_*.json) and JSON files, in order."""
    found: list[tuple[Path, dict]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(p.glob("eval_*.json"))
            if not files:
                raise UserError(f"{p} holds no eval_*.json: run `dhat eval {p}/best.pt` first")
            found += [(f, read_card(f)) for f in files]
        elif p.is_file():
            found.append((p, read_card(p)))
        else:
            raise UserError(f"{p} does not exist")
    per_run: dict[str, int] = {}
    for f, card in found:
        run = _run_name(f, card)
        per_run[run] = per_run.get(run, 0) + 1
    out = []
    for f, card in found:
        run = _run_name(f, card)
        what = card.get("method") or card.get("model") or "model"
        extra = []
        if per_run[run] > 1:
            extra.append(Path(card.get("checkpoint") or f).stem)
        if card.get("weights", "model") not in ("model", None):
            extra.append(str(card["weights"]))
        inside = ", ".join([run, *extra]) if run != what else ", ".join(extra)
        out.append((f"{what} ({inside})" if inside else what, card))
    seen: dict[str, int] = {}
    for i, (label, card) in enumerate(out):  # identical labels: number them
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            out[i] = (f"{label} #{seen[label]}", card)
    return out


def _run_name(f: Path, card: dict[str, Any]) -> str:
    src = Path(card.get("checkpoint") or f)
    return src.parent.name or f.parent.name or "."


def _entry(card: dict[str, Any], key: str) -> tuple[Any, float] | None:
    """The card's stored entry behind a column and its factor to the table's units: a
    {"value", "ci"} dict, or a plain fraction (an accuracy under attack); None when absent.
    (`scene_map`, a difference of two entries, has none.)"""
    base, _, split = key.partition(":")
    if base == "gap":
        g = card.get("robust_gap")
        return None if g is None else ({"value": g["gap"], "ci": g.get("ci")}, 100)
    b = card.get("background")
    if base in ("bg_gap", "bg_gap_pgd10"):
        v = (b or {}).get("bg_gap", {}).get("clean" if base == "bg_gap" else "pgd10")
        return None if v is None else (v, 100)
    if base == "scene_map":
        return None
    if base in ATTENTION_COLUMNS and base not in ("fg_iou", "bg_iou"):
        att = (b or {}).get("attention", {}).get(split or IOU_DEFAULT_SPLIT, {}).get("natural", {})
        m = att.get(ATTENTION_COLUMNS[base])
        return None if m is None else (m, 1)
    if base in ("fg_iou", "bg_iou", "fg_iou_inv", "bg_iou_inv"):
        att = (b or {}).get("attention", {}).get(split or IOU_DEFAULT_SPLIT, {})
        kind = (
            next((k for k in att if k.startswith("inverse")), None)
            if base.endswith("_inv")
            else "natural"
        )
        m = att.get(kind or "", {}).get(base.removesuffix("_inv"))
        return None if m is None else (m, 1)
    if split:
        v = (b or {}).get("accuracy", {}).get(split, {}).get("clean" if base == "acc" else base)
        return None if v is None else (v, 100)
    if base == "worst":
        w = card.get("worst_case")
        return None if w is None else (w["accuracy"], 100)
    v = card["accuracy"].get(key)
    return None if v is None else (v, 100)


def value(card: dict[str, Any], key: str) -> float | None:
    """A column's value (accuracies and gaps in %, IoU as a fraction; None when absent)."""
    base, _, split = key.partition(":")
    if base == "scene_map":
        b = card.get("background")
        att = (b or {}).get("attention", {}).get(split or IOU_DEFAULT_SPLIT, {}).get("natural", {})
        if "scene_bg_share" not in att:
            return None
        return att["scene_bg_share"]["value"] - att["scene_bg_share_null"]["value"]
    e = _entry(card, key)
    if e is None:
        return None
    entry, factor = e
    return factor * (entry["value"] if isinstance(entry, dict) else entry)


Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95 % with the default z)."""
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(card: dict[str, Any], key: str) -> tuple[float, float] | None:
    """A column's 95 % interval in the table's units: the card's stored bootstrap interval,
    a Wilson interval for an accuracy under attack (its image count n and fraction k/n), else
    a bootstrap over the card's per-image records (`scene_map`); None where there is none."""
    e = _entry(card, key)
    if e is not None:
        entry, factor = e
        if not isinstance(entry, dict):
            n = count(card, key)
            if not n:
                return None
            lo, hi = wilson(round(entry * n), n)
            return factor * lo, factor * hi
        if entry.get("ci") is not None:
            lo, hi = entry["ci"]
            return factor * lo, factor * hi
    if value(card, key) is None:
        return None
    ci = _records_interval(card, key)
    factor = 1 if _is_fraction(key) else 100
    return None if ci is None else (factor * ci[0], factor * ci[1])


def _records_interval(card: dict[str, Any], key: str) -> tuple[float, float] | None:
    """The bootstrap interval (the card's n_boot and seed) of the per-image values behind a
    column, from its records, as fractions; None without readable records or with unpaired
    terms."""
    try:
        records = card_records(card)
        terms = record_terms(key)
    except UserError:
        return None
    if any(name not in records for _, name in terms):
        return None
    arrays = [records[name] for _, name in terms]
    if len({len(a) for a in arrays}) != 1:
        return None
    per = torch.zeros(len(arrays[0]), dtype=torch.float64)
    for (sign, _), a in zip(terms, arrays):
        per += sign * torch.as_tensor(a, dtype=torch.float64)
    b = card.get("background") or {}
    idx = bootstrap_indices(len(per), int(b.get("n_boot", 1000)), int(card.get("seed", 0)))
    lo, hi = mean_ci(per, idx)["ci"]
    return lo, hi


def count(card: dict[str, Any], key: str) -> int | None:
    """How many images a column's number was measured on."""
    base = key.partition(":")[0]
    if base == "gap":
        return (card.get("robust_gap") or {}).get("n_train")
    if base == "worst":
        return (card.get("worst_case") or {}).get("n")
    attack = find_attack(base) if ":" not in key else None
    if attack is not None:
        if key not in card["accuracy"]:
            return None
        if key in card.get("n_images", {}):
            return card["n_images"][key]
        return card.get("n_aa") if attack.images == "aa" else card.get("n_test")  # older cards
    return (card.get("background") or {}).get("n")


def _is_fraction(key: str) -> bool:
    base = key.partition(":")[0]
    return "iou" in base or base in ATTENTION_COLUMNS or base == "scene_map"


def _lower_is_better(key: str) -> bool:
    return key.partition(":")[0] in ("gap", "bg_gap", "bg_gap_pgd10", "bg_iou", "bg_iou_inv")


FORMATS = ("md", "csv", "latex")


def _grid(rows, columns, bold_best: bool):
    """What every table format shows: the column heads (with n where all rows share it),
    and per row and column (value text, its image count where rows differ, the value, its
    interval, bold) or None where the card lacks the column."""
    vals = [[value(card, c) for c in columns] for _, card in rows]
    counts = [[count(card, c) for c in columns] for _, card in rows]
    heads, per_cell = [], []
    for j, c in enumerate(columns):
        ns = {counts[i][j] for i in range(len(rows)) if vals[i][j] is not None}
        per_cell.append(len(ns) > 1)
        n = next(iter(ns)) if len(ns) == 1 else None
        heads.append((column_title(c), n))
    best = []
    for j, c in enumerate(columns):
        col = [x for x in (v[j] for v in vals) if x is not None]
        best.append(None if len(col) < 2 else (min(col) if _lower_is_better(c) else max(col)))
    cells: list[list[dict[str, Any] | None]] = []
    for i, (_, card) in enumerate(rows):
        row: list[dict[str, Any] | None] = []
        for j, (c, x) in enumerate(zip(columns, vals[i])):
            if x is None:
                row.append(None)
                continue
            b = best[j]
            row.append(
                {
                    "text": f"{x:.3f}" if _is_fraction(c) else f"{x:.2f}",
                    "n": counts[i][j] if per_cell[j] else None,
                    "value": x,
                    "ci": interval(card, c),
                    "bold": bold_best and b is not None and math.isclose(x, b),
                }
            )
        cells.append(row)
    return heads, cells


def _ci_text(cell: dict[str, Any], column: str) -> str:
    if cell["ci"] is None:
        return ""
    d = 3 if _is_fraction(column) else 2
    lo, hi = cell["ci"]
    return f"[{lo:.{d}f}, {hi:.{d}f}]"


def _cell_texts(
    row: Sequence[dict[str, Any] | None],
    columns: Sequence[str],
    intervals: bool,
    missing: str,
    bold: str,
    ci: str,
) -> list[str]:
    """One table row's cells as text: `missing` for an absent value, the value with its
    image count where the cards differ, wrapped in the `bold` template when it is the best
    and followed by its interval in the `ci` template with `intervals`."""
    out = []
    for c, cell in zip(columns, row):
        if cell is None:
            out.append(missing)
            continue
        s = cell["text"] + (f" ({cell['n']})" if cell["n"] is not None else "")
        s = bold.format(s) if cell["bold"] else s
        text = _ci_text(cell, c) if intervals else ""
        out.append(f"{s} {ci.format(text)}" if text else s)
    return out


def markdown_table(
    rows: Sequence[tuple[str, dict[str, Any]]],
    columns: Sequence[str] = DEFAULT_COLUMNS,
    *,
    bold_best: bool = False,
    notes: bool = True,
    intervals: bool = False,
) -> str:
    """The comparison table: one row per card, accuracies and gaps in % (2 decimals), IoU as
    fractions (3 decimals), '–' where a card lacks the column. Each column's image count is in
    its header (or in each cell where the cards differ). `bold_best` bolds the best value per
    column; `intervals` adds each value's 95 % interval ('[lo, hi]', see `interval`). Notes
    under the table say what was measured."""
    heads, cells = _grid(rows, columns, bold_best)
    head = [t + (f" (n={n})" if n else "") for t, n in heads]
    lines = ["| Method | " + " | ".join(head) + " |", "|---|" + "---:|" * len(columns)]
    for (label, card), row in zip(rows, cells):
        out = _cell_texts(row, columns, intervals, "–", "**{}**", "{}")
        mark = " †" if card.get("sanity_failed") else ""
        lines.append(f"| {label}{mark} | " + " | ".join(out) + " |")
    if notes:
        lines.append("")
        lines += _notes(rows, columns, intervals)
    return "\n".join(lines) + "\n"


def csv_table(
    rows: Sequence[tuple[str, dict[str, Any]]], columns: Sequence[str] = DEFAULT_COLUMNS
) -> str:
    """The table as CSV for a spreadsheet or a plotting script: a row per card; per column
    its value in the table's units (unrounded), its 95 % interval (`KEY_lo`, `KEY_hi`) and
    its image count (`KEY_n`); empty where absent; then the failed sanity checks."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["method", *(f"{c}{s}" for c in columns for s in ("", "_lo", "_hi", "_n")), "sanity_failed"]
    )
    _, cells = _grid(rows, columns, False)
    for (label, card), row in zip(rows, cells):
        out: list[Any] = [label]
        for c, cell in zip(columns, row):
            if cell is None:
                out += ["", "", "", ""]
                continue
            lo, hi = cell["ci"] if cell["ci"] is not None else ("", "")
            out += [_num(cell["value"]), _num(lo), _num(hi), count(card, c) or ""]
        out.append(";".join(card.get("sanity_failed", [])))
        w.writerow(out)
    return buf.getvalue()


def _num(x: float | str) -> str:
    return x if isinstance(x, str) else f"{x:.10g}"


LATEX_TEXT = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "−": "$-$",
    "–": "--",
    "ε": r"$\varepsilon$",
    "∞": r"$\infty$",
    "†": r"$^\dagger$",
    "x̌": r"$\check{x}$",
    "·": r"$\cdot$",
}


def latex_escape(text: str) -> str:
    """Text for a LaTeX document: its special characters escaped, the symbols dhat writes
    (−, –, ε, ∞, †, x̌, ·) as LaTeX."""
    out, i = [], 0
    while i < len(text):
        two = text[i : i + 2]
        if two in LATEX_TEXT:
            out.append(LATEX_TEXT[two])
            i += 2
            continue
        out.append(LATEX_TEXT.get(text[i], text[i]))
        i += 1
    return "".join(out)


def latex_table(
    rows: Sequence[tuple[str, dict[str, Any]]],
    columns: Sequence[str] = DEFAULT_COLUMNS,
    *,
    bold_best: bool = False,
    notes: bool = True,
    intervals: bool = False,
) -> str:
    """The Markdown table's content as a booktabs `tabular` (\\usepackage{booktabs}): the
    same values, counts and marks; intervals in a smaller size; '--' where absent; the notes
    as LaTeX comments under it."""
    heads, cells = _grid(rows, columns, bold_best)
    head = [latex_escape(t) + (f" ($n$={n})" if n else "") for t, n in heads]
    lines = [
        "\\begin{tabular}{l" + "r" * len(columns) + "}",
        "\\toprule",
        "Method & " + " & ".join(head) + " \\\\",
        "\\midrule",
    ]
    for (label, card), row in zip(rows, cells):
        out = _cell_texts(row, columns, intervals, "--", "\\textbf{{{}}}", "{{\\scriptsize {}}}")
        mark = " $^\\dagger$" if card.get("sanity_failed") else ""
        lines.append(f"{latex_escape(label)}{mark} & " + " & ".join(out) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if notes:
        lines += ["% " + line for line in _notes(rows, columns, intervals)]
    return "\n".join(lines) + "\n"


def format_table(
    rows: Sequence[tuple[str, dict[str, Any]]],
    columns: Sequence[str] = DEFAULT_COLUMNS,
    fmt: str = "md",
    *,
    bold_best: bool = False,
    notes: bool = True,
    intervals: bool = False,
) -> str:
    """The table in `fmt` ('md', 'csv' (always with intervals and counts) or 'latex')."""
    if fmt == "md":
        return markdown_table(rows, columns, bold_best=bold_best, notes=notes, intervals=intervals)
    if fmt == "latex":
        return latex_table(rows, columns, bold_best=bold_best, notes=notes, intervals=intervals)
    if fmt == "csv":
        return csv_table(rows, columns)
    raise UserError(f"unknown table format {fmt!r}; pick one of {', '.join(FORMATS)}")


def _notes(rows, columns, intervals: bool = False) -> list[str]:
    def describe(card):
        s = f"{card.get('dataset', '?')}, L∞ ε = {card.get('eps_255', 0):g}/255"
        if "aa" in columns and card.get("n_aa"):
            aa = card.get("autoattack", {})
            s += f"; AA: {aa.get('package', 'autoattack')} {aa.get('version', '')}".rstrip()
        if "gap" in columns and card.get("robust_gap"):
            s += "; robust gap = PGD-10 accuracy on training images − on test images"
        return s

    descr = [describe(card) for _, card in rows]
    out = [
        "Accuracy in %; (n=…) is the number of images each column was measured on "
        "(the first n of the split)."
    ]
    if intervals:
        out.append(
            "[lo, hi]: 95 % interval (Wilson for an accuracy under attack; bootstrap over "
            "images for the robust gap and the background measures)."
        )
    if len(set(descr)) == 1:
        out.append(f"{descr[0]}.")
    else:
        out += [f"- {label}: {d}." for (label, _), d in zip(rows, descr)]
    curves = [(label, card["curves"].get("n")) for label, card in rows if card.get("curves")]
    if curves:
        out.append(
            "Robustness curves (--plot): "
            + "; ".join(f"{label} on n={n} images" for label, n in curves)
            + "."
        )
    for label, card in rows:
        if card.get("sanity_failed"):
            out.append(
                f"† {label}: sanity checks failed ({', '.join(card['sanity_failed'])}); "
                "see docs/sanity_checks.md."
            )
    return out


def plot_report(
    rows: Sequence[tuple[str, dict[str, Any]]],
    path: str | Path,
    columns: Sequence[str] = DEFAULT_COLUMNS,
) -> Path:
    """Curves of every card that has them in one figure; else grouped bars of the table."""
    with_curves = [(label, card["curves"]) for label, card in rows if card.get("curves")]
    if with_curves:
        return plot_curves(with_curves, path)
    cols = [
        c
        for c in columns
        if c != "gap"
        and not _is_fraction(c)
        and any(value(card, c) is not None for _, card in rows)
    ]
    if not cols:
        raise UserError("nothing to plot: the cards have no curves and no accuracies")
    fig = figure(1, width=max(5.0, 1.2 * len(cols) * max(1, len(rows)) / 2))
    ax = fig.subplots()
    w = 0.8 / len(rows)
    for i, (label, card) in enumerate(rows):
        xs = [j + i * w for j in range(len(cols))]
        ax.bar(xs, [value(card, c) or 0 for c in cols], width=w, label=label)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(cols))])
    ax.set_xticklabels([column_title(c) for c in cols])
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return path


# ----------------------------------------------------------------------------- paired
def record_terms(key: str) -> list[tuple[float, str]]:
    """The per-image records behind a column, as (sign, record name) terms (see
    `dhat.eval.records`); a one-line UserError for a column that has none."""
    base, _, split = key.partition(":")
    sp = split or IOU_DEFAULT_SPLIT
    nat = f"att|{sp}|natural"
    if base == "gap":
        return [(1, "gap|train"), (-1, "gap|test")]
    if base == "worst":
        return [(1, "worst|robust")]
    if base in ("bg_gap", "bg_gap_pgd10"):
        a = "clean" if base == "bg_gap" else "pgd10"
        return [(1, f"bg|mixed_same|{a}"), (-1, f"bg|mixed_rand|{a}")]
    if base == "share":
        return [(1, f"{nat}|share")]
    if base == "share_null":
        return [(1, f"{nat}|share_null")]
    if base == "share_gain":
        return [(1, f"{nat}|share"), (-1, f"{nat}|share_null")]
    if base == "scene_map":
        return [(1, f"{nat}|scene_bg_share"), (-1, f"{nat}|scene_bg_share_null")]
    if base in ("fg_iou", "bg_iou"):
        return [(1, f"{nat}|{base[:2]}")]
    if base in ("fg_iou_null", "bg_iou_null"):
        return [(1, f"{nat}|{base[:2]}_null")]
    if split:
        return [(1, f"bg|{split}|{'clean' if base == 'acc' else base}")]
    attack = find_attack(base)
    if attack is not None:
        return [(1, attack.record)]
    raise UserError(f"column {key!r} has no per-image records to pair")


def paired_table(
    rows: Sequence[tuple[str, dict[str, Any]]],
    reference: str,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    *,
    n_boot: int = 2000,
) -> str:
    """Paired differences (row − reference) per column, in the table's units, with 95 %
    intervals: rows with the same label are seeds of one method, paired with the reference's
    seeds in order (its interval then includes seed variation). Needs every card's per-image
    records (their SHA-256 is checked) and the same images per column."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for label, card in rows:
        groups.setdefault(label, []).append(card)
    if reference not in groups:
        known = ", ".join(groups)
        raise UserError(f"--reference {reference!r} names no row; the rows are: {known}")
    records = {id(c): card_records(c) for cs in groups.values() for c in cs}
    ref = groups[reference]
    heads = [column_title(c) for c in columns]
    lines = [
        f"Paired differences against **{reference}** (row − reference, same images; "
        "95 % interval, seeds then images):",
        "",
        "| Method | seeds | " + " | ".join(heads) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for label, cards in groups.items():
        if label == reference:
            continue
        k = min(len(cards), len(ref))
        cells = []
        for c in columns:
            present = all(value(card, c) is not None for card in cards[:k] + ref[:k])
            if not present:
                cells.append("–")
                continue
            terms = record_terms(c)
            per = [
                paired_values(a, records[id(a)], b, records[id(b)], terms)
                for a, b in zip(cards[:k], ref[:k])
            ]
            r = hierarchical_bootstrap(per, n_boot=n_boot)
            f, d = (1, 3) if _is_fraction(c) else (100, 2)
            lo, hi = r["ci"]
            cells.append(f"{f * r['value']:+.{d}f} [{f * lo:+.{d}f}, {f * hi:+.{d}f}]")
        lines.append(f"| {label} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

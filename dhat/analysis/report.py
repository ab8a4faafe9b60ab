"""`dhat report RUN_DIR_OR_JSON ...`: result cards side by side, as a Markdown table like the
paper's (Clean, PGD-10, CW, AA, Robust Gap; accuracies in %), and a figure.

A run directory contributes every `eval_*.json` in it; a JSON file is one card (as written by
`dhat eval`). Rows are labelled `method (run dir)`, with the checkpoint name added where a
directory holds several cards; `--labels` overrides. `--plot PATH` draws the robustness
curves of every card that has them in one figure (a bar chart of the table otherwise).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError

DEFAULT_COLUMNS = ("clean", "pgd10", "cw", "aa", "gap")


def column_title(key: str) -> str:
    if key == "clean":
        return "Clean"
    if key == "aa":
        return "AA"
    if key == "gap":
        return "Robust Gap"
    if key.startswith("pgd"):
        return f"PGD-{key[3:]}" if key[3:] else "PGD"
    if key.startswith("cw"):
        return f"CW-{key[2:]}" if key[2:] else "CW"
    return key


def _is_card(d: Any) -> bool:
    return isinstance(d, dict) and isinstance(d.get("accuracy"), dict)


def _read(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable JSON result ({type(e).__name__})") from None
    if not _is_card(card):
        raise UserError(f"{path} is not a result card of `dhat eval` (no 'accuracy')")
    card.setdefault("path", str(path))
    return card


def load_cards(paths: Sequence[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """[(label, card)] for run directories (every eval_*.json) and JSON files, in order."""
    found: list[tuple[Path, dict]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(p.glob("eval_*.json"))
            if not files:
                raise UserError(f"{p} holds no eval_*.json: run `dhat eval {p}/best.pt` first")
            found += [(f, _read(f)) for f in files]
        elif p.is_file():
            found.append((p, _read(p)))
        else:
            raise UserError(f"{p} does not exist")
    per_dir: dict[Path, int] = {}
    for f, _ in found:
        per_dir[f.parent] = per_dir.get(f.parent, 0) + 1
    out = []
    for f, card in found:
        src = Path(card.get("checkpoint") or f)
        run = src.parent.name or f.parent.name or "."
        label = f"{card.get('method') or card.get('model') or 'model'} ({run})"
        if per_dir[f.parent] > 1:
            stem = f.stem.removeprefix("eval_")
            label = f"{label[:-1]}, {stem})"
        if card.get("weights", "model") not in ("model", None):
            label = f"{label[:-1]}, {card['weights']})"
        out.append((label, card))
    seen: dict[str, int] = {}
    for i, (label, card) in enumerate(out):  # identical labels: number them
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            out[i] = (f"{label} #{seen[label]}", card)
    return out


def value(card: dict[str, Any], key: str) -> float | None:
    """A column's value in % (None when the card lacks it)."""
    if key == "gap":
        g = card.get("robust_gap")
        return None if g is None else 100 * g["gap"]
    v = card["accuracy"].get(key)
    return None if v is None else 100 * v


def markdown_table(rows: Sequence[tuple[str, dict[str, Any]]], columns: Sequence[str] = DEFAULT_COLUMNS,
                   *, bold_best: bool = False, notes: bool = True) -> str:
    """The comparison table: one row per card, accuracies and robust gap in % (2 decimals),
    '–' where a card lacks the column. `bold_best` bolds the best value per column (highest
    accuracy, smallest gap). Notes under the table say what was measured."""
    vals = [[value(card, c) for c in columns] for _, card in rows]
    best = []
    for j, c in enumerate(columns):
        col = [v[j] for v in vals if v[j] is not None]
        best.append(None if len(col) < 2 else (min(col) if c == "gap" else max(col)))
    lines = ["| Method | " + " | ".join(column_title(c) for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for (label, card), v in zip(rows, vals):
        cells = []
        for j, x in enumerate(v):
            if x is None:
                cells.append("–")
            else:
                s = f"{x:.2f}"
                cells.append(f"**{s}**" if bold_best and best[j] is not None and math.isclose(x, best[j]) else s)
        mark = " †" if card.get("sanity_failed") else ""
        lines.append(f"| {label}{mark} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += _notes(rows, columns)
    return "\n".join(lines) + "\n"


def _notes(rows, columns) -> list[str]:
    def describe(card):
        ds = card.get("dataset", "?")
        eps = card.get("eps_255")
        n = card.get("n_test")
        s = f"{ds}, L∞ ε = {eps:g}/255, first {n} test images" if eps is not None else f"{ds}, {n} test images"
        if "aa" in columns and card.get("n_aa"):
            aa = card.get("autoattack", {})
            s += f" (AA: first {card['n_aa']}, {aa.get('package', 'autoattack')} {aa.get('version', '')})".rstrip()
        if "gap" in columns and card.get("robust_gap"):
            s += f"; robust gap = PGD-10 accuracy on {card['robust_gap']['n_train']} training images − on the test images"
        return s
    descr = [describe(card) for _, card in rows]
    out = []
    if len(set(descr)) == 1:
        out.append(f"Accuracy in %. {descr[0]}.")
    else:
        out.append("Accuracy in %.")
        out += [f"- {label}: {d}." for (label, _), d in zip(rows, descr)]
    for label, card in rows:
        if card.get("sanity_failed"):
            out.append(f"† {label}: sanity checks failed ({', '.join(card['sanity_failed'])}); "
                       "see docs/sanity_checks.md.")
    return out


def plot_report(rows: Sequence[tuple[str, dict[str, Any]]], path: str | Path,
                columns: Sequence[str] = DEFAULT_COLUMNS) -> Path:
    """Curves of every card that has them in one figure; else grouped bars of the table."""
    from ..eval.curves import _figure, plot_curves
    with_curves = [(label, card["curves"]) for label, card in rows if card.get("curves")]
    if with_curves:
        return plot_curves(with_curves, path)
    from ..checkpoint import atomic_write
    cols = [c for c in columns if c != "gap" and any(value(card, c) is not None for _, card in rows)]
    if not cols:
        raise UserError("nothing to plot: the cards have no curves and no accuracies")
    fig = _figure(1, width=max(5.0, 1.2 * len(cols) * max(1, len(rows)) / 2))
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


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="compare result cards in a Markdown table (and a plot)",
                       description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_JSON",
                   help="run directories (their eval_*.json) or result JSON files")
    p.add_argument("--out", default=None, help="write the Markdown here (default: stdout)")
    p.add_argument("--plot", default=None, metavar="PATH", help="also write a PNG figure")
    p.add_argument("--columns", default=",".join(DEFAULT_COLUMNS),
                   help="comma-separated: clean, pgdK, cw, cwK, aa, gap (default: %(default)s)")
    p.add_argument("--labels", nargs="+", default=None, help="one row label per card, in order")
    p.add_argument("--bold-best", action="store_true", help="bold the best value per column")
    p.add_argument("--no-notes", dest="notes", action="store_false",
                   help="the table only, without the notes under it")


def run(ns: argparse.Namespace) -> None:
    rows = load_cards(ns.inputs)
    if ns.labels:
        if len(ns.labels) != len(rows):
            raise UserError(f"--labels: {len(ns.labels)} labels for {len(rows)} cards")
        rows = [(label, card) for label, (_, card) in zip(ns.labels, rows)]
    columns = [c.strip() for c in ns.columns.split(",") if c.strip()]
    text = markdown_table(rows, columns, bold_best=ns.bold_best, notes=ns.notes)
    if ns.out:
        from ..checkpoint import atomic_write
        atomic_write(ns.out, lambda tmp: Path(tmp).write_text(text))
        print(f"table written to {ns.out}")
    else:
        print(text, end="")
    if ns.plot:
        print(f"plot written to {plot_report(rows, ns.plot, columns)}")


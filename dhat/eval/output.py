"""An evaluation's files: where its card, per-image records and curves plot go, the cards
already beside a checkpoint, and `write_evaluation`, the one write path of the library
(`evaluate_checkpoint`) and the CLI (`dhat eval`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_ATTACKS, EvalConfig
from ..errors import UserError
from ..rundir import RunSwapped
from .card import card_label, fallback_path, save_card
from .curves import plot_curves
from .records import records_path, write_records

if TYPE_CHECKING:  # a cycle at run time: evaluate.py imports this module
    from .evaluate import Evaluation


def default_card_path(cfg: EvalConfig, checkpoint: str) -> Path:
    """`--out`, else a name beside the checkpoint that names the checkpoint, the weights and
    what was measured, so evaluations of one checkpoint with other attacks never overwrite
    each other: eval_best.json (the default attacks), eval_best_clean-pgd20-cw-aa.json,
    eval_best_curves.json, eval_best_ema_eps4.json, ..."""
    if cfg.out:
        return Path(cfg.out)
    src = Path(checkpoint)
    tag = "" if cfg.weights == "model" else f"_{cfg.weights}"
    if list(cfg.attacks) != list(DEFAULT_ATTACKS):
        tag += "_" + "-".join(cfg.attacks)
    if cfg.eps is not None:
        tag += f"_eps{cfg.eps * 255:g}"
    if cfg.curves:
        tag += "_curves"
    return src.with_name(f"eval_{src.stem}{tag}.json")


def curves_png_path(card_path: Path) -> Path:
    """The curves figure beside a card: eval_best_curves.json -> eval_best_curves.png."""
    stem = card_path.stem
    return card_path.with_name(f"{stem}.png" if stem.endswith("_curves") else f"{stem}_curves.png")


def checkpoint_cards(checkpoint: str | Path, weights: str = "model") -> list[Path]:
    """The result cards written beside `checkpoint` by default for these weights (every
    eval_<stem>[_<weights>]*.json), newest first; a card's own check says whose it is."""
    src = Path(checkpoint)
    head = f"eval_{src.stem}" + ("" if weights == "model" else f"_{weights}")
    found = [p for p in src.parent.glob(f"{head}*.json") if not p.name.endswith(".meta.json")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def write_evaluation(ev: Evaluation, cfg: EvalConfig) -> Path:
    """Write an evaluation: its per-image records, the curves PNG and the card, atomically,
    inside the pin of the card's folder; the one write path of the library and the CLI.
    If an overwrite replaced the run meanwhile, the results go to a fallback card (named in
    a warning) instead of being lost. Returns the card's path."""
    card, out = ev.card, ev.out
    rpath = Path(cfg.records) if cfg.records else records_path(out)
    png = curves_png_path(out)
    try:
        with ev.pin.write(*[p for p in (out, rpath, png) if p]):
            path = _write(card, ev.records, out, rpath, png)
        if ev.state is not None:
            ev.state.finish()
        return path
    except (RunSwapped, OSError) as e:  # replaced by an overwrite, or no longer writable
        why = str(e) if isinstance(e, RunSwapped) else f"could not write {out} ({e.strerror})"
        alt = fallback_path(out)
        warnings.warn(f"{why}; the result card is at {alt} instead", stacklevel=2)
        return _write(card, ev.records, alt, records_path(alt), curves_png_path(alt))


def _write(card, records, out: Path, rpath: Path, png: Path) -> Path:
    if records is not None:
        card["records"] = {
            "file": rpath.name if rpath.parent.resolve() == out.parent.resolve() else str(rpath),
            "sha256": write_records(rpath, records),
            "names": sorted(records),
        }
    if "curves" in card:
        plot_card_curves(card, png)
    return save_card(card, out)


def plot_card_curves(card: dict[str, Any], png: Path) -> None:
    """The card's robustness curves plotted to `png` (its path then recorded in the card); a
    missing matplotlib or an unwritable file is a warning, the card keeps the numbers."""
    try:
        plot_curves([(card_label(card), card["curves"])], png)
        card["curves"]["png"] = str(png)
    except UserError as e:  # matplotlib missing: the JSON still has the numbers
        warnings.warn(f"curves plot skipped: {e}", stacklevel=2)
    except OSError as e:
        warnings.warn(f"curves plot not written ({type(e).__name__}: {png})", stacklevel=2)

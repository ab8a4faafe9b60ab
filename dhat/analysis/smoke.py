"""The first five minutes: the smoke run's summary in plain words, and `smoke-compare`.

`smoke_summary(card, log)` turns the quick evaluation after `dhat train` into a short
labelled summary, each line saying what it measures: accuracy on images like training,
with a random background and on the object alone; the BG-gap; the object share of the
Grad-CAM beside its null; PGD-10 accuracy; and the robust gap — only where the test split is
drawn like training (on a dataset whose test split is deliberately shifted, such as
`shapes`, the train − test difference is named for what it is). Then the next commands.

`run_comparison("smoke-compare", out_dir)` trains every method of a comparison preset
(`dhat.config.presets.COMPARISONS`) on the same data, evaluates each like the smoke run, and
writes one Markdown table (`report.md`) and one figure (`report.png`: accuracy by split and
the object share beside its null, per method).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import EvalConfig, build_train_config
from ..config.presets import COMPARISONS
from ..errors import UserError, unknown_name
from ..eval import evaluate_checkpoint
from ..eval.curves import figure
from ..io import atomic_write, write_text
from ..train import train
from .report import load_cards, markdown_table

QUICK_N = 1000
# Datasets whose test split is deliberately shifted from training (the background is
# independent of the class there): a train − test difference on them is not a robust gap.
SHIFTED_TEST = {"shapes", "shapes-cifar10"}
TABLE_COLUMNS = (
    "clean",
    "pgd10",
    "gap",
    "acc:mixed_rand",
    "acc:only_fg",
    "bg_gap",
    "share",
    "share_null",
    "share_gain",
)
FIGURE_SPLITS = ("test", "mixed_same", "mixed_rand", "only_fg", "only_bg")
ATTENTION_SPLIT = "mixed_rand"


def quick_eval_config(
    best: str | Path, cfg: Any, out: str | Path | None = None, n: int = QUICK_N
) -> Any:
    """The quick evaluation after `dhat train` (an EvalConfig): clean and PGD-10 on the first
    `n` test images, the robust gap on `n` training images, and the background and attention
    measures (first `n` images of each split) where the dataset has the splits; no sanity
    checks. `cfg` is the run's TrainConfig."""
    weights = "ema" if cfg.select == "ema" else "model"
    return EvalConfig(
        checkpoint=str(best),
        attacks=["clean", "pgd10"],
        n_test=n,
        gap_train_images=n,
        sanity=False,
        device=cfg.device,
        weights=weights,
        threads=cfg.threads,
        out=str(out or Path(best).with_name("eval_best_quick.json")),
    )


# ----------------------------------------------------------------------------- summary
def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def _points(cell: dict[str, Any]) -> str:
    lo, hi = cell["ci"]
    return f"{100 * cell['value']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _selected_epoch(card: dict[str, Any], log: Sequence[dict[str, Any]]) -> dict | None:
    rows = [r for r in log if "val_clean_acc" in r]
    if not rows:
        return None
    if card.get("epoch") is None:
        return None
    same = [r for r in rows if r.get("epoch") == card["epoch"]]  # both count from 1
    return same[-1] if same else None


def smoke_summary(card: dict[str, Any], log: Sequence[dict[str, Any]] = ()) -> str:
    """A labelled summary of a quick-evaluation card in plain words, one clause per line on
    what it measures, then the next commands. `log`: the run's log.jsonl records (for the
    validation accuracy that selected the checkpoint; may be empty)."""
    shifted = card.get("dataset") in SHIFTED_TEST
    bg = card.get("background") or {}
    acc = bg.get("accuracy", {})
    n = card.get("n_test")
    chance = 100 / card["num_classes"] if card.get("num_classes") else None
    head = (
        f"What this run shows: {card.get('model')} trained with {card.get('method')} on "
        f"{card.get('dataset')}, {n} test images"
        + (" per split" if acc else "")
        + (f" (chance {chance:.0f} %)" if chance else "")
        + ":"
    )
    rows: list[tuple[str, str, str]] = []
    val = _selected_epoch(card, log)
    if val is not None:
        robust = val.get("val_robust_acc")
        rows.append(
            (
                f"validation, epoch {val.get('epoch')}",
                _pct(val["val_clean_acc"]),
                "held-out training images, which picked this checkpoint"
                + (f" (under PGD: {_pct(robust)})" if robust is not None else ""),
            )
        )
    clean = card["accuracy"].get("clean")
    if clean is not None:
        rows.append(
            ("shifted test", _pct(clean), "test images whose background ignores the class")
            if shifted
            else ("like training", _pct(clean), "test images drawn like the training images")
        )
    words = {
        "mixed_rand": ("random background", "the background says nothing about the class"),
        "only_fg": ("object alone", "the object on black, no background"),
        "only_bg": ("background alone", "the object removed, only the background is left"),
    }
    for split, (label, what) in words.items():
        if split in acc and "clean" in acc[split]:
            rows.append((label, _pct(acc[split]["clean"]["value"]), f"{what} ({split})"))
    gap = bg.get("bg_gap", {}).get("clean")
    if gap is not None:
        rows.append(
            (
                "BG-gap",
                _points(gap),
                "agreeing minus random background: how much the model leans on it",
            )
        )
    att = bg.get("attention", {}).get(ATTENTION_SPLIT, {}).get("natural", {})
    if "object_share" in att:
        rows.append(
            (
                "attention on the object",
                f"{att['object_share']['value']:.2f} "
                f"(null {att['object_share_null']['value']:.2f})",
                "share of the Grad-CAM map on the object (random background); null: "
                "scored on another image's object",
            )
        )
    pgd = card["accuracy"].get("pgd10")
    eps = card.get("eps_255")
    if pgd is not None:
        rows.append(
            (
                "PGD-10, " + ("shifted test" if shifted else "like training"),
                _pct(pgd),
                f"accuracy under a 10-step attack of ±{eps:g}/255 per pixel",
            )
        )
    if ATTENTION_SPLIT in acc and "pgd10" in acc[ATTENTION_SPLIT]:
        rows.append(
            (
                "PGD-10, random background",
                _pct(acc[ATTENTION_SPLIT]["pgd10"]["value"]),
                "the same attack on the random-background images",
            )
        )
    g = card.get("robust_gap")
    if g is not None:
        cell = {"value": g["gap"], "ci": g["ci"]}
        train, test = _pct(g["train"]), _pct(g["test"])
        if shifted:
            rows.append(
                (
                    "train − shifted test",
                    _points(cell),
                    f"PGD-10 on {g['n_train']} training images ({train}) minus on the shifted "
                    f"test ({test}); NOT a robust gap: those backgrounds differ by design",
                )
            )
        else:
            rows.append(
                (
                    "robust gap",
                    _points(cell),
                    f"PGD-10 on {g['n_train']} training images ({train}) minus on test images "
                    f"drawn like them ({test}): robust overfitting",
                )
            )
    lw = max(len(r[0]) for r in rows) if rows else 0
    vw = max(len(r[1]) for r in rows) if rows else 0
    lines = [head] + [f"  {a:<{lw}}  {b:<{vw}}  {c}" for a, b, c in rows]
    nxt = next_commands(card)
    if nxt:
        cw = max(len(c) for c, _ in nxt)
        lines.append("Next:")
        lines += [f"  {c:<{cw}}  # {w}" for c, w in nxt]
    return "\n".join(lines)


def next_commands(card: dict[str, Any]) -> list[tuple[str, str]]:
    """[(command, what it does)] to run after a smoke run."""
    ckpt = card.get("checkpoint")
    if not ckpt:
        return []
    ema = " --weights ema" if card.get("weights") == "ema" else ""
    out = [
        (
            f"dhat eval {ckpt}{ema}",
            "the full evaluation: all test images, PGD-10/20/50, CW, sanity checks",
        )
    ]
    if card.get("background"):
        out.append(
            (
                f"dhat attention {ckpt} --overlay {Path(ckpt).with_name('attention.png')}",
                "where the model looks: Grad-CAM against the object masks, with overlays",
            )
        )
    if card.get("dataset") == "toy_scenes":
        out.append(
            (
                "dhat train --preset smoke-compare --out-dir runs/smoke-compare",
                "PGD-AT, UIAT and DHAT on the same data: one table, one figure",
            )
        )
    return out


# ----------------------------------------------------------------------------- comparison
def comparison_configs(
    name: str, flags: dict[str, Any] | None = None, yaml_path: str | None = None
) -> list[Any]:
    """The TrainConfig of each method of comparison preset `name`: its base preset < YAML <
    `flags` (TrainConfig fields, as `dhat train` collects them), in OUT_DIR/METHOD (OUT_DIR:
    flags["out_dir"], else runs/NAME)."""
    if name not in COMPARISONS:
        raise unknown_name("comparison preset", name, COMPARISONS)
    spec = COMPARISONS[name]
    flags = dict(flags or {})
    for key in ("method", "method_args"):
        if key in flags:
            raise UserError(
                f"--preset {name} trains {', '.join(spec['methods'])}: drop the "
                + ("--method flag" if key == "method" else "method options")
            )
    flags.pop("preset", None)
    base = Path(flags.pop("out_dir", None) or f"runs/{name}")
    return [
        build_train_config(
            yaml_path,
            spec["preset"],
            flags={**flags, "preset": spec["preset"], "method": m, "out_dir": str(base / m)},
        )
        for m in spec["methods"]
    ]


def run_comparison(
    name: str,
    flags: dict[str, Any] | None = None,
    *,
    yaml_path: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train every method of comparison preset `name`, give each the quick evaluation (on the
    preset's `eval_n` images), then write the table (OUT_DIR/report.md) and the figure
    (OUT_DIR/report.png). Returns {"cards": [card paths], "table": path, "png": path (None
    without matplotlib), "markdown": the table}."""
    say = log or (lambda s: None)

    cfgs = comparison_configs(name, flags, yaml_path)
    eval_n = COMPARISONS[name].get("eval_n", QUICK_N)
    base = Path(cfgs[0].out_dir).parent
    cards: list[Path] = []
    for i, cfg in enumerate(cfgs, 1):
        say(f"[{i}/{len(cfgs)}] {cfg.method}: training in {cfg.out_dir}")
        run_dir = train(cfg, overwrite=overwrite)
        best = run_dir / "best.pt"
        say(f"[{i}/{len(cfgs)}] {cfg.method}: quick evaluation")
        ev = quick_eval_config(best, cfg, n=eval_n)
        card = evaluate_checkpoint(ev, progress=progress)
        cards.append(Path(card["path"]))
    rows = [(cfg.method, card) for cfg, (_, card) in zip(cfgs, load_cards(cards))]
    table = markdown_table(rows, TABLE_COLUMNS)
    md = base / "report.md"
    write_text(md, table)
    png: Path | None
    try:
        png = plot_comparison(rows, base / "report.png")
    except UserError as e:  # matplotlib missing: the table still stands
        say(f"figure skipped: {e}")
        png = None
    return {"cards": cards, "table": md, "png": png, "markdown": table}


def plot_comparison(rows: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """One PNG, three panels, one colour per method: clean and PGD-10 accuracy on each split
    (FIGURE_SPLITS), and the object share of the Grad-CAM on mixed_rand with its 95 %
    interval beside its null."""
    if not rows or not all(card.get("background") for _, card in rows):
        raise UserError("the comparison figure needs cards with background measures")
    fig = figure(3, width=4.2)
    ax_c, ax_p, ax_s = fig.subplots(1, 3)
    w = 0.8 / len(rows)
    for i, (label, card) in enumerate(rows):
        acc = card["background"]["accuracy"]
        splits = [s for s in FIGURE_SPLITS if s in acc]
        xs = [j + i * w for j in range(len(splits))]
        for ax, attack in ((ax_c, "clean"), (ax_p, "pgd10")):
            ax.bar(xs, [100 * acc[s][attack]["value"] for s in splits], w, label=label)
            ax.set_xticks([j + 0.4 - w / 2 for j in range(len(splits))])
            ax.set_xticklabels(splits, fontsize=7)
        att = card["background"].get("attention", {}).get(ATTENTION_SPLIT, {}).get("natural")
        if att and "object_share" in att:
            v, (lo, hi) = att["object_share"]["value"], att["object_share"]["ci"]
            ax_s.bar([i], [v], 0.6, yerr=[[v - lo], [hi - v]], capsize=3, color=f"C{i}")
            ax_s.plot([i - 0.3, i + 0.3], [att["object_share_null"]["value"]] * 2, "k--")
    chance = 100 / rows[0][1]["num_classes"]
    for ax, t in ((ax_c, "clean accuracy by split"), (ax_p, "PGD-10 accuracy by split")):
        ax.axhline(chance, color="grey", lw=0.8, ls=":")
        ax.set_title(t, fontsize=9)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    ax_c.legend(fontsize=7)
    ax_s.set_xticks(range(len(rows)))
    ax_s.set_xticklabels([label for label, _ in rows], fontsize=7)
    ax_s.set_title(f"object share of Grad-CAM ({ATTENTION_SPLIT}); dashed: null", fontsize=9)
    ax_s.set_ylim(0, 1)
    ax_s.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path

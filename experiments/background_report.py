"""Tables and figures of the background study, from its result cards and per-image records.

    python experiments/background_study.py report

Every method difference is a paired difference on the same images, with a 95 % interval from
a hierarchical bootstrap (seeds, then images within each seed: `dhat.analysis.paired`), so it
includes seed variation. Reliance is placed on the scale the two calibration models make
(0 = object-only, 1 = scene-only). Writes results.md, summary.json and the figures.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dhat.analysis.paired import hierarchical_bootstrap, paired_values, reliance
from dhat.eval.card import validate_card
from dhat.eval.records import card_records

ORDER = [
    "standard",
    "pgd_at",
    "uiat_inv4",
    "uiat_inv12",
    "dhat_self",
    "dhat_frozen",
    "dhat_dhlr",
    "calib_object",
    "calib_scene",
    "pgd_at_rho0.5",
    "pgd_at_rho0.7",
    "pgd_at_rho1",
]
METHODS = ["pgd_at", "uiat_inv4", "uiat_inv12", "dhat_self", "dhat_frozen", "dhat_dhlr"]
SPLITS = ["test", "mixed_same", "mixed_rand", "only_fg", "only_bg"]
NAT = "natural"

# measure name -> (terms of (sign, record name), description, percent?)
MEASURES: dict[str, tuple[list[tuple[float, str]], str, bool]] = {
    "clean": ([(1, "test|clean")], "clean accuracy, test split (drawn like training)", True),
    "pgd10": ([(1, "test|pgd10")], "PGD-10 accuracy, test split", True),
    "robust_gap": (
        [(1, "gap|train"), (-1, "gap|test")],
        "robust gap: PGD-10 accuracy on 1,000 training images − on the test split",
        True,
    ),
    "mixed_same": ([(1, "bg|mixed_same|clean")], "accuracy, scene of the label's class", True),
    "mixed_rand": ([(1, "bg|mixed_rand|clean")], "accuracy, scene of a random class", True),
    "only_fg": ([(1, "bg|only_fg|clean")], "accuracy, the object on black", True),
    "only_bg": ([(1, "bg|only_bg|clean")], "accuracy, the scene alone", True),
    "bg_gap": (
        [(1, "bg|mixed_same|clean"), (-1, "bg|mixed_rand|clean")],
        "BG-gap: mixed_same − mixed_rand accuracy",
        True,
    ),
    "share": (
        [(1, f"att|mixed_rand|{NAT}|share")],
        "object share of the true-class Grad-CAM, mixed_rand",
        False,
    ),
    "share_null": (
        [(1, f"att|mixed_rand|{NAT}|share_null")],
        "the same, scored against another image's mask (null)",
        False,
    ),
    "share_minus_null": (
        [(1, f"att|mixed_rand|{NAT}|share"), (-1, f"att|mixed_rand|{NAT}|share_null")],
        "object share − its null",
        False,
    ),
    "scene_map_bg": (
        [
            (1, f"att|mixed_rand|{NAT}|scene_bg_share"),
            (-1, f"att|mixed_rand|{NAT}|scene_bg_share_null"),
        ],
        "background share of the scene class's Grad-CAM − its null, mixed_rand",
        False,
    ),
    "fg_iou": ([(1, f"att|mixed_rand|{NAT}|fg")], "fg IoU at 0.5 (the paper's measure)", False),
    "fg_iou_minus_null": (
        [(1, f"att|mixed_rand|{NAT}|fg"), (-1, f"att|mixed_rand|{NAT}|fg_null")],
        "fg IoU − its null",
        False,
    ),
    "bg_iou_minus_null": (
        [(1, f"att|mixed_rand|{NAT}|bg"), (-1, f"att|mixed_rand|{NAT}|bg_null")],
        "bg IoU − its null",
        False,
    ),
}
RELIANCE = ("bg_gap", "share_minus_null", "scene_map_bg", "only_fg", "only_bg")


class Run:
    def __init__(self, card: dict[str, Any], path: Path):
        self.card, self.path = card, path
        self.records = card_records(card, path)
        self._zero = {k: np.zeros_like(v, dtype=np.float64) for k, v in self.records.items()}

    def stat(self, measure: str) -> dict[str, np.ndarray]:
        """The per-image statistic of one run (against a zero model: paired_values with B = 0)."""
        return paired_values(self.card, self.records, self.card, self._zero, MEASURES[measure][0])


def load(out: Path) -> dict[str, dict[int, Run]]:
    runs: dict[str, dict[int, Run]] = defaultdict(dict)
    for p in sorted((out / "cards").glob("*.json")):
        card = json.loads(p.read_text())
        validate_card(card, str(p))
        card["path"] = str(p)
        runs[card["variant"]][card["seed"]] = Run(card, p)
    return dict(runs)


def mean_of(runs: dict[int, Run], measure: str, n_boot: int) -> dict[str, Any]:
    return hierarchical_bootstrap([r.stat(measure) for r in runs.values()], n_boot=n_boot)


def diff_of(a: dict[int, Run], b: dict[int, Run], measure: str, n_boot: int) -> dict[str, Any]:
    seeds = sorted(set(a) & set(b))
    terms = MEASURES[measure][0]
    per = [paired_values(a[s].card, a[s].records, b[s].card, b[s].records, terms) for s in seeds]
    return hierarchical_bootstrap(per, n_boot=n_boot) | {"seeds": seeds}


def fmt(r: dict[str, Any], percent: bool, signed: bool = False) -> str:
    k, d = (100, 1) if percent else (1, 3)
    s = "+" if signed else ""
    lo, hi = r["ci"]
    return f"{k * r['value']:{s}.{d}f} [{k * lo:{s}.{d}f}, {k * hi:{s}.{d}f}]"


def pearson_ci(x: np.ndarray, y: np.ndarray, n_boot: int = 4000, seed: int = 0):
    """Pearson r of paired points with a percentile bootstrap interval over the points."""
    r = float(np.corrcoef(x, y)[0, 1])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if np.std(x[i]) > 0 and np.std(y[i]) > 0:
            boots.append(np.corrcoef(x[i], y[i])[0, 1])
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return r, float(lo), float(hi), len(x)


def write_report(out: Path, n_boot: int = 2000) -> dict[str, Any]:
    runs = load(out)
    variants = [v for v in ORDER if v in runs]
    summary: dict[str, Any] = {"n_boot": n_boot, "means": {}, "diffs": {}, "reliance": {}}
    lines = [
        "# Background study: results",
        "",
        "Made by `python experiments/background_study.py report` from the cards in `cards/`",
        "(checkpoint at the end of training) and their per-image records. Every interval is a",
        "95 % hierarchical bootstrap: seeds, then images within each seed (paired images for",
        "differences). Accuracies in %, attention shares as fractions.",
        "",
        "## Means over seeds",
        "",
    ]
    cols = list(MEASURES)
    for block in (cols[:8], cols[8:]):  # accuracies, then attention
        lines += [
            "| variant | seeds | " + " | ".join(block) + " |",
            "|---|---|" + "---|" * len(block),
        ]
        for v in variants:
            cells = []
            for m in block:
                r = mean_of(runs[v], m, n_boot)
                summary["means"].setdefault(v, {})[m] = r
                cells.append(fmt(r, MEASURES[m][2]))
            lines.append(f"| {v} | {len(runs[v])} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Measures:", ""] + [f"- `{m}`: {d[1]}" for m, d in MEASURES.items()] + [""]

    # --------------------------------------------------------------- calibration scale
    if "calib_object" in runs and "calib_scene" in runs:
        lines += [
            "## Reliance on the calibration scale",
            "",
            "0 = the object-only calibration model (PGD-AT, scenes random), 1 = the scene-only",
            "one (PGD-AT, labelled by the scene). Means over seeds; the interval of a scaled",
            "value is not shown (it is the mean's, divided by the span).",
            "",
            "| variant | " + " | ".join(RELIANCE) + " |",
            "|---|" + "---|" * len(RELIANCE),
        ]
        ends = {
            m: (
                summary["means"]["calib_object"][m]["value"],
                summary["means"]["calib_scene"][m]["value"],
            )
            for m in RELIANCE
        }
        summary["calibration"] = ends
        for v in variants:
            vals = {m: reliance(summary["means"][v][m]["value"], *ends[m]) for m in RELIANCE}
            summary["reliance"][v] = vals
            lines.append(f"| {v} | " + " | ".join(f"{vals[m]:.2f}" for m in RELIANCE) + " |")
        lines += [
            "",
            "Calibration ends (object-only → scene-only): "
            + "; ".join(f"{m} {a:.3f} → {b:.3f}" for m, (a, b) in ends.items()),
            "",
        ]

    # --------------------------------------------------------------- paired differences
    pairs = [
        ("uiat_inv4", "pgd_at"),
        ("uiat_inv12", "pgd_at"),
        ("uiat_inv12", "uiat_inv4"),
        ("dhat_self", "uiat_inv4"),
        ("dhat_frozen", "uiat_inv4"),
        ("dhat_dhlr", "uiat_inv4"),
        ("dhat_frozen", "dhat_self"),
        ("dhat_self", "pgd_at"),
        ("dhat_frozen", "pgd_at"),
    ]
    diff_measures = [
        "pgd10",
        "clean",
        "robust_gap",
        "bg_gap",
        "only_fg",
        "only_bg",
        "share_minus_null",
        "scene_map_bg",
        "fg_iou_minus_null",
    ]
    lines += [
        "## Paired differences (A − B, same images, seeds paired)",
        "",
        "| A − B | " + " | ".join(diff_measures) + " |",
        "|---|" + "---|" * len(diff_measures),
    ]
    for a, b in pairs:
        if a not in runs or b not in runs:
            continue
        cells = []
        for m in diff_measures:
            r = diff_of(runs[a], runs[b], m, n_boot)
            summary["diffs"].setdefault(f"{a} - {b}", {})[m] = r
            cells.append(fmt(r, MEASURES[m][2], signed=True))
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    lines.append("")

    # --------------------------------------------------------------- (c) robust gap vs reliance
    lines += ["## Does the robust gap track reliance?", ""]
    for label, names in (
        ("across methods (every run of the six adversarial methods)", METHODS),
        (
            "across rho (PGD-AT, rho 0.5 / 0.7 / 0.9 / 1.0)",
            ["pgd_at_rho0.5", "pgd_at_rho0.7", "pgd_at", "pgd_at_rho1"],
        ),
    ):
        pts = [
            r
            for v in names
            if v in runs
            for s, r in runs[v].items()
            if not names[0].startswith("pgd_at_rho") or s in (0, 1)
        ]
        if len(pts) < 4:
            continue
        gap = np.array([r.card["robust_gap"]["gap"] for r in pts])
        for m in ("bg_gap", "only_fg", "only_bg", "share_minus_null"):
            val = np.array([sum(v.mean() for v in r.stat(m).values()) for r in pts])
            rr, lo, hi, n = pearson_ci(gap, val)
            summary.setdefault("correlation", {})[f"{label}: robust_gap vs {m}"] = [rr, lo, hi, n]
            lines.append(
                f"- {label}: Pearson r(robust gap, {m}) = {rr:.2f} [{lo:.2f}, {hi:.2f}] ({n} runs)"
            )
    lines.append("")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    plot(out, runs, variants, summary)
    return summary


def plot(out: Path, runs, variants, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # learning curves of seed 0: train (adversarial, on the batches) and validation robust acc
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharey=True)
    series = (
        ("adv_acc", "train (adversarial batches)", "C0", "-"),
        ("val_robust_acc", "validation PGD", "C1", "-"),
        ("val_clean_acc", "validation clean", "C2", "--"),
    )
    for ax, v in zip(axes.flat, [v for v in variants if not v.startswith("pgd_at_rho")]):
        run = runs[v].get(0) or next(iter(runs[v].values()))
        log = run.card["log"]
        ep = [e["epoch"] for e in log]
        for key, lab, colour, style in series:
            if all(key in e for e in log):
                ax.plot(ep, [e[key] for e in log], label=lab, color=colour, ls=style)
        ax.set_title(f"{v} (seed {run.card['seed']})")
        ax.set_xlabel("epoch")
    axes.flat[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=90)
    plt.close(fig)

    # reliance measures per variant with their intervals
    show = ["bg_gap", "only_fg", "share_minus_null", "scene_map_bg"]
    fig, axes = plt.subplots(1, len(show), figsize=(4 * len(show), 4))
    for ax, m in zip(axes, show):
        vals = [summary["means"][v][m] for v in variants]
        k = 100 if MEASURES[m][2] else 1
        y = np.arange(len(variants))
        ax.errorbar(
            [k * r["value"] for r in vals],
            y,
            xerr=np.array(
                [[k * (r["value"] - r["ci"][0]), k * (r["ci"][1] - r["value"])] for r in vals]
            ).T,
            fmt="o",
        )
        ax.set_yticks(y, variants if ax is axes[0] else [""] * len(y))
        ax.invert_yaxis()
        ax.set_title(m)
    fig.tight_layout()
    fig.savefig(out / "reliance.png", dpi=90)
    plt.close(fig)

"""Tables and figures of the CIFAR-10 robust-overfitting study, made from its validated
result cards and committed training logs.

python experiments/cifar10_study.py report
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from dhat.eval import read_card

ORDER = ["standard", "pgd_at", "awp", "uiat", "dhat_frozen", "dhat_self", "dhat_awp"]
KEYS = ("clean", "pgd10", "pgd20", "cw", "aa")  # the cards' accuracy keys
# The paper's CIFAR-10 figures (Zhang et al., ICCV 2025, arXiv 2408.06079, the main CIFAR-10
# table, ε 8/255; WRN-28-10 as our copy of the paper's summary reports it): Clean, PGD-10, C&W,
# AutoAttack, robust gap, in %. For orientation only: a different model, data size and schedule.
PAPER = {
    "MART": (82.99, 56.25, 52.26, 50.67, 9.52),
    "AWP": (82.67, 57.80, 54.82, 51.90, 6.90),
    "UIAT": (82.94, 58.66, 54.11, 52.17, 7.92),
    "SGLR": (85.76, 57.53, 54.28, 52.07, 9.38),
    "DHAT": (83.95, 60.49, 55.27, 53.10, 3.51),
    "DHAT-CFA": (84.49, 62.67, 55.95, 54.05, 6.33),
}
PAPER_ROW = {"awp": "AWP", "uiat": "UIAT", "dhat_frozen": "DHAT"}  # the paper's DHAT: frozen CAM
PAPER_COLS = ("clean", "pgd10", "cw", "aa", "gap")
TARGET_GAP, TARGET_CLEAN = 10.0, 45.0  # the regime the study is calibrated for (PGD-AT, %)


def load(out: Path) -> list[dict[str, Any]]:
    """Every card (validated) with its meta (variant, seed, checkpoint) and training log."""
    cards = []
    for p in sorted((out / "cards").glob("*.json")):
        if p.name.endswith(".meta.json"):
            continue
        card = read_card(p)  # refuses a self-contradicting card
        card.update(json.loads(p.with_suffix(".meta.json").read_text()))
        log = out / "logs" / f"{card['variant']}_s{card['seed']}.jsonl"
        card["log"] = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
        cards.append(card)
    rank = {v: i for i, v in enumerate(ORDER)}
    return sorted(cards, key=lambda c: (rank.get(c["variant"], 99), c["seed"], c["checkpoint"]))


def value(card: dict[str, Any], key: str) -> float | None:
    """A card's accuracy (or robust gap, key 'gap') in %, None where not measured."""
    if key == "gap":
        return 100 * card["robust_gap"]["gap"]
    v = card["accuracy"].get(key)
    return None if v is None else 100 * v


def mean_sd(xs: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def summary(cards: list[dict[str, Any]], which: str) -> dict[str, dict[str, tuple]]:
    """variant -> key -> (mean, sd over seeds, seeds) for one checkpoint kind."""
    out: dict[str, dict[str, tuple]] = {}
    for v in ORDER:
        cs = [c for c in cards if c["variant"] == v and c["checkpoint"] == which]
        if not cs:
            continue
        out[v] = {}
        for key in (*KEYS, "gap", "train", "epoch"):
            if key == "train":
                xs = [100 * c["robust_gap"]["train"] for c in cs]
            elif key == "epoch":
                xs = [c["epoch"] for c in cs]  # cards count epochs from 1
            else:
                xs = [x for c in cs if (x := value(c, key)) is not None]
            if xs:
                out[v][key] = (*mean_sd(xs), len(xs))
    return out


def fmt(stat: tuple | None) -> str:
    if stat is None:
        return "–"
    m, sd, _ = stat
    return f"{m:.2f}" if sd is None else f"{m:.2f} ± {sd:.2f}"


def paper_table(cards: list[dict[str, Any]], which: str) -> str:
    """The paper's shape (Clean, PGD-10, CW∞, AA, Robust gap), means ± sd over seeds, with
    PGD-20, the train side of the gap and the paper's figures beside."""
    s = summary(cards, which)
    first = next(c for c in cards if c["checkpoint"] == which)
    n_aa = next((c["n_aa"] for c in cards if c["checkpoint"] == which and c.get("n_aa")), None)
    rows = [
        f"| variant | seeds | epoch | Clean | PGD-10 | CW∞ | AA{f' (n={n_aa})' if n_aa else ''} | "
        f"Robust gap | train PGD-10 (n={first['robust_gap']['n_train']}) | PGD-20 | "
        "paper: Clean / PGD-10 / CW / AA / Gap |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, st in s.items():
        paper = PAPER.get(PAPER_ROW.get(v, ""))
        ref = f"{PAPER_ROW[v]}: " + " / ".join(f"{x:.2f}" for x in paper) if paper else "–"
        rows.append(
            f"| {v} | {st['clean'][2]} | {st['epoch'][0]:.0f} | {fmt(st.get('clean'))} | "
            f"{fmt(st.get('pgd10'))} | {fmt(st.get('cw'))} | {fmt(st.get('aa'))} | "
            f"{fmt(st.get('gap'))} | {fmt(st.get('train'))} | {fmt(st.get('pgd20'))} | {ref} |"
        )
    return "\n".join(rows)


def runs_table(cards: list[dict[str, Any]]) -> str:
    rows = [
        "| variant | seed | checkpoint | epoch | Clean | PGD-10 | PGD-20 | CW∞ | AA | AA vs PGD | "
        "Robust gap (train − test) | 95 % CI | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cards:
        g = c["robust_gap"]
        aa = value(c, "aa")
        check = next((s["status"] for s in c["sanity"] if s["check"] == "aa_vs_pgd"), "–")
        rows.append(
            f"| {c['variant']} | {c['seed']} | {c['checkpoint']} | {c['epoch']} | "
            + " | ".join(f"{value(c, k):.2f}" for k in ("clean", "pgd10", "pgd20", "cw"))
            + f" | {'–' if aa is None else f'{aa:.2f}'} | {check} | {100 * g['gap']:.2f} "
            f"({100 * g['train']:.2f} − {100 * g['test']:.2f}) | "
            f"[{100 * g['ci'][0]:.1f}, {100 * g['ci'][1]:.1f}] | {c['train_seconds'] / 60:.1f} |"
        )
    return "\n".join(rows)


def regime(cards: list[dict[str, Any]]) -> str:
    """Whether PGD-AT reached the calibrated regime (gap and clean accuracy, end of training)."""
    st = summary(cards, "last").get("pgd_at")
    if not st:
        return "PGD-AT has no end-of-training card yet."
    gap, clean = st["gap"][0], st["clean"][0]
    ok = gap >= TARGET_GAP and clean >= TARGET_CLEAN
    return (
        f"PGD-AT at the end of training: robust gap {gap:.2f} points (target ≥ {TARGET_GAP:g}), "
        f"clean {clean:.2f} % (target ≥ {TARGET_CLEAN:g}): the robust-overfitting regime is "
        + ("reached." if ok else "NOT reached (" + _missed(gap, clean) + ").")
    )


def orderings(cards: list[dict[str, Any]], which: str = "last") -> str:
    """For each pair the paper ranks (DHAT, UIAT, AWP) and each column: the paper's sign and
    ours (difference of seed means; higher is better except the gap)."""
    s = summary(cards, which)
    rows = ["| comparison | column | paper | ours | same order |", "|---|---|---|---|---|"]
    pairs = [("dhat_frozen", "uiat"), ("dhat_frozen", "awp"), ("uiat", "awp")]
    for a, b in pairs:
        if a not in s or b not in s:
            continue
        pa, pb = PAPER[PAPER_ROW[a]], PAPER[PAPER_ROW[b]]
        for i, key in enumerate(PAPER_COLS):
            if key not in s[a] or key not in s[b]:
                continue
            paper_d, ours_d = pa[i] - pb[i], s[a][key][0] - s[b][key][0]
            rows.append(
                f"| {a} − {b} | {key} | {paper_d:+.2f} | {ours_d:+.2f} | "
                f"{'yes' if (paper_d > 0) == (ours_d > 0) else 'no'} |"
            )
    return "\n".join(rows)


TERMS = {  # record terms of each column's per-image statistic (dhat.eval.records names)
    "clean": [(1.0, "test|clean")],
    "pgd10": [(1.0, "test|pgd10")],
    "cw": [(1.0, "test|cw")],
    "aa": [(1.0, "aa|robust")],
    "gap": [(1.0, "gap|train"), (-1.0, "gap|test")],
}


def paired(cards: list[dict[str, Any]], a: str, b: str, key: str, which: str = "last"):
    """A − B in column `key` (points), paired image by image within each seed both have, with
    a hierarchical bootstrap interval over seeds and images (`dhat.analysis.paired`); None when
    a card lacks the measure."""
    from dhat.analysis.paired import hierarchical_bootstrap, paired_values
    from dhat.eval.records import card_records

    def by_seed(v):
        return {c["seed"]: c for c in cards if c["variant"] == v and c["checkpoint"] == which}

    ca, cb = by_seed(a), by_seed(b)
    seeds = sorted(set(ca) & set(cb))
    if not seeds or any(
        key != "gap" and value(c, key) is None for c in [*ca.values(), *cb.values()]
    ):
        return None
    per_seed = [
        paired_values(ca[s], card_records(ca[s]), cb[s], card_records(cb[s]), TERMS[key])
        for s in seeds
    ]
    r = hierarchical_bootstrap(per_seed)
    return {**r, "value": 100 * r["value"], "ci": [100 * x for x in r["ci"]]}


def paired_section(cards: list[dict[str, Any]], which: str = "last") -> str:
    """Paired differences against pgd_at and against uiat (points; 95 % interval from
    resampling seeds, then images within each seed)."""
    variants = [v for v in ORDER if any(c["variant"] == v for c in cards)]
    parts = []
    for ref in ("pgd_at", "uiat"):
        if ref not in variants:
            continue
        rows = [
            f"| variant − {ref} | seeds | Clean | PGD-10 | CW∞ | AA | Robust gap |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in variants:
            if v in (ref, "standard"):
                continue
            cells, n = [], 0
            for key in ("clean", "pgd10", "cw", "aa", "gap"):
                d = paired(cards, v, ref, key, which)
                n = d["n_seeds"] if d else n
                cells.append(
                    "–"
                    if d is None
                    else f"{d['value']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"
                )
            rows.append(f"| {v} | {n} | " + " | ".join(cells) + " |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts) or "_No pgd_at or uiat cards yet._"


def curves(cards: list[dict[str, Any]], path: Path) -> None:
    """Train vs held-out accuracy per epoch, one panel per variant (its first seed): robust
    (training attack on the training batches, train-mode BN; validation PGD on the held-out
    images) and clean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown: dict[str, dict[str, Any]] = {}
    for c in cards:
        shown.setdefault(c["variant"], c)
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), squeeze=False)
    for ax, (v, c) in zip(axes[0], shown.items()):
        log = c["log"]
        ep = [r["epoch"] for r in log]
        if "adv_acc" in log[0]:
            ax.plot(ep, [100 * r["adv_acc"] for r in log], "C3-", label="train robust")
        ax.plot(ep, [100 * r["val_robust_acc"] for r in log], "C3--", label="held-out robust")
        if "clean_acc" in log[0]:
            ax.plot(ep, [100 * r["clean_acc"] for r in log], "C0-", label="train clean")
        ax.plot(ep, [100 * r["val_clean_acc"] for r in log], "C0--", label="held-out clean")
        ax.set_title(f"{v} (seed {c['seed']})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path) -> str:
    cards = load(out)
    if not cards:
        raise SystemExit(f"no cards under {out / 'cards'}: run the eval phase first")
    parts = [
        "## End of training (last.pt; the paper's gap is measured here), means ± sd over seeds",
        paper_table(cards, "last"),
        regime(cards),
        "## Which of the paper's orderings hold here (end of training, seed means)",
        orderings(cards),
        "## Paired differences (per image, seeds included)",
        paired_section(cards),
    ]
    if any(c["checkpoint"] == "best" for c in cards):
        parts += [
            "## Validation-selected checkpoint (best.pt), means ± sd over seeds",
            paper_table(cards, "best"),
        ]
    parts += ["## Every run", runs_table(cards)]
    text = "\n\n".join(parts)
    (out / "results.md").write_text(text + "\n")
    curves(cards, out / "learning_curves.png")
    print(text)
    return text


def _missed(gap: float, clean: float) -> str:
    """Which of the regime's two targets PGD-AT misses."""
    missed = [f"gap < {TARGET_GAP:g}"] if gap < TARGET_GAP else []
    missed += [f"clean < {TARGET_CLEAN:g} %"] if clean < TARGET_CLEAN else []
    return " and ".join(missed)

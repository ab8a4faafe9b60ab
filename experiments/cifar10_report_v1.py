"""Tables and figures of the first CIFAR-10 study (v1), made from its validated result cards.

python experiments/cifar10_study_v1.py --report
"""

from __future__ import annotations

import json
from pathlib import Path

from dhat.eval import read_card

ORDER = ["pgd_at", "uiat", "uiat_hoisted", "dhat_official", "dhat_paper"]


def load(out: Path) -> list[dict]:
    cards = []
    for p in sorted((out / "cards").glob("*.json")):
        if p.name.endswith(".meta.json"):
            continue
        card = read_card(p)  # validated: refuses a self-contradicting card
        card.update(json.loads(p.with_suffix(".meta.json").read_text()))
        card["log"] = read_log(out, card)
        cards.append(card)
    rank = {v: i for i, v in enumerate(ORDER)}
    return sorted(cards, key=lambda c: (rank.get(c["variant"], 99), c["seed"], c["weights"]))


def read_log(out: Path, card: dict) -> list[dict]:
    """A run's `log.jsonl`: the committed copy under `out/logs/`, else the run directory's."""
    log = out / "logs" / f"{card['variant']}_s{card['seed']}.jsonl"
    if not log.is_file():
        log = Path(card["run_dir"]) / "log.jsonl"
    return [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]


def aa_check(card: dict) -> str:
    s = next((c for c in card["sanity"] if c["check"] == "aa_vs_pgd"), None)
    return "–" if s is None else s["status"]


def main_table(cards: list[dict]) -> str:
    first = next(c for c in cards if c["weights"] == "model")  # EMA cards carry no AA
    rows = [
        f"| variant | seed | best epoch | Clean (n={first['n_test']}) | PGD-10 | PGD-20 | "
        f"CW∞ | AA (n={first['n_aa']}) | AA vs PGD check | Robust gap (train − test, "
        f"n={first['robust_gap']['n_train']}) | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cards:
        if c["weights"] != "model":
            continue
        a, g = c["accuracy"], c["robust_gap"]
        rows.append(
            f"| {c['variant']} | {c['seed']} | {c['epoch'] + 1} | {100 * a['clean']:.2f} | "
            f"{100 * a['pgd10']:.2f} | {100 * a['pgd20']:.2f} | {100 * a['cw']:.2f} | "
            f"{100 * a['aa']:.2f} | {aa_check(c)} | {100 * g['gap']:.2f} "
            f"({100 * g['train']:.2f} − {100 * g['test']:.2f}) | "
            f"{sum(e['seconds'] for e in c['log']) / 60:.1f} |"
        )
    return "\n".join(rows)


def mean_table(cards: list[dict]) -> str:
    rows = [
        "| variant | seeds | Clean | PGD-10 | PGD-20 | CW∞ | AA | Robust gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in ORDER:
        cs = [c for c in cards if c["variant"] == v and c["weights"] == "model"]
        if not cs:
            continue
        avg = {
            k: 100 * sum(c["accuracy"][k] for c in cs) / len(cs)
            for k in ("clean", "pgd10", "pgd20", "cw", "aa")
        }
        gap = 100 * sum(c["robust_gap"]["gap"] for c in cs) / len(cs)
        rows.append(
            f"| {v} | {len(cs)} | {avg['clean']:.2f} | {avg['pgd10']:.2f} | "
            f"{avg['pgd20']:.2f} | {avg['cw']:.2f} | {avg['aa']:.2f} | {gap:.2f} |"
        )
    return "\n".join(rows)


def ema_table(cards: list[dict]) -> str:
    rows = [
        "| variant | seed | weights | best epoch (selected on raw) | Clean | PGD-10 | "
        "final-epoch val PGD (raw / EMA) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cards:
        ema = next(
            (
                e
                for e in cards
                if e["variant"] == c["variant"] and e["seed"] == c["seed"] and e["weights"] == "ema"
            ),
            None,
        )
        if c["weights"] != "model" or ema is None:
            continue
        last = c["log"][-1]
        for card in (c, ema):
            rows.append(
                f"| {c['variant']} | {c['seed']} | {card['weights']} | {c['epoch'] + 1} | "
                f"{100 * card['accuracy']['clean']:.2f} | "
                f"{100 * card['accuracy']['pgd10']:.2f} | "
                f"{100 * last['val_robust_acc']:.1f} / "
                f"{100 * last['val_robust_acc_ema']:.1f} |"
            )
    return "\n".join(rows)


def hoist_table(cards: list[dict]) -> str:
    rows = [
        "| seed | uiat (authors' forwards) val PGD / test PGD-10 / clean | uiat_hoisted | "
        "difference (authors − hoisted) |",
        "|---|---|---|---|",
    ]
    for seed in sorted({c["seed"] for c in cards}):
        a = next(
            (
                c
                for c in cards
                if c["variant"] == "uiat" and c["seed"] == seed and c["weights"] == "model"
            ),
            None,
        )
        b = next(
            (
                c
                for c in cards
                if c["variant"] == "uiat_hoisted" and c["seed"] == seed and c["weights"] == "model"
            ),
            None,
        )
        if a is None or b is None:
            continue

        def trio(c):
            return (
                100 * max(r["val_robust_acc"] for r in c["log"]),
                100 * c["accuracy"]["pgd10"],
                100 * c["accuracy"]["clean"],
            )

        ta, tb = trio(a), trio(b)
        rows.append(
            f"| {seed} | {ta[0]:.1f} / {ta[1]:.2f} / {ta[2]:.2f} | "
            f"{tb[0]:.1f} / {tb[1]:.2f} / {tb[2]:.2f} | "
            + " / ".join(f"{x - y:+.2f}" for x, y in zip(ta, tb))
            + " |"
        )
    return "\n".join(rows)


def weights_check(out: Path, cards: list[dict]) -> None:
    """Compare the final weights of `uiat` and `uiat_hoisted` runs of one seed: parameters
    should be identical, BatchNorm running statistics not. Writes `uiat_forwards_check.json`
    when the runs' `last.pt` are here (they are not committed); keeps the file otherwise."""
    import torch

    found = {}
    for seed in sorted({c["seed"] for c in cards}):
        runs = {
            c["variant"]: Path(c["run_dir"]) / "last.pt"
            for c in cards
            if c["seed"] == seed and c["variant"] in ("uiat", "uiat_hoisted")
        }
        if len(runs) < 2 or not all(p.is_file() for p in runs.values()):
            continue
        a, b = (torch.load(runs[v], weights_only=True)["model"] for v in ("uiat", "uiat_hoisted"))
        is_bn = [k for k in a if "running_" in k]
        params = [k for k in a if k not in is_bn and "num_batches" not in k]
        found[f"seed {seed}"] = {
            "parameters_max_abs_diff": max((a[k] - b[k]).abs().max().item() for k in params),
            "bn_running_stats_max_abs_diff": max((a[k] - b[k]).abs().max().item() for k in is_bn),
            "parameters": len(params),
            "bn_buffers": len(is_bn),
        }
    if found:
        (out / "uiat_forwards_check.json").write_text(json.dumps(found, indent=2))


def curves(cards: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for c in cards:
        if c["weights"] != "model":
            continue
        ep = [r["epoch"] for r in c["log"]]
        colour = f"C{ORDER.index(c['variant']) % 10}"
        style = "-" if c["seed"] == 0 else "--"
        label = c["variant"] if c["seed"] == 0 else None
        axes[0].plot(ep, [r["loss"] for r in c["log"]], style, color=colour, label=label)
        axes[1].plot(ep, [100 * r["val_robust_acc"] for r in c["log"]], style, color=colour)
        if "val_robust_acc_ema" in c["log"][0] and c["variant"] in ("pgd_at", "dhat_official"):
            axes[2].plot(
                ep,
                [100 * r["val_robust_acc"] for r in c["log"]],
                style,
                color=colour,
                label=f"{c['variant']} raw" if c["seed"] == 0 else None,
            )
            axes[2].plot(
                ep,
                [100 * r["val_robust_acc_ema"] for r in c["log"]],
                style,
                color=colour,
                alpha=0.5,
                marker="o",
                ms=3,
                label=f"{c['variant']} EMA" if c["seed"] == 0 else None,
            )
    for ax, t in zip(
        axes,
        ["training loss", "validation PGD accuracy (%)", "validation PGD accuracy, raw vs EMA (%)"],
    ):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.suptitle("CIFAR-10 (4,500 images, PreActResNet-18 width 8): solid seed 0, dashed seed 1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(out: Path) -> None:
    cards = load(out)
    text = "\n\n".join(
        [
            "## Every run (validation-selected checkpoint)",
            main_table(cards),
            "## Means over seeds",
            mean_table(cards),
            "## Weight averaging (EMA of the same runs; the raw weights are unaffected by it)",
            ema_table(cards),
            "## UIAT: the authors' forwards vs hoisted (identical weight updates, different BN "
            "running statistics)",
            hoist_table(cards),
        ]
    )
    (out / "results.md").write_text(text + "\n")
    weights_check(out, cards)
    curves(cards, out / "learning_curves.png")
    print(text)

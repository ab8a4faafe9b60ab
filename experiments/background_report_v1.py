"""Tables and figures of the background study, made from its result cards (and run logs).

python experiments/background_study_v1.py --report
"""

from __future__ import annotations

import json
import math
from pathlib import Path

VARIANT_ORDER = [
    "standard",
    "pgd_at",
    "uiat_inv2",
    "uiat_inv4",
    "uiat_inv8",
    "uiat_inv12",
    "dhat_official",
    "dhat_paper_dhlr",
    "dhat_paper_floe",
]
SPLITS = ["test", "mixed_same", "mixed_rand", "only_fg", "only_bg"]


def load(out: Path) -> list[dict]:
    from dhat.eval.card import validate_card

    cards = []
    for p in sorted((out / "cards").glob("*.json")):
        card = json.loads(p.read_text())
        validate_card(card, str(p))
        cards.append(card)
    rank = {v: i for i, v in enumerate(VARIANT_ORDER)}
    return sorted(cards, key=lambda c: (rank.get(c["variant"], 99), c["seed"]))


def pct(m: dict) -> str:
    lo, hi = m["ci"]
    return f"{100 * m['value']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def iou(m: dict) -> str:
    lo, hi = m["ci"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def inverse_key(att: dict) -> str:
    return next(k for k in att if k.startswith("inverse"))


def accuracy_table(cards: list[dict], attack: str) -> str:
    head = ["variant", "seed", *SPLITS, f"BG-gap ({attack})"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cards:
        b = c["background"]
        cells = [pct(b["accuracy"][s][attack]) for s in SPLITS]
        rows.append(
            f"| {c['variant']} | {c['seed']} | "
            + " | ".join(cells)
            + f" | **{pct(b['bg_gap'][attack])}** |"
        )
    return "\n".join(rows)


def attention_table(cards: list[dict]) -> str:
    head = [
        "variant",
        "seed",
        "ε_inv of x̌",
        "fg IoU mixed_rand",
        "bg IoU mixed_rand",
        "fg IoU mixed_rand (x̌)",
        "bg IoU mixed_rand (x̌)",
        "fg IoU mixed_same",
        "bg IoU mixed_same",
        "CAM area (mixed_rand)",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cards:
        a = c["background"]["attention"]
        r, s = a["mixed_rand"], a["mixed_same"]
        k = inverse_key(r)
        rows.append(
            f"| {c['variant']} | {c['seed']} | {k.split()[-1]} | "
            f"{iou(r['natural']['fg_iou'])} | {iou(r['natural']['bg_iou'])} | "
            f"{iou(r[k]['fg_iou'])} | {iou(r[k]['bg_iou'])} | "
            f"{iou(s['natural']['fg_iou'])} | {iou(s['natural']['bg_iou'])} | "
            f"{r['natural']['cam_area']['value']:.3f} |"
        )
    return "\n".join(rows)


def gap_table(cards: list[dict]) -> str:
    head = [
        "variant",
        "seed",
        "best epoch",
        "clean (test)",
        "PGD-10 (test)",
        "robust gap train − test (PGD-10)",
        "BG-gap clean",
        "BG-gap PGD-10",
        "train min",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cards:
        g, b = c["robust_gap"], c["background"]
        lo, hi = g["ci"]
        rows.append(
            f"| {c['variant']} | {c['seed']} | {c['epoch'] + 1} | "
            f"{100 * c['accuracy']['clean']:.1f} | {100 * c['accuracy']['pgd10']:.1f} | "
            f"{100 * g['gap']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"({100 * g['train']:.1f} − {100 * g['test']:.1f}) | "
            f"{100 * b['bg_gap']['clean']['value']:.1f} | "
            f"{100 * b['bg_gap']['pgd10']['value']:.1f} | "
            f"{sum(e['seconds'] for e in c['log']) / 60:.1f} |"
        )
    return "\n".join(rows)


def means(cards: list[dict]) -> dict[str, dict[str, float]]:
    """Per variant, the mean over seeds of the headline numbers."""
    out: dict[str, dict[str, list[float]]] = {}
    for c in cards:
        b, r = c["background"], c["background"]["attention"]["mixed_rand"]
        k = inverse_key(r)
        vals = {
            "pgd10": c["accuracy"]["pgd10"],
            "clean": c["accuracy"]["clean"],
            "bg_gap": b["bg_gap"]["clean"]["value"],
            "bg_gap_pgd10": b["bg_gap"]["pgd10"]["value"],
            "fg_iou": r["natural"]["fg_iou"]["value"],
            "bg_iou": r["natural"]["bg_iou"]["value"],
            "fg_iou_inv": r[k]["fg_iou"]["value"],
            "bg_iou_inv": r[k]["bg_iou"]["value"],
            "robust_gap": c["robust_gap"]["gap"],
            "only_bg": b["accuracy"]["only_bg"]["clean"]["value"],
            "only_fg": b["accuracy"]["only_fg"]["clean"]["value"],
        }
        for key, v in vals.items():
            out.setdefault(c["variant"], {}).setdefault(key, []).append(v)
    return {v: {k: sum(x) / len(x) for k, x in d.items()} for v, d in out.items()}


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sxy / (sx * sy) if sx and sy else float("nan")


def summary_table(m: dict[str, dict[str, float]]) -> str:
    head = [
        "variant",
        "clean",
        "PGD-10",
        "BG-gap",
        "BG-gap PGD-10",
        "only_bg",
        "only_fg",
        "fg IoU",
        "bg IoU",
        "fg IoU (x̌)",
        "bg IoU (x̌)",
        "robust gap",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in VARIANT_ORDER:
        if v not in m:
            continue
        d = m[v]
        rows.append(
            f"| {v} | {100 * d['clean']:.1f} | {100 * d['pgd10']:.1f} | "
            f"{100 * d['bg_gap']:.1f} | {100 * d['bg_gap_pgd10']:.1f} | "
            f"{100 * d['only_bg']:.1f} | {100 * d['only_fg']:.1f} | "
            f"{d['fg_iou']:.3f} | {d['bg_iou']:.3f} | {d['fg_iou_inv']:.3f} | "
            f"{d['bg_iou_inv']:.3f} | {100 * d['robust_gap']:.1f} |"
        )
    return "\n".join(rows)


def curves(cards: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for c in cards:
        ep = [r["epoch"] for r in c["log"]]
        style = "-" if c["seed"] == 0 else "--"
        colour = f"C{VARIANT_ORDER.index(c['variant']) % 10}"
        label = c["variant"] if c["seed"] == 0 else None
        axes[0].plot(ep, [r["loss"] for r in c["log"]], style, color=colour, label=label)
        axes[1].plot(ep, [100 * r["val_clean_acc"] for r in c["log"]], style, color=colour)
        axes[2].plot(ep, [100 * r["val_robust_acc"] for r in c["log"]], style, color=colour)
    for ax, t in zip(
        axes, ["training loss", "validation clean accuracy (%)", "validation PGD accuracy (%)"]
    ):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("fashion_scenes: solid seed 0, dashed seed 1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def overlays(
    cards: list[dict],
    out: Path,
    data_root: str,
    variants=("standard", "pgd_at", "uiat_inv12", "dhat_official"),
) -> list[Path]:
    """image | mask | Grad-CAM on mixed_rand test images, one figure per variant (seed 0)."""
    import torch

    from dhat.analysis.attention import attention_maps
    from dhat.analysis.overlay import save_overlay_grid
    from dhat.checkpoint import load_model
    from dhat.data import load_dataset

    n_test = cards[0]["eval_config"]["background_n"] or cards[0]["n_test"]
    data = load_dataset("fashion_scenes", data_root, n_train=0, n_test=n_test, rho=0.9)
    split = data.splits["mixed_rand"]
    x, y, m = split.x[:200], split.y[:200], split.masks[:200]
    paths = []
    for v in variants:
        card = next((c for c in cards if c["variant"] == v and c["seed"] == 0), None)
        if card is None:
            continue
        if not Path(card["checkpoint"]).is_file():
            print(f"overlay of {v}: {card['checkpoint']} is not here, figure kept as it is")
            continue
        model = load_model(card["checkpoint"])
        torch.manual_seed(0)
        cams = attention_maps(model, x, y)
        p = out / f"overlay_{v}.png"
        save_overlay_grid(p, x, m, cams, y, data.class_names, per_class=2)
        paths.append(p)
    return paths


def write_report(out: Path, data_root: str = "../shared/data") -> None:
    cards = load(out)
    m = means(cards)
    robust = [v for v in m if v != "standard"]
    r_gap = pearson([m[v]["robust_gap"] for v in robust], [m[v]["bg_gap"] for v in robust])
    r_gap_rob = pearson(
        [m[v]["robust_gap"] for v in robust], [m[v]["bg_gap_pgd10"] for v in robust]
    )
    text = "\n\n".join(
        [
            "## Means over seeds",
            summary_table(m),
            f"Pearson r across the {len(robust)} adversarially trained variants "
            "(means over seeds): "
            f"robust gap vs clean BG-gap {r_gap:.2f}; robust gap vs PGD-10 BG-gap {r_gap_rob:.2f}.",
            "## Clean accuracy per split (%, 95 % bootstrap interval over test images)",
            accuracy_table(cards, "clean"),
            "## PGD-10 accuracy per split (%, 95 % interval)",
            accuracy_table(cards, "pgd10"),
            "## Grad-CAM IoU (true class, binarised at 0.5; 95 % interval)",
            attention_table(cards),
            "## Robust gap and BG-gap",
            gap_table(cards),
        ]
    )
    (out / "results.md").write_text(text + "\n")
    (out / "summary.json").write_text(
        json.dumps(
            {
                "means": m,
                "pearson_robust_gap_bg_gap": r_gap,
                "pearson_robust_gap_bg_gap_pgd10": r_gap_rob,
            },
            indent=2,
        )
    )
    curves(cards, out / "learning_curves.png")
    overlays(cards, out, data_root)
    print(text)

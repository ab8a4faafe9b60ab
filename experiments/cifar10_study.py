"""PGD-AT vs UIAT vs DHAT (official and paper variants) on real CIFAR-10, CPU-sized.

Trains each variant with the same model, training subset, schedule and seed, evaluates the
validation-selected checkpoint on the full test set (clean, PGD-10, PGD-20, CW-inf), on the
first `--aa-n` test images with standard AutoAttack, and the robust gap; writes
`results.md`, one JSON per run, `learning_curves.png` and `study.json` (config + commit).

    python experiments/cifar10_study.py --data-root ../shared/data/cifar10
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dhat.config import EvalConfig, TrainConfig
from dhat.eval import evaluate_checkpoint
from dhat.train import train

VARIANTS = {
    "pgd_at": dict(method="pgd_at"),
    "uiat": dict(method="uiat"),
    "dhat_official": dict(method="dhat"),
    "dhat_paper": dict(method="dhat", method_args={"dhlr": "paper", "floe": "paper"}),
}


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train_config(args, name: str, seed: int) -> TrainConfig:
    v = VARIANTS[name]
    return TrainConfig(
        dataset="cifar10", data_root=args.data_root, train_subset=args.train_subset,
        val_size=args.val_size, model="preact_resnet18", model_args={"width": args.width},
        method=v["method"], method_args=dict(v.get("method_args", {})), steps=args.train_steps,
        epochs=args.epochs, milestones=args.milestones, batch_size=128, lr=0.1,
        val_steps=args.train_steps, out_dir=str(args.out / "runs" / f"{name}_s{seed}"),
        seed=seed, progress=args.progress)


def run_one(args, name: str, seed: int) -> dict:
    """Train (or resume) and evaluate one variant; a finished variant's card is reused."""
    done = args.out / f"{name}_s{seed}.json"
    if done.is_file() and "variant" in (card := json.loads(done.read_text())):
        return card
    cfg = train_config(args, name, seed)
    run_dir = Path(cfg.out_dir)
    t0 = time.perf_counter()
    if not (run_dir / "last.pt").is_file() or \
            torch.load(run_dir / "last.pt", weights_only=True)["epoch"] + 1 < cfg.epochs:
        train(cfg, resume=True, overwrite=True)
    train_s = time.perf_counter() - t0
    card = evaluate_checkpoint(EvalConfig(
        checkpoint=str(run_dir / "best.pt"), data_root=args.data_root,
        attacks=["clean", "pgd10", "pgd20", "cw"], n_test=args.n_test,
        gap_train_images=args.gap_train_images, out=str(args.out / f"{name}_s{seed}.json")),
        progress=args.progress)
    card.update(variant=name, seed=seed, train_seconds=round(train_s, 1),
                log=[json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines()])
    Path(card["path"]).write_text(json.dumps(card, indent=2))
    return card


def add_autoattack(args, card: dict) -> dict:
    """Standard AutoAttack on the first `--aa-n` test images of the card's checkpoint."""
    from dhat.attacks.autoattack import run_autoattack
    from dhat.checkpoint import load_model
    from dhat.data import load_dataset
    data = load_dataset("cifar10", args.data_root)
    model = load_model(card["checkpoint"])
    t0 = time.perf_counter()
    card["autoattack"] = run_autoattack(model, data.test_x[:args.aa_n], data.test_y[:args.aa_n],
                                        eps=card["eps"], batch_size=500, device="cpu", seed=0)
    card["autoattack"]["seconds"] = round(time.perf_counter() - t0, 1)
    card["accuracy"]["aa"] = card["autoattack"]["robust_accuracy"]
    Path(card["path"]).write_text(json.dumps(card, indent=2))
    return card


def table(cards: list[dict], args) -> str:
    rows = ["| variant | seed | best epoch | Clean | PGD-10 | PGD-20 | CW∞ | AA (first %d) | Robust gap (train − test) | train min |" % args.aa_n,
            "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cards:
        a, g = c["accuracy"], c.get("robust_gap", {})
        aa = f"{100 * a['aa']:.2f}" if "aa" in a else "—"
        rows.append(f"| {c['variant']} | {c['seed']} | {c['epoch'] + 1} | {100 * a['clean']:.2f} | "
                    f"{100 * a['pgd10']:.2f} | {100 * a['pgd20']:.2f} | {100 * a['cw']:.2f} | {aa} | "
                    f"{100 * g.get('gap', float('nan')):.2f} ({100 * g.get('train', float('nan')):.2f} − "
                    f"{100 * g.get('test', float('nan')):.2f}) | {c['train_seconds'] / 60:.1f} |")
    return "\n".join(rows)


def plot(cards: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for c in cards:
        ep = [r["epoch"] for r in c["log"]]
        label = f"{c['variant']} s{c['seed']}"
        axes[0].plot(ep, [r["loss"] for r in c["log"]], label=label)
        axes[1].plot(ep, [100 * r["val_robust_acc"] for r in c["log"]], label=label)
        axes[2].plot(ep, [100 * r["val_clean_acc"] for r in c["log"]], label=label)
    for ax, t in zip(axes, ["training loss", "validation PGD accuracy (%)", "validation clean accuracy (%)"]):
        ax.set_title(t)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data/cifar10")
    p.add_argument("--out", type=Path, default=Path("experiments/results/cifar10_study"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--milestones", type=int, nargs="*", default=[6, 7])
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--n-test", type=int, default=0)
    p.add_argument("--gap-train-images", type=int, default=2000)
    p.add_argument("--aa-n", type=int, default=200,
                   help="standard AutoAttack on the first N test images (~2 min per 100 images per model here)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"commit": git_commit(), "argv": sys.argv, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "configs": {f"{v}_s{s}": asdict(train_config(args, v, s))
                        for s in args.seeds for v in args.variants}}
    study = args.out / "study.json"
    if study.is_file():  # keep the record of earlier invocations (e.g. a resumed study)
        old = json.loads(study.read_text())
        meta["invocations"] = old.get("invocations", []) + [
            {"commit": meta["commit"], "argv": meta["argv"]}]
    study.write_text(json.dumps(meta, indent=2, default=str))
    cards = []
    for seed in args.seeds:
        for name in args.variants:
            cards.append(run_one(args, name, seed))
            print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}: {cards[-1]['accuracy']}", flush=True)
            (args.out / "results.md").write_text(table(cards, args) + "\n")
    plot(cards, args.out / "learning_curves.png")
    for card in cards if args.aa_n else []:  # AutoAttack last: the slowest, and optional
        if card.get("autoattack", {}).get("n") == args.aa_n:
            continue
        add_autoattack(args, card)
        print(f"[{time.strftime('%H:%M:%S')}] AA {card['variant']} seed {card['seed']}: "
              f"{card['accuracy']['aa']:.4f}", flush=True)
        (args.out / "results.md").write_text(table(cards, args) + "\n")
    print(table(cards, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

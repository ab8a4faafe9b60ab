"""Where do adversarially trained models look? PGD-AT vs UIAT (several ε_inv) vs DHAT.

Trains each variant with the same small model on the built-in `shapes` dataset, whose
training backgrounds agree with the class with probability ρ (default 0.9) and whose test
backgrounds are independent of it, then measures on the decorrelated test split: clean and
PGD-10 accuracy, and the IoU of the binarised Grad-CAM (true class, threshold 0.5) with the
object mask (foreground IoU) and with the rest of the image (background IoU). Writes
`results.md`, `results.json`, `study.json` (configs + commit) and an overlay figure.

    python experiments/attention_study.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dhat.analysis.attention import attention_iou, attention_maps
from dhat.analysis.overlay import save_overlay_grid
from dhat.checkpoint import load_model
from dhat.config import TrainConfig
from dhat.data import load_dataset
from dhat.eval import correct_under, make_attack
from dhat.train import train

sys.path.insert(0, str(Path(__file__).parent))
from study_record import git_commit  # noqa: E402  (a sibling script module)


def variants(args) -> dict[str, tuple[str, dict]]:
    out = {"pgd_at": ("pgd_at", {})}
    for e in args.uiat_eps:
        out[f"uiat_inv{e:g}"] = ("uiat", {"eps_inv": e / 255})
    out["dhat_official"] = ("dhat", {})
    out["dhat_paper"] = ("dhat", {"dhlr": "paper", "floe": "paper"})
    return out


def train_config(args, name: str, method: str, method_args: dict) -> TrainConfig:
    return TrainConfig(
        dataset="shapes",
        dataset_args={
            "n_train": args.n_train,
            "n_test": args.n_test,
            "rho": args.rho,
            "seed": args.data_seed,
        },
        val_size=args.val_size,
        model=args.model,
        model_args={"width": args.width},
        method=method,
        method_args=method_args,
        steps=args.train_steps,
        val_steps=args.train_steps,
        epochs=args.epochs,
        milestones=args.milestones,
        batch_size=128,
        lr=args.lr,
        out_dir=str(args.out / "runs" / name),
        seed=args.seed,
        progress=args.progress,
    )


def measure(args, name: str, cfg: TrainConfig, data) -> dict:
    model = load_model(Path(cfg.out_dir) / "best.pt")
    x, y, m = data.test_x[: args.n_eval], data.test_y[: args.n_eval], data.test_masks[: args.n_eval]
    clean = correct_under(model, x, y, None).float().mean().item()
    robust = (
        correct_under(model, x, y, make_attack("pgd10", 8 / 255, 2 / 255)).float().mean().item()
    )
    att = attention_iou(
        model, x, y, m, threshold=args.threshold, inverse_eps=args.inverse_eps / 255
    )
    inv = next(iter(att["inverse"].values()))
    return {
        "variant": name,
        "method": cfg.method,
        "method_args": cfg.method_args,
        "clean": clean,
        "pgd10": robust,
        "fg_iou": att["fg_iou"],
        "bg_iou": att["bg_iou"],
        "cam_area": att["cam_area"],
        "inv_fg_iou": inv["fg_iou"],
        "inv_bg_iou": inv["bg_iou"],
        "attention": att,
    }


def table(rows: list[dict], args) -> str:
    lines = [
        "| variant | clean | PGD-10 | fg IoU | bg IoU | CAM area | "
        f"fg IoU (x̌ {args.inverse_eps:g}/255) | bg IoU (x̌) | train min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {100 * r['clean']:.1f} | {100 * r['pgd10']:.1f} | "
            f"{r['fg_iou']:.3f} | {r['bg_iou']:.3f} | {r['cam_area']:.3f} | "
            f"{r['inv_fg_iou']:.3f} | {r['inv_bg_iou']:.3f} | {r['train_seconds'] / 60:.1f} |"
        )
    return "\n".join(lines)


def overlay(args, names: list[str], data) -> None:
    """One overlay grid per named variant: image | mask | Grad-CAM, 2 images per class."""
    for name in names:
        model = load_model(args.out / "runs" / name / "best.pt")
        x, y, m = data.test_x[:200], data.test_y[:200], data.test_masks[:200]
        cams = attention_maps(model, x, y)
        save_overlay_grid(
            args.out / f"overlay_{name}.png", x, m, cams, y, data.class_names, per_class=2
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("experiments/results/attention_study"))
    p.add_argument("--only", nargs="*", default=None, help="train only these variants")
    p.add_argument("--uiat-eps", type=float, nargs="+", default=[2, 4, 8, 12], help="ε_inv in /255")
    p.add_argument("--rho", type=float, default=0.9)
    p.add_argument("--n-train", type=int, default=4500)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--milestones", type=int, nargs="*", default=[4, 5])
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument(
        "--inverse-eps", type=float, default=8, help="inverse images for the x̌ columns, /255"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    todo = {k: v for k, v in variants(args).items() if not args.only or k in args.only}
    cfgs = {k: train_config(args, k, *v) for k, v in todo.items()}
    (args.out / "study.json").write_text(
        json.dumps(
            {
                "commit": git_commit(),
                "argv": sys.argv,
                "torch": torch.__version__,
                "configs": {k: asdict(c) for k, c in cfgs.items()},
            },
            indent=2,
            default=str,
        )
    )
    data = load_dataset("shapes", n_train=0, n_test=args.n_test, seed=args.data_seed)
    rows = []
    for name, cfg in cfgs.items():
        t0 = time.perf_counter()
        train(cfg, overwrite=True)
        row = measure(args, name, cfg, data)
        row["train_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(
            f"[{time.strftime('%H:%M:%S')}] {name}: clean {row['clean']:.3f} "
            f"pgd10 {row['pgd10']:.3f} "
            f"fg {row['fg_iou']:.3f} bg {row['bg_iou']:.3f}",
            flush=True,
        )
        (args.out / "results.md").write_text(table(rows, args) + "\n")
        (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    overlay(
        args,
        [n for n in ("pgd_at", f"uiat_inv{max(args.uiat_eps):g}", "dhat_official") if n in cfgs],
        data,
    )
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

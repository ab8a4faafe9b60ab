"""Does inverse adversarial training move attention to the background, and does DHAT move it
back? PGD-AT, UIAT at several ε_inv and three DHAT variants on `fashion_scenes`.

Every variant trains the same model with the same data, schedule and seeds, on Fashion-MNIST
items pasted onto CIFAR-10 scenes whose class agrees with the label 90 % of the time. The
validation-selected checkpoint of each run is evaluated by `dhat.eval.evaluate_checkpoint`
(one result card per run): clean and PGD-10 accuracy on the test, mixed_same, mixed_rand,
only_fg and only_bg splits, the BG-gap (mixed_same − mixed_rand), Grad-CAM foreground and
background IoU on natural and inverse images (at the run's ε_inv; 4/255 for methods
without one), and the robust gap, each with a 95 % bootstrap interval over test images.

    python experiments/background_study_v1.py --seeds 0 &     # one process per seed, in parallel
    python experiments/background_study_v1.py --seeds 1 &
    python experiments/background_study_v1.py --report        # table, curves, overlays

Finished runs and cards are reused, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dhat.config import EvalConfig, TrainConfig
from dhat.eval import evaluate_checkpoint
from dhat.train import train

sys.path.insert(0, str(Path(__file__).parent))
from study_record import record_invocation  # noqa: E402  (a sibling script module)

OUT = Path("experiments/results/background_study_v1")
UIAT_EPS = (2, 4, 8, 12)


def variants() -> dict[str, tuple[str, dict]]:
    out: dict[str, tuple[str, dict]] = {"standard": ("standard", {}), "pgd_at": ("pgd_at", {})}
    for e in UIAT_EPS:
        out[f"uiat_inv{e}"] = ("uiat", {"eps_inv": e / 255})
    out["dhat_official"] = ("dhat", {})
    out["dhat_paper_dhlr"] = ("dhat", {"dhlr": "paper"})
    out["dhat_paper_floe"] = ("dhat", {"floe": "paper"})
    return out


def train_config(args, name: str, seed: int) -> TrainConfig:
    method, method_args = variants()[name]
    return TrainConfig(
        dataset="fashion_scenes",
        data_root=args.data_root,
        dataset_args={"n_train": args.n_train, "n_test": args.n_test, "rho": args.rho},
        val_size=args.val_size,
        augment=args.augment,
        model="small_cnn",
        model_args={"width": args.width},
        method=method,
        method_args=dict(method_args),
        steps=args.train_steps,
        val_steps=args.train_steps,
        epochs=args.epochs,
        milestones=args.milestones,
        batch_size=128,
        lr=args.lr,
        out_dir=str(args.out / "runs" / f"{name}_s{seed}"),
        seed=seed,
        progress=args.progress,
    )


def eval_config(args, run_dir: Path, card: Path) -> EvalConfig:
    return EvalConfig(
        checkpoint=str(run_dir / "best.pt"),
        data_root=args.data_root,
        attacks=["clean", "pgd10"],
        n_test=args.n_test,
        gap_train_images=args.gap_train_images,
        background_n=args.n_test,
        sanity=True,
        sanity_n=100,
        out=str(card),
    )


def run_one(args, name: str, seed: int) -> dict:
    """Train (or finish) one run and evaluate it; a finished card is reused."""
    card_path = args.out / "cards" / f"{name}_s{seed}.json"
    if card_path.is_file():
        return json.loads(card_path.read_text())
    cfg = train_config(args, name, seed)
    run_dir = Path(cfg.out_dir)
    last = run_dir / "last.pt"
    if not last.is_file() or torch.load(last, weights_only=True)["epoch"] + 1 < cfg.epochs:
        train(cfg, resume=last.is_file(), overwrite=not last.is_file())
    card = evaluate_checkpoint(eval_config(args, run_dir, card_path), progress=args.progress)
    log = [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines()]
    card.update(
        variant=name,
        seed=seed,
        train_seconds=round(sum(e["seconds"] for e in log), 1),  # summed over resumes
        log=log,
    )
    card_path.write_text(json.dumps(card, indent=2))
    return card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=list(variants()), choices=list(variants()))
    p.add_argument("--rho", type=float, default=0.9)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--gap-train-images", type=int, default=1000)
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="crop + flip (off: the budget then fits the training set better)",
    )
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--milestones", type=int, nargs="*", default=[7, 8])
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only (re)write the table and figures")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    (args.out / "cards").mkdir(parents=True, exist_ok=True)
    if args.report:
        sys.path.insert(0, str(Path(__file__).parent))
        from background_report_v1 import write_report

        write_report(args.out, data_root=args.data_root)
        return 0
    record_invocation(
        args.out,
        args.seeds,
        args.threads,
        {f"{v}_s{s}": train_config(args, v, s) for s in args.seeds for v in args.variants},
        eval_config(args, Path("RUN"), Path("CARD")),
    )
    for seed in args.seeds:
        for name in args.variants:
            card = run_one(args, name, seed)
            b = card["background"]
            print(
                f"[{time.strftime('%H:%M:%S')}] {name} s{seed}: mixed_same "
                f"{b['accuracy']['mixed_same']['clean']['value']:.3f} mixed_rand "
                f"{b['accuracy']['mixed_rand']['clean']['value']:.3f} BG-gap "
                f"{b['bg_gap']['clean']['value']:.3f} pgd10 {card['accuracy']['pgd10']:.3f} "
                f"({card['train_seconds'] / 60:.1f} min)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

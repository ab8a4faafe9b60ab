"""PGD-AT vs UIAT vs DHAT (official and paper variants) on real CIFAR-10, CPU-sized: the first
CIFAR-10 study (v1, kept so that its committed table can be remade; the current study is
`cifar10_study.py`).

Trains each variant with the same model, training subset, schedule and seeds, and evaluates
the validation-selected checkpoint through `dhat.eval.evaluate_checkpoint` — clean, PGD-10,
PGD-20, CW∞, standard AutoAttack on the first `--aa-n` test images (with its sanity checks
against PGD on the same images) and the robust gap — into one validated result card per run.
Every run also keeps an EMA of its weights (`--ema-decay`; it does not change the raw
training), whose clean and PGD-10 accuracy is measured for PGD-AT and DHAT (the weight-
averaging study). `uiat` makes the DHAT authors' forwards; `uiat_hoisted` hoists them (same
weights, different BatchNorm running statistics). Writes `results.md` (from the cards),
`cards/*.json`, `logs/*.jsonl` (each run's training log), `learning_curves.png` and `study.json`
(configs, commits, invocations).

    python experiments/cifar10_study_v1.py --seeds 0 &     # one process per seed, in parallel
    python experiments/cifar10_study_v1.py --seeds 1 &
    python experiments/cifar10_study_v1.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dhat.config import EvalConfig, TrainConfig
from dhat.eval import evaluate_checkpoint, read_card
from dhat.train import train

sys.path.insert(0, str(Path(__file__).parent))
from study_record import record_invocation  # noqa: E402  (a sibling script module)

OUT = Path("experiments/results/cifar10_study_v1")
VARIANTS: dict[str, tuple[str, dict]] = {
    "pgd_at": ("pgd_at", {}),
    "uiat": ("uiat", {}),
    "uiat_hoisted": ("uiat", {"hoist_forwards": True}),
    "dhat_official": ("dhat", {}),
    "dhat_paper": ("dhat", {"dhlr": "paper", "floe": "paper"}),
}
EMA_VARIANTS = ("pgd_at", "dhat_official")


def train_config(args, name: str, seed: int) -> TrainConfig:
    method, method_args = VARIANTS[name]
    return TrainConfig(
        dataset="cifar10",
        data_root=args.data_root,
        train_subset=args.train_subset,
        val_size=args.val_size,
        model="preact_resnet18",
        model_args={"width": args.width},
        method=method,
        method_args=dict(method_args),
        steps=args.train_steps,
        epochs=args.epochs,
        milestones=args.milestones,
        batch_size=128,
        lr=0.1,
        val_steps=args.train_steps,
        ema_decay=args.ema_decay,
        out_dir=str(args.out / "runs" / f"{name}_s{seed}"),
        seed=seed,
        progress=args.progress,
    )


def eval_config(args, run_dir: Path, card: Path, weights: str = "model") -> EvalConfig:
    full = weights == "model"
    return EvalConfig(
        checkpoint=str(run_dir / "best.pt"),
        data_root=args.data_root,
        weights=weights,
        n_test=args.n_test,
        aa_n=args.aa_n if full else 0,
        attacks=["clean", "pgd10", "pgd20", "cw", "aa"] if full else ["clean", "pgd10"],
        gap_train_images=args.gap_train_images,
        sanity=full,
        out=str(card),
    )


def run_one(args, name: str, seed: int) -> list[dict]:
    """Train (or finish) one run and evaluate it (and its EMA weights); finished cards are
    reused."""
    cfg = train_config(args, name, seed)
    run_dir = Path(cfg.out_dir)
    cards_dir = args.out / "cards"
    todo = [("model", cards_dir / f"{name}_s{seed}.json")]
    if name in EMA_VARIANTS:
        todo.append(("ema", cards_dir / f"{name}_s{seed}_ema.json"))
    if all(p.is_file() for _, p in todo):
        return [read_card(p) for _, p in todo]
    last = run_dir / "last.pt"
    if not last.is_file() or torch.load(last, weights_only=True)["epoch"] + 1 < cfg.epochs:
        train(cfg, resume=last.is_file())
    log = (run_dir / "log.jsonl").read_text().splitlines()
    (args.out / "logs").mkdir(exist_ok=True)  # committed beside the cards; runs/ is not
    (args.out / "logs" / f"{name}_s{seed}.jsonl").write_text("\n".join(log) + "\n")
    train_s = round(sum(json.loads(ln)["seconds"] for ln in log if ln.strip()), 1)  # resumes too
    out = []
    for weights, path in todo:
        if path.is_file():
            out.append(read_card(path))
            continue
        card = evaluate_checkpoint(
            eval_config(args, run_dir, path, weights), progress=args.progress
        )
        meta = {"variant": name, "seed": seed, "weights": weights, "train_seconds": train_s}
        (path.with_suffix(".meta.json")).write_text(json.dumps(meta, indent=2))
        out.append(card)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data/cifar10")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--milestones", type=int, nargs="*", default=[6, 7])
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--gap-train-images", type=int, default=2000)
    p.add_argument(
        "--aa-n",
        type=int,
        default=200,
        help="standard AutoAttack on the first N test images (~2 min per 100 images "
        "per model on this CPU)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only (re)write the table and figure")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    (args.out / "cards").mkdir(parents=True, exist_ok=True)
    if args.report:
        sys.path.insert(0, str(Path(__file__).parent))
        from cifar10_report_v1 import write_report

        write_report(args.out)
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
            for card in run_one(args, name, seed):
                print(
                    f"[{time.strftime('%H:%M:%S')}] {name} s{seed} ({card['weights']}): "
                    f"{ {k: round(100 * v, 2) for k, v in card['accuracy'].items()} }",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

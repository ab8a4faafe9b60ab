"""Does inverse adversarial training move attention to the background, and does DHAT move it
back? The background study, in the regime where adversarial training overfits.

Fashion-MNIST items on CIFAR-10 scenes (`fashion_scenes`), scene class = label with
probability rho (0.9), little data (1,500 training images, 300 of them held out for
selection) and long training (40 epochs, lr ÷10 at 32 and 37), so that PGD-AT overfits
(a robust gap of 10+ points), leans on the scene (a BG-gap) and reads the object less.

Variants (4 seeds each, same data, schedule and attack budget):
    standard          CE, best.pt selected on clean validation accuracy; also the frozen
                      Grad-CAM network of `dhat_frozen` (same seed)
    pgd_at            PGD-AT
    uiat_inv4/12      UIAT at ε_inv 4/255 and 12/255
    dhat_self         DHAT, official loss forms, mask from the model being trained
    dhat_frozen       DHAT, the official recipe: mask from the frozen standard network
    dhat_dhlr         DHAT with the paper's DHLR (self mask)
    calib_object      calibration: PGD-AT on images whose scene is random (rho 0.1)
    calib_scene       calibration: PGD-AT labelled by the scene's class (rho 0.1)
and a rho sweep of PGD-AT (rho 0.5, 0.7, 1.0; 0.9 is `pgd_at`) on seeds 0 and 1.

Phases (each resumable: finished runs and cards are reused, an interrupted run resumes):
    python experiments/background_study.py train --seeds 0 2 &   # two processes, one thread each
    python experiments/background_study.py train --seeds 1 3 &
    python experiments/background_study.py eval                  # cards + per-image records
    python experiments/background_study.py report                # tables and figures

Checkpoints go to --runs (outside git); cards, per-image records, tables, figures and the
study record (every invocation with its commit) to experiments/results/background_study.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dhat.config import EvalConfig, TrainConfig
from dhat.train import train

sys.path.insert(0, str(Path(__file__).parent))
from study_record import record_invocation  # noqa: E402  (a sibling script module)

OUT = Path("experiments/results/background_study")
RUNS = Path("../runs/background_study")
RHO_SWEEP = (0.5, 0.7, 1.0)
RHO_SEEDS = (0, 1)


@dataclass(frozen=True)
class Variant:
    """One row of the study: a method with its options and the data it trains on."""

    method: str
    method_args: dict = field(default_factory=dict)
    rho: float = 0.9
    label: str = "object"
    select_metric: str = "robust"


def variants() -> dict[str, Variant]:
    out = {
        "standard": Variant("standard", select_metric="clean"),
        "pgd_at": Variant("pgd_at"),
        "uiat_inv4": Variant("uiat", {"eps_inv": 4 / 255}),
        "uiat_inv12": Variant("uiat", {"eps_inv": 12 / 255}),
        "dhat_self": Variant("dhat"),
        "dhat_frozen": Variant("dhat", {"cam_model": "{standard}"}),
        "dhat_dhlr": Variant("dhat", {"dhlr": "paper"}),
        "calib_object": Variant("pgd_at", rho=0.1),
        "calib_scene": Variant("pgd_at", rho=0.1, label="scene"),
    }
    for rho in RHO_SWEEP:
        out[f"pgd_at_rho{rho:g}"] = Variant("pgd_at", rho=rho)
    return out


MAIN = [k for k in variants() if not k.startswith("pgd_at_rho")]
SWEEP = [k for k in variants() if k.startswith("pgd_at_rho")]


def run_dir(args, name: str, seed: int) -> Path:
    return args.runs / f"{name}_s{seed}"


def train_config(args, name: str, seed: int) -> TrainConfig:
    v = variants()[name]
    method_args = {
        k: (str(run_dir(args, "standard", seed) / "best.pt") if val == "{standard}" else val)
        for k, val in v.method_args.items()
    }
    return TrainConfig(
        dataset="fashion_scenes",
        data_root=args.data_root,
        dataset_args={
            "n_train": args.n_train,
            "n_test": args.n_test,
            "rho": v.rho,
            "label": v.label,
        },
        val_size=args.val_size,
        augment=False,
        model="small_cnn",
        model_args={"width": args.width},
        method=v.method,
        method_args=method_args,
        steps=args.train_steps,
        val_steps=args.train_steps,
        epochs=args.epochs,
        milestones=args.milestones,
        batch_size=128,
        lr=args.lr,
        select_metric=v.select_metric,  # type: ignore[arg-type]  # a Literal checked by the config
        out_dir=str(run_dir(args, name, seed)),
        seed=seed,
        progress=args.progress,
        threads=args.threads,
    )


def finished(cfg: TrainConfig) -> bool:
    last = Path(cfg.out_dir) / "last.pt"
    return last.is_file() and torch.load(last, weights_only=True)["epoch"] + 1 >= cfg.epochs


def train_one(args, name: str, seed: int) -> None:
    cfg = train_config(args, name, seed)
    if finished(cfg):
        return
    last = Path(cfg.out_dir) / "last.pt"
    t0 = time.time()
    train(cfg, resume=last.is_file(), overwrite=not last.is_file())
    log = [json.loads(ln) for ln in (Path(cfg.out_dir) / "log.jsonl").read_text().splitlines()]
    end = log[-1]
    print(
        f"[{time.strftime('%H:%M:%S')}] {name} s{seed}: {time.time() - t0:.0f} s; last epoch "
        f"train_adv {end.get('train_adv_acc', float('nan')):.3f} val_clean "
        f"{end['val_clean_acc']:.3f} val_robust {end['val_robust_acc']:.3f}",
        flush=True,
    )


def plan(seeds: list[int], names: list[str]) -> list[tuple[str, int]]:
    """Seed by seed: the main variants (standard first: dhat_frozen needs it), then that
    seed's rho sweep where it has one."""
    jobs = []
    for s in seeds:
        jobs += [(n, s) for n in MAIN if n in names]
        jobs += [(n, s) for n in SWEEP if n in names and s in RHO_SEEDS]
    return jobs


def eval_config(args, rdir: Path, card: Path, records: Path) -> EvalConfig:
    return EvalConfig(
        checkpoint=str(rdir / "best.pt"),
        data_root=args.data_root,
        attacks=["clean", "pgd10"],
        n_test=args.eval_n,
        gap_train_images=args.gap_train_images,
        background_n=args.eval_n,
        sanity=True,
        sanity_n=100,
        out=str(card),
        records=str(records),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["train", "eval", "report"])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--runs", type=Path, default=RUNS, help="checkpoints (outside git)")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--variants", nargs="+", default=list(variants()), choices=list(variants()))
    p.add_argument("--n-train", type=int, default=1500)
    p.add_argument("--n-test", type=int, default=2000, help="test-side images generated")
    p.add_argument("--eval-n", type=int, default=1000, help="images evaluated per split")
    p.add_argument("--val-size", type=int, default=300)
    p.add_argument("--gap-train-images", type=int, default=1000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--milestones", type=int, nargs="*", default=[32, 37])
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    p.add_argument(
        "--watch", action="store_true", help="eval: wait for unfinished runs and evaluate them"
    )
    p.add_argument(
        "--selected",
        action="store_true",
        help="eval: also the validation-selected best.pt (clean, PGD-10, robust gap)",
    )
    p.add_argument(
        "--inverse",
        action="store_true",
        help="eval: the attention measures on inverse images (ε_inv 4/255) too",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = plan(args.seeds, args.variants)
    if args.phase == "report":
        from background_report import write_report

        write_report(args.out)
        return 0
    if args.phase == "train":
        # a run's resolved config is saved beside it (config.yaml) and collected by `eval`:
        # dhat_frozen's config cannot be built before its standard network exists
        record_invocation(args.out, args.seeds, args.threads, {}, None)
        for name, seed in jobs:
            train_one(args, name, seed)
        return 0
    trained = [(n, s) for n, s in jobs if (run_dir(args, n, s) / "last.pt").is_file()]
    record_invocation(
        args.out,
        args.seeds,
        args.threads,
        {f"{n}_s{s}": train_config(args, n, s) for n, s in trained},
        eval_config(args, Path("RUN"), Path("CARD"), Path("RECORDS")),
    )
    from background_eval import evaluate_all

    evaluate_all(args, jobs, watch=args.watch)
    return 0


if __name__ == "__main__":
    sys.exit(main())

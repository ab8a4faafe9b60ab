"""Evaluate one checkpoint: clean, PGD, CW, AutoAttack, the robust gap, sanity checks,
robustness curves and background-reliance measures, into one validated result card.

`evaluate_model` measures; `evaluate_checkpoint` loads a checkpoint (or a plain state dict),
checks that its card can be written *before* the first attack, measures, builds the card
(`card.build_card`) and writes it (to a named fallback path if the target fails).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..attacks.registry import (
    Batches,
    Context,
    describe,
    get_attack,
    local_batches,
    uses_autoattack,
)
from ..attacks.spec import make_attack
from ..checkpoint import model_from_state, read_checkpoint
from ..config import DEFAULT_ATTACKS, EvalConfig, config_hash, resolve_device
from ..data import DataBundle, load_dataset, validation_split
from ..data.cifar import data_folder
from ..data.datasets import check_dataset_args
from ..errors import UserError
from ..io import file_sha256
from .background import background_measures, robust_gap_ci
from .card import SCHEMA, check_writable, fallback_path, save_card, validate_card
from .records import images_sha256, records_path, write_records
from .robust import correct_under

Log = Callable[[str], None] | None


def environment() -> dict[str, Any]:
    """Library versions and hardware, recorded with every result."""
    import numpy

    from .. import __version__
    from ..attacks.autoattack import import_autoattack

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    try:
        _, aa_name, aa_version = import_autoattack()
        aa = f"{aa_name} {aa_version}"
    except UserError:
        aa = None
    return {
        "dhat": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "autoattack_package": aa,
        "hardware": f"{dev}; {platform.processor() or platform.machine()}; "
        f"{torch.get_num_threads()} CPU threads",
    }


def training_images(
    data: DataBundle, cfg: dict[str, Any], n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` images (seeded order) of the images the run trained on (its subset minus
    its validation split), without augmentation."""
    seed = cfg.get("seed", 0)
    if cfg.get("train_subset"):
        data.subset_train(cfg["train_subset"], seed)
    train_idx, _ = validation_split(data.train_y, cfg.get("val_size", 0), seed)
    order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed))]
    pick = order[:n]
    view = getattr(data, "train_view", None)  # e.g. imagefolder: center crop to the resolution
    x = data.train_x[pick]
    return (view(x) if view else x), data.train_y[pick]


def attack_settings(attacks, eps: float, step_size: float) -> dict[str, str]:
    """A line per attack saying exactly what was run (for the result card)."""
    return {name: describe(name, eps, step_size) for name in attacks}


class Autocast(torch.nn.Module):
    """`inner` run under `torch.autocast(device_type, bfloat16)`, its logits returned as fp32:
    every forward and backward through it (the attacks' included) computes in bf16 where
    autocast does, while inputs, perturbations and projections stay fp32 outside it."""

    def __init__(self, inner: torch.nn.Module, device_type: str):
        super().__init__()
        self.inner, self.device_type = inner, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.inner(x).float()


def with_amp(model: torch.nn.Module, amp: str, device) -> torch.nn.Module:
    """`model` itself for amp "off", else wrapped in `Autocast` on `device`'s type."""
    if amp == "off":
        return model
    if amp != "bf16":
        raise UserError(f"amp must be 'off' or 'bf16', got '{amp}'")
    return Autocast(model, torch.device(device).type)


def evaluate_model(
    model,
    data: DataBundle,
    *,
    attacks,
    eps: float,
    step_size: float,
    n_test: int = 0,
    gap_train: tuple[torch.Tensor, torch.Tensor] | None = None,
    batch_size: int = 256,
    device="cpu",
    progress: bool = True,
    seed: int = 0,
    aa_n: int = 0,
    sanity: bool = False,
    sanity_n: int = 100,
    curves: bool = False,
    curves_n: int = 1000,
    background: bool = True,
    background_n: int = 0,
    inverse_eps: tuple[float, ...] = (),
    log: Log = None,
    records: dict[str, Any] | None = None,
    batches: Batches = local_batches,
    aa_budget: dict[str, int] | None = None,
    amp: str = "off",
) -> dict[str, Any]:
    """Accuracy (fraction) under each named attack (`dhat.attacks.registry`) on the first
    `n_test` test images (AutoAttack's, "aa" and its single attacks, on the first `aa_n`,
    default `n_test`), per-image worst case over all of them ("worst_case", on the images
    every attack saw), the robust gap
    (PGD-10 train minus test) when `gap_train` images are given, robustness curves and sanity
    checks when asked, and the background-reliance measures (`background.py`) when the dataset
    has object/background splits. `progress`: tqdm bars; `log`: one line per finished part.
    With `records` (a dict), the per-image values behind every number are added to it
    (`records.py` names them), and the result's "images_sha256" identifies each image set.
    `batches` runs each attack's batches (a resumable or sharded runner); `aa_budget`
    ({"n_iter", "n_queries"}) shrinks AutoAttack for tests. `amp` "bf16" runs every forward
    and attack under bf16 autocast (`Autocast`); the sanity checks then add amp_vs_fp32."""
    from .sanity import check_train_mode, run_sanity_checks

    mode_check = check_train_mode(model) if sanity else None  # before anything sets eval mode
    fp32_model, model = model, with_amp(model, amp, device)
    x, y = data.test_x, data.test_y
    if n_test:
        x, y = x[:n_test], y[:n_test]
    acc: dict[str, float] = {}
    correct: dict[str, torch.Tensor] = {}
    n_images: dict[str, int] = {}
    out: dict[str, Any] = {"n_test": len(y), "images_sha256": {"test": images_sha256(x, y)}}
    ctx = Context(
        eps=eps,
        step_size=step_size,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
        log=log,
        batches=batches,
        aa_budget=dict(aa_budget or {}),
    )
    n_aa = min(aa_n or len(y), len(y))
    for name in attacks:
        attack = get_attack(name)
        m = n_aa if attack.images == "aa" else len(y)
        result = attack.run(model, x[:m], y[:m], ctx)
        correct[name], n_images[name] = result.correct.bool().cpu(), m
        acc[name] = correct[name].float().mean().item() if m else 0.0
        if records is not None:
            records[attack.record] = correct[name]
        if name == "aa":
            out["images_sha256"]["aa"] = images_sha256(x[:m], y[:m])
            out["autoattack"], out["n_aa"] = result.record, m
        elif result.record is not None:
            out.setdefault("attack_records", {})[name] = result.record
        if log is not None and attack.family != "autoattack":
            log(f"  {name}: {100 * acc[name]:.2f}%")
    out["n_images"] = n_images
    if any(get_attack(k).family != "clean" for k in correct):
        m = min(n_images.values())
        worst = torch.stack([v[:m] for v in correct.values()]).all(0)
        out["worst_case"] = {
            "accuracy": worst.float().mean().item() if m else 0.0,
            "n": m,
            "attacks": list(correct),
        }
        out["images_sha256"]["worst"] = images_sha256(x[:m], y[:m])
        if records is not None:
            records["worst|robust"] = worst
    aa_robust = correct.get("aa")
    out["accuracy"] = acc
    if gap_train is not None and len(gap_train[1]):
        pgd10 = make_attack("pgd10", eps, step_size)
        test_correct = correct.get("pgd10")
        if test_correct is None:  # as if requested, without the runner (not resumed)
            local = Context(eps, step_size, seed, batch_size, device)
            test_correct = get_attack("pgd10").run(model, x, y, local).correct
        torch.manual_seed(seed)
        train_correct = correct_under(
            model,
            *gap_train,
            pgd10,
            batch_size=batch_size,
            device=device,
            desc="gap (train)" if progress else None,
        )
        train, test = train_correct.float().mean().item(), test_correct.float().mean().item()
        out["images_sha256"]["gap_train"] = images_sha256(*gap_train)
        if records is not None:
            records["gap|train"], records["gap|test"] = train_correct, test_correct
        out["robust_gap"] = {
            "attack": "pgd10",
            "train": train,
            "test": test,
            "gap": train - test,
            "n_train": len(gap_train[1]),
            "ci": robust_gap_ci(train_correct, test_correct, seed=seed)["ci"],
        }
    if background and data.splits:
        attacks_bg = {"clean": None, "pgd10": make_attack("pgd10", eps, step_size)}
        out["background"] = background_measures(
            model,
            data.splits,
            attacks=attacks_bg,
            inverse_eps=inverse_eps,
            n=background_n or len(y),
            batch_size=batch_size,
            device=device,
            seed=seed,
            records=records,
        )
    if curves:
        from .curves import robustness_curves

        m = curves_n or len(y)
        out["curves"] = robustness_curves(
            model,
            x[:m],
            y[:m],
            eps=eps,
            step_size=step_size,
            batch_size=batch_size,
            device=device,
            seed=seed,
            log=log,
        )
    if sanity:
        out["sanity"] = run_sanity_checks(
            model,
            x,
            y,
            eps=eps,
            step_size=step_size,
            n=sanity_n,
            batch_size=batch_size,
            device=device,
            seed=seed,
            correct=correct,
            aa_robust=aa_robust,
            aa_warnings=out.get("autoattack", {}).get("warnings"),
            curves=out.get("curves"),
            train_mode=mode_check,
            fp32_model=fp32_model if amp != "off" else None,
        )
    out["amp"] = amp
    return out


def load_for_eval(cfg: EvalConfig, device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model to evaluate and what the card says about it (dhat checkpoint or plain weights).
    The card's "epoch" counts from 1, as log.jsonl does (a checkpoint stores it from 0, which
    resume relies on); for plain weights it is the export sidecar's, also from 1."""
    if cfg.weights_file:
        from ..models.weights import load_weights_file

        model, info = load_weights_file(
            cfg.weights_file,
            cfg.model,
            num_classes=cfg.num_classes,
            model_args=cfg.model_args,
            normalization=cfg.normalization,
            device=device,
        )
        meta = info.get("sidecar") or {}
        return model, {
            "source": "state-dict",
            "checkpoint": str(cfg.weights_file),
            "checkpoint_sha256": info["sha256"],
            "weights": "model",
            "epoch": meta.get("epoch"),
            "run_dir": None,
            "model": info["model"],
            "model_kwargs": info["model_kwargs"],
            "num_classes": info["num_classes"],
            "normalization": {
                "mean": info["mean"],
                "std": info["std"],
                "source": info["normalization_source"],
            },
            "method": meta.get("method"),
            "method_args": {},
            "method_options": {},
            "config_hash": meta.get("config_hash"),
            "run_config": {},
            "dataset_default": meta.get("dataset"),
            "eps_default": meta.get("eps"),
            "robustbench_model": info.get("robustbench_model"),
        }
    if not cfg.checkpoint:
        raise UserError(
            "pass a checkpoint (a best.pt/last.pt of `dhat train`) or --weights-file "
            "FILE --model NAME"
        )
    state = read_checkpoint(cfg.checkpoint)
    run_cfg = state.get("config", {})
    if cfg.weights != "model":
        extra = state.get("extra_models", {})
        if cfg.weights not in extra:
            raise UserError(
                f"{cfg.checkpoint} holds no '{cfg.weights}' weights; it has: "
                f"{', '.join(['model', *extra])}"
            )
        state = {**state, "model": extra[cfg.weights]}
    model = model_from_state(state, device)
    spec = state["model_spec"]
    return model, {
        "source": "dhat-checkpoint",
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": file_sha256(cfg.checkpoint),
        "weights": cfg.weights,
        "epoch": None if state.get("epoch") is None else state["epoch"] + 1,  # as log.jsonl
        "run_dir": str(Path(cfg.checkpoint).resolve().parent),
        "model": spec["name"],
        "model_kwargs": spec.get("kwargs", {}),
        "num_classes": spec["num_classes"],
        "normalization": {
            "mean": [float(v) for v in model.mean.flatten()],
            "std": [float(v) for v in model.std.flatten()],
            "source": "checkpoint",
        },
        "method": state.get("method"),
        "method_args": run_cfg.get("method_args", {}),
        "method_options": state.get("method_options", {}),
        "config_hash": config_hash(run_cfg),
        "run_config": run_cfg,
        "dataset_default": run_cfg.get("dataset"),
        "eps_default": run_cfg.get("eps"),
    }


def run_inverse_eps(info: dict[str, Any]) -> list[float]:
    """The run's ε_inv (its resolved method options, or the method's default), else 4/255."""
    from ..methods import method_options

    resolved = info.get("method_options") or {}
    if "eps_inv" in resolved:
        return [float(resolved["eps_inv"])]
    if "eps_inv" in info.get("method_args", {}):
        return [float(info["method_args"]["eps_inv"])]
    try:
        spec = method_options(info["method"]).get("eps_inv") if info.get("method") else None
    except UserError:
        spec = None
    return [float(spec.default) if spec is not None else 4 / 255]


def default_card_path(cfg: EvalConfig, checkpoint: str) -> Path:
    """`--out`, else a name beside the checkpoint that names the checkpoint, the weights and
    what was measured, so evaluations of one checkpoint with other attacks never overwrite
    each other: eval_best.json (the default attacks), eval_best_clean-pgd20-cw-aa.json,
    eval_best_curves.json, eval_best_ema_eps4.json, ..."""
    if cfg.out:
        return Path(cfg.out)
    src = Path(checkpoint)
    tag = "" if cfg.weights == "model" else f"_{cfg.weights}"
    if list(cfg.attacks) != list(DEFAULT_ATTACKS):
        tag += "_" + "-".join(cfg.attacks)
    if cfg.eps is not None:
        tag += f"_eps{cfg.eps * 255:g}"
    if cfg.curves:
        tag += "_curves"
    return src.with_name(f"eval_{src.stem}{tag}.json")


def curves_png_path(card_path: Path) -> Path:
    """The curves figure beside a card: eval_best_curves.json -> eval_best_curves.png."""
    stem = card_path.stem
    return card_path.with_name(f"{stem}.png" if stem.endswith("_curves") else f"{stem}_curves.png")


def checkpoint_cards(checkpoint: str | Path, weights: str = "model") -> list[Path]:
    """The result cards written beside `checkpoint` by default for these weights (every
    eval_<stem>[_<weights>]*.json), newest first; a card's own check says whose it is."""
    src = Path(checkpoint)
    head = f"eval_{src.stem}" + ("" if weights == "model" else f"_{weights}")
    found = [p for p in src.parent.glob(f"{head}*.json") if not p.name.endswith(".meta.json")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


@dataclass
class Evaluation:
    """A finished evaluation, not yet written: the validated card, its per-image records
    (None with `records="off"`), the card's path and the pin of its folder."""

    card: dict[str, Any]
    records: dict[str, Any] | None
    out: Path
    pin: Any  # dhat.rundir.FolderPin
    state: Any = None  # runner.Resumable: removed once the card is written
    main: bool = True  # rank 0 (or a single process): the one that writes
    group: Any = None  # dhat.distributed.Dist of a sharded evaluation


def evaluate_checkpoint(
    cfg: EvalConfig,
    progress: bool = True,
    write: bool = True,
    log: Log = None,
    check_out: bool | None = None,
) -> dict[str, Any]:
    """Load `cfg.checkpoint` (or `cfg.weights_file`), evaluate it and return the validated
    result card (with "path" when written). With `write`, the card, its per-image records and
    the curves PNG are written (`write_evaluation`). That the card's folder is writable is
    checked before the first attack (with `write`, or `check_out=True` for a caller that
    writes the card itself). `log` receives progress lines, among them a duration estimate
    before a long evaluation."""
    ev = run_evaluation(cfg, progress, log, check_out=write if check_out is None else check_out)
    if ev.group is not None:
        from ..distributed import cleanup_distributed

        cleanup_distributed(ev.group)
    if write and ev.main:
        ev.card["path"] = str(write_evaluation(ev, cfg))
    elif ev.state is not None:  # nothing to resume: the evaluation is complete
        ev.state.finish()
    return ev.card


def run_evaluation(
    cfg: EvalConfig,
    progress: bool = True,
    log: Log = None,
    check_out: bool = True,
    *,
    resume: bool = False,
    shard: bool = False,
    aa_budget: dict[str, int] | None = None,
) -> Evaluation:
    """The evaluation of `evaluate_checkpoint`, without writing anything.

    Every finished attack batch is saved in a state file beside the card (`runner.py`);
    `resume` continues from it (the card is the uninterrupted run's). With `shard` under
    `torchrun` (WORLD_SIZE > 1; `dhat eval` sets it) the attacks' batches are split across
    the ranks and gathered; every rank returns the same card, and only rank 0's
    `Evaluation.main` is set (it alone writes).
    `aa_budget` shrinks AutoAttack (tests and benchmarks only; the card says so)."""
    import os

    from ..distributed import setup_distributed
    from .runner import Resumable, Sharded, state_path

    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if shard and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        group, device = setup_distributed(str(resolve_device(cfg.device)))
    else:
        group, device = None, resolve_device(cfg.device)
    main = group is None or group.main
    if not main:
        log, progress, check_out = None, False, False
    model, info = load_for_eval(cfg, device)
    out = default_card_path(cfg, info["checkpoint"])
    from ..rundir import pin_folder  # here: dhat.train imports dhat.eval (a cycle)

    pin = pin_folder(out)  # a card is never written into a run an overwrite replaced since
    if check_out:
        check_writable(out)
    run_cfg = info.pop("run_config")
    dataset = cfg.dataset or info.get("dataset_default") or "cifar10"
    same = dataset == run_cfg.get("dataset")
    root = cfg.data_root or (run_cfg.get("data_root") if same else None)
    dataset_args = (
        check_dataset_args(dataset, dict(run_cfg.get("dataset_args") or {})) if same else {}
    )
    # a checkpoint's recorded download flag is not honoured: evaluation never downloads
    data = load_dataset(dataset, root, **dataset_args)
    if log is not None and dataset.startswith("cifar"):
        log(f"data: {data_folder(dataset, root)}")
    if data.num_classes != info["num_classes"]:
        raise UserError(
            f"the model has {info['num_classes']} classes but {dataset} has "
            f"{data.num_classes}; pass --dataset (or --num-classes)"
        )
    eps = cfg.eps if cfg.eps is not None else (info.get("eps_default") or 8 / 255)
    if uses_autoattack(cfg.attacks):  # a missing AutoAttack fails before any work
        from ..attacks.autoattack import import_autoattack

        import_autoattack()
    if log is not None:
        if not cfg.dataset:
            log(f"dataset: {dataset} (the checkpoint's)")
        est = estimate_seconds(model, data, cfg, device, eps)
        if est > 60:
            log(
                f"estimated duration: about {est / 60:.0f} min on this machine "
                "(from one timed batch; AutoAttack varies with robustness)"
            )
    inverse_eps = tuple(cfg.inverse_eps or run_inverse_eps(info))
    torch.manual_seed(cfg.seed)
    gap = training_images(data, run_cfg, cfg.gap_train_images) if cfg.gap_train_images else None
    records: dict[str, Any] | None = {} if cfg.records != "off" else None
    n = min(cfg.n_test or len(data.test_y), len(data.test_y))
    identity = {
        "checkpoint_sha256": info["checkpoint_sha256"],
        "weights": cfg.weights,
        "attacks": list(cfg.attacks),
        "images_sha256": images_sha256(data.test_x[:n], data.test_y[:n]),
        "aa_n": min(cfg.aa_n or n, n),
        "seed": cfg.seed,
        "eps": eps,
        "step_size": cfg.step_size,
        "batch_size": cfg.batch_size,
        "aa_budget": dict(aa_budget or {}),
        "amp": cfg.amp,
    }
    sharded = Sharded(group.rank, group.world_size) if group is not None else None
    state = Resumable(state_path(out), identity, resume=resume, inner=sharded, write=main)
    if sharded is not None and log is not None:
        log(
            f"sharded: {sharded.world_size} processes run every attack's batches "
            "(curves, sanity checks, robust gap and background measures on every rank)"
        )
    if state.resumed and log is not None:
        log(f"resuming: {state.resumed} finished attack batches from {state.path}")
    result = evaluate_model(
        model,
        data,
        attacks=cfg.attacks,
        eps=eps,
        step_size=cfg.step_size,
        n_test=cfg.n_test,
        gap_train=gap,
        batch_size=cfg.batch_size,
        device=device,
        progress=progress,
        seed=cfg.seed,
        aa_n=cfg.aa_n,
        sanity=cfg.sanity,
        sanity_n=cfg.sanity_n,
        curves=cfg.curves,
        curves_n=cfg.curves_n,
        background=cfg.background,
        background_n=cfg.background_n,
        inverse_eps=inverse_eps,
        log=log,
        records=records,
        batches=state,
        aa_budget=aa_budget,
        amp=cfg.amp,
    )
    card = build_card(result, info, cfg, dataset=dataset, eps=eps, seconds=time.perf_counter() - t0)
    validate_card(card)
    return Evaluation(card, records, out, pin, state, main, group)


def write_evaluation(ev: Evaluation, cfg: EvalConfig) -> Path:
    """Write an evaluation: its per-image records, the curves PNG and the card, atomically,
    inside the pin of the card's folder; the one write path of the library and the CLI.
    If an overwrite replaced the run meanwhile, the results go to a fallback card (named in
    a warning) instead of being lost. Returns the card's path."""
    import warnings

    from ..rundir import RunSwapped  # here: dhat.train imports dhat.eval (a cycle)

    card, out = ev.card, ev.out
    rpath = Path(cfg.records) if cfg.records else records_path(out)
    png = curves_png_path(out)
    try:
        with ev.pin.write(*[p for p in (out, rpath, png) if p]):
            path = _write(card, ev.records, out, rpath, png)
        if ev.state is not None:
            ev.state.finish()
        return path
    except (RunSwapped, OSError) as e:  # replaced by an overwrite, or no longer writable
        why = str(e) if isinstance(e, RunSwapped) else f"could not write {out} ({e.strerror})"
        alt = fallback_path(out)
        warnings.warn(f"{why}; the result card is at {alt} instead", stacklevel=2)
        return _write(card, ev.records, alt, records_path(alt), curves_png_path(alt))


def _write(card, records, out: Path, rpath: Path, png: Path) -> Path:
    if records is not None:
        card["records"] = {
            "file": rpath.name if rpath.parent.resolve() == out.parent.resolve() else str(rpath),
            "sha256": write_records(rpath, records),
            "names": sorted(records),
        }
    if "curves" in card:
        plot_card_curves(card, png)
    return save_card(card, out)


def build_card(
    result: dict[str, Any],
    info: dict[str, Any],
    cfg: EvalConfig,
    *,
    dataset: str,
    eps: float,
    seconds: float,
) -> dict[str, Any]:
    """The result card of one evaluation (see card.py)."""
    import datetime

    acc = result["accuracy"]
    summary = {k: round(100 * v, 2) for k, v in acc.items()}
    if "worst_case" in result:
        summary["worst_case"] = round(100 * result["worst_case"]["accuracy"], 2)
    if "robust_gap" in result:
        summary["robust_gap"] = round(100 * result["robust_gap"]["gap"], 2)
    sanity = result.get("sanity", [])
    return {
        "schema": SCHEMA,
        **{
            k: info[k]
            for k in ("checkpoint", "checkpoint_sha256", "source", "weights", "epoch", "run_dir")
        },
        "dataset": dataset,
        "split": "test",
        "threat_model": "Linf",
        "eps": eps,
        "eps_255": round(eps * 255, 3),
        "step_size": cfg.step_size,
        "amp": result.get("amp", "off"),
        **{
            k: info[k]
            for k in (
                "model",
                "model_kwargs",
                "num_classes",
                "normalization",
                "method",
                "method_args",
                "config_hash",
            )
        },
        **(
            {"robustbench_model": info["robustbench_model"]}
            if info.get("robustbench_model")
            else {}
        ),
        "n_test": result["n_test"],
        "n_aa": result.get("n_aa"),
        "attack_settings": attack_settings(list(acc), eps, cfg.step_size),
        "accuracy": acc,
        "summary_percent": summary,
        **{
            k: result[k]
            for k in (
                "n_images",
                "worst_case",
                "robust_gap",
                "autoattack",
                "attack_records",
                "curves",
                "background",
                "images_sha256",
            )
            if k in result
        },
        "sanity": sanity,
        "sanity_failed": [c["check"] for c in sanity if c["status"] == "warn"],
        "unreliable": any(c["status"] == "warn" for c in sanity),
        "eval_config": asdict(cfg),
        "seed": cfg.seed,
        **environment(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
    }


def plot_card_curves(card: dict[str, Any], png: Path) -> None:
    import warnings

    from .card import card_label
    from .curves import plot_curves

    try:
        plot_curves([(card_label(card), card["curves"])], png)
        card["curves"]["png"] = str(png)
    except UserError as e:  # matplotlib missing: the JSON still has the numbers
        warnings.warn(f"curves plot skipped: {e}", stacklevel=2)
    except OSError as e:
        warnings.warn(f"curves plot not written ({type(e).__name__}: {png})", stacklevel=2)


def estimate_seconds(
    model, data: DataBundle, cfg: EvalConfig, device, eps: float | None = None
) -> float:
    """A rough duration of `evaluate_checkpoint`: PGD-type work from one timed
    forward-backward batch (the evaluation's batch size; at most 32 images on a CPU, where
    time is linear in images) times the passes each part needs; AutoAttack from its own
    cascade run on one batch with a reduced budget (`estimate_autoattack_seconds`), at `eps`
    (default `cfg.eps`, else 8/255). The model's train/eval mode is restored."""
    from ..modes import model_mode

    n = min(cfg.n_test or len(data.test_y), len(data.test_y))
    gpu = torch.device(device).type != "cpu"
    b = max(1, min(n, cfg.batch_size, cfg.batch_size if gpu else 32))
    with model_mode(model, "eval"):
        x = data.test_x[:b].to(device).float().div(255).requires_grad_(True)
        torch.autograd.grad(model(x).sum(), x)  # warm-up
        if gpu:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        torch.autograd.grad(model(x).sum(), x)
        if gpu:
            torch.cuda.synchronize(device)
        per_image = (time.perf_counter() - t) / b
    passes = 0.0
    for name in cfg.attacks:
        if name != "aa":  # its passes (an upper bound for AutoAttack's single attacks)
            passes += n * get_attack(name).cost
    passes += 11 * cfg.gap_train_images
    if cfg.curves:
        passes += (cfg.curves_n or n) * (14 * 21 + sum((1, 5, 10, 20, 50)))
    if cfg.background and data.splits:
        passes += len(data.splits) * (cfg.background_n or n) * 12 + 2 * (cfg.background_n or n) * 13
    seconds = passes * per_image
    if "aa" in cfg.attacks:
        from ..attacks.autoattack import estimate_autoattack_seconds

        m = min(cfg.aa_n or n, n)
        seconds += estimate_autoattack_seconds(
            model,
            data.test_x[:m],
            data.test_y[:m],
            eps=eps if eps is not None else (cfg.eps or 8 / 255),
            batch_size=cfg.batch_size,
            device=device,
            seed=cfg.seed,
        )
    return seconds

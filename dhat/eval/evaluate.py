"""Evaluate one checkpoint: clean, PGD, CW, AutoAttack, the robust gap, sanity checks,
robustness curves and background-reliance measures, into one validated result card.

`evaluate_model` measures; `run_evaluation` loads the model (`loading.py`), checks that its
card can be written *before* the first attack, measures and builds the card
(`card_build.py`); `evaluate_checkpoint` also writes it (`output.py`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..attacks.autoattack import import_autoattack
from ..attacks.registry import Batches, Context, get_attack, local_batches, uses_autoattack
from ..attacks.robust import worst_case
from ..attacks.spec import make_attack
from ..config import EvalConfig, resolve_device
from ..data import DataBundle, load_dataset
from ..data.cifar import data_folder
from ..distributed import cleanup_distributed, setup_distributed
from ..rundir import pin_folder
from .amp import Autocast as Autocast  # "X as X": re-exported, callers import X from here
from .amp import with_amp
from .background import background_measures
from .card import check_writable, validate_card
from .card_build import attack_settings as attack_settings
from .card_build import build_card
from .cost import estimate_seconds as estimate_seconds
from .cost import say_duration
from .curves import robustness_curves
from .gap import robust_gap
from .loading import (
    DEFAULT_EPS,
    check_num_classes,
    data_source,
    load_for_eval,
    run_inverse_eps,
    training_images,
)
from .output import checkpoint_cards as checkpoint_cards
from .output import curves_png_path as curves_png_path
from .output import default_card_path, write_evaluation
from .records import images_sha256
from .runner import evaluation_identity, evaluation_runner
from .sanity import check_train_mode, run_sanity_checks

Log = Callable[[str], None] | None


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
    every attack saw), the robust gap (PGD-10 train minus test) when `gap_train` images
    ((M, 3, H, W), (M,)) are given, robustness curves and sanity
    checks when asked, and the background-reliance measures (`background.py`) when the dataset
    has object/background splits. `progress`: tqdm bars; `log`: one line per finished part.
    With `records` (a dict), the per-image values behind every number are added to it
    (`records.py` names them), and the result's "images_sha256" identifies each image set.
    `batches` runs each attack's batches (a resumable or sharded runner); `aa_budget`
    ({"n_iter", "n_queries"}) shrinks AutoAttack for tests. `amp` "bf16" runs every forward
    and attack under bf16 autocast (`Autocast`); the sanity checks then add amp_vs_fp32."""
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
        out["worst_case"], worst = worst_case(correct, n_images)
        m = out["worst_case"]["n"]
        out["images_sha256"]["worst"] = images_sha256(x[:m], y[:m])
        if records is not None:
            records["worst|robust"] = worst
    out["accuracy"] = acc
    if gap_train is not None and len(gap_train[1]):
        out["images_sha256"]["gap_train"] = images_sha256(*gap_train)
        out["robust_gap"] = robust_gap(model, x, y, gap_train, correct.get("pgd10"), ctx, records)
    shared: dict[str, Any] = dict(  # the settings of the curves and the sanity checks
        eps=eps, step_size=step_size, batch_size=batch_size, device=device, seed=seed
    )
    if background and data.splits:
        out["background"] = background_measures(
            model,
            data.splits,
            attacks={"clean": None, "pgd10": make_attack("pgd10", eps, step_size)},
            inverse_eps=inverse_eps,
            n=background_n or len(y),
            batch_size=batch_size,
            device=device,
            seed=seed,
            records=records,
        )
    if curves:
        m = curves_n or len(y)
        out["curves"] = robustness_curves(model, x[:m], y[:m], log=log, **shared)
    if sanity:
        out["sanity"] = run_sanity_checks(
            model,
            x,
            y,
            n=sanity_n,
            **shared,
            correct=correct,
            aa_robust=correct.get("aa"),
            aa_warnings=out.get("autoattack", {}).get("warnings"),
            curves=out.get("curves"),
            train_mode=mode_check,
            fp32_model=fp32_model if amp != "off" else None,
        )
    out["amp"] = amp
    return out


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
    pin = pin_folder(out)  # a card is never written into a run an overwrite replaced since
    if check_out:
        check_writable(out)
    run_cfg = info.pop("run_config")
    dataset, root, dataset_args = data_source(cfg, info, run_cfg)
    # a checkpoint's recorded download flag is not honoured: evaluation never downloads
    data = load_dataset(dataset, root, **dataset_args)
    if log is not None and dataset.startswith("cifar"):
        log(f"data: {data_folder(dataset, root)}")
    check_num_classes(info, data, dataset)
    eps = cfg.eps if cfg.eps is not None else (info.get("eps_default") or DEFAULT_EPS)
    if uses_autoattack(cfg.attacks):  # a missing AutoAttack fails before any work
        import_autoattack()
    if log is not None:
        if not cfg.dataset:
            log(f"dataset: {dataset} (the checkpoint's)")
        say_duration(model, data, cfg, device, eps, log)
    inverse_eps = tuple(cfg.inverse_eps or run_inverse_eps(info))
    torch.manual_seed(cfg.seed)
    gap = training_images(data, run_cfg, cfg.gap_train_images) if cfg.gap_train_images else None
    records: dict[str, Any] | None = {} if cfg.records != "off" else None
    identity = evaluation_identity(cfg, info["checkpoint_sha256"], data, eps, aa_budget)
    state = evaluation_runner(out, identity, group=group, resume=resume, write=main, log=log)
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

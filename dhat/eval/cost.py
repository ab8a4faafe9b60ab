"""A rough duration of an evaluation, said before a long one starts: model passes per part,
times the seconds per image of one timed forward-backward batch, plus AutoAttack timed on one
batch at a reduced budget."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..attacks.autoattack import estimate_autoattack_seconds
from ..attacks.registry import get_attack
from ..config import EvalConfig
from ..data import DataBundle
from ..modes import model_mode
from ..pixels import to_unit
from .background import IOU_SPLITS
from .curves import EPS_255, STEPS
from .loading import DEFAULT_EPS

SAY_ABOVE_SECONDS = 60
"""`say_duration` names estimates longer than this."""

CPU_TIMING_IMAGES = 32
"""The most images of the timed batch on a CPU, where time is linear in images (on a GPU the
timed batch is the evaluation's batch size)."""

GAP_PASSES = 11
"""Passes per training image of the robust gap: PGD-10's 10 steps and the final forward."""

CURVE_PASSES = 2 * len(EPS_255) * (20 + 1) + sum(STEPS)
"""Passes per image of the robustness curves: PGD-20 and CW-20 (20 steps and the final
forward) at each ε of the ε-curve, and the steps of the steps-curve's PGD runs."""

SPLIT_PASSES = 12
"""Passes per image of each background split: the clean forward and PGD-10's 11."""

ATTENTION_PASSES = 13
"""Passes per image of each split with attention measures (`background.IOU_SPLITS`):
Grad-CAM on the natural image, the 10 inverse steps and Grad-CAM on the inverse image."""


def estimate_seconds(
    model, data: DataBundle, cfg: EvalConfig, device, eps: float | None = None
) -> float:
    """A rough duration of `evaluate_checkpoint`: PGD-type work from one timed
    forward-backward batch (the evaluation's batch size; at most CPU_TIMING_IMAGES on a CPU)
    times the passes each part needs; AutoAttack from its own cascade run on one batch with a
    reduced budget (`estimate_autoattack_seconds`), at `eps` (default `cfg.eps`, else
    DEFAULT_EPS). The model's train/eval mode is restored."""
    n = min(cfg.n_test or len(data.test_y), len(data.test_y))
    gpu = torch.device(device).type != "cpu"
    b = max(1, min(n, cfg.batch_size, cfg.batch_size if gpu else CPU_TIMING_IMAGES))
    with model_mode(model, "eval"):
        x = to_unit(data.test_x[:b].to(device)).requires_grad_(True)
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
    passes += GAP_PASSES * cfg.gap_train_images
    if cfg.curves:
        passes += (cfg.curves_n or n) * CURVE_PASSES
    if cfg.background and data.splits:
        nb = cfg.background_n or n
        passes += len(data.splits) * nb * SPLIT_PASSES + len(IOU_SPLITS) * nb * ATTENTION_PASSES
    seconds = passes * per_image
    if "aa" in cfg.attacks:
        m = min(cfg.aa_n or n, n)
        seconds += estimate_autoattack_seconds(
            model,
            data.test_x[:m],
            data.test_y[:m],
            eps=eps if eps is not None else (cfg.eps or DEFAULT_EPS),
            batch_size=cfg.batch_size,
            device=device,
            seed=cfg.seed,
        )
    return seconds


def say_duration(
    model, data: DataBundle, cfg: EvalConfig, device, eps: float, log: Callable[[str], None]
) -> None:
    """`log` the estimated duration (`estimate_seconds`) when it exceeds SAY_ABOVE_SECONDS."""
    est = estimate_seconds(model, data, cfg, device, eps)
    if est > SAY_ABOVE_SECONDS:
        log(
            f"estimated duration: about {est / 60:.0f} min on this machine "
            "(from one timed batch; AutoAttack varies with robustness)"
        )

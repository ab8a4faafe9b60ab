"""Sanity checks on a robustness evaluation: cheap tests that catch the usual ways an
evaluation over-reports robustness (gradient masking, probabilities for logits, train-mode
BN, weak attacks). Each check returns {"check", "status": ok|warn|skipped, "message",
"details"}; a failed one also raises a `SanityWarning`. Explanations: docs/sanity_checks.md.

Checks on the model (a subset of `n` evaluation images):
  train_mode        the model handed over is in train mode (BN batch statistics, dropout)
  deterministic     same input twice, or alone vs in a batch, gives different logits
  probabilities     outputs are already probabilities (in [0, 1], rows sum to 1)
  zero_gradients    images whose input gradient of the CE loss is exactly zero (or not finite)
  large_eps         PGD-20 at ε = 64/255 leaves accuracy well above 0
Checks on the results:
  more_steps        PGD-50 accuracy above PGD-10 beyond noise (paired, per image)
  aa_vs_pgd         AutoAttack far below our PGD/CW (they are weak or masked), or above them
                    (with no PGD/CW requested, against the PGD-10/50 run on the model-check
                    images, so an AutoAttack-only evaluation still has this check)
  aa_flags          AutoAttack's own checks logged a warning
  curves            accuracy rising with ε or with PGD steps
  amp_vs_fp32       (--amp bf16 only) PGD-10 robust accuracy in bf16 differs from fp32's on
                    the model-check images beyond sampling error (paired McNemar test, 3 σ)
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from ..attacks.registry import Context, find_attack, get_attack
from ..modes import frozen_params, model_mode
from ..pixels import to_unit
from .curves import monotone_violations

DOC = "docs/sanity_checks.md"
LARGE_EPS = 64 / 255


class SanityWarning(UserWarning):
    """A sanity check on a robustness evaluation failed."""


def _result(check: str, ok: bool | None, message: str, **details) -> dict[str, Any]:
    status = "skipped" if ok is None else ("ok" if ok else "warn")
    return {
        "check": check,
        "status": status,
        "message": message,
        "details": details,
        "doc": f"{DOC}#{check}",
    }


# ----------------------------------------------------------------------------- model checks
def check_train_mode(model) -> dict:
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        stateful = [
            n
            for n, m in model.named_modules()
            if m.training
            and isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout))
        ]
        return _result(
            "train_mode",
            False,
            f"the model was handed over in train mode ({len(training)} modules, e.g. "
            f"{training[0]!r}); BatchNorm would use batch statistics and update its "
            "running stats, dropout would be random. dhat evaluates in eval mode; call "
            "model.eval() wherever else you evaluate it",
            n_modules=len(training),
            batchnorm_or_dropout=stateful[:5],
        )
    return _result("train_mode", True, "model in eval mode")


@torch.no_grad()
def check_deterministic(model, x: torch.Tensor, device="cpu", rtol: float = 5e-3) -> dict:
    """rtol (relative to the largest logit) tolerates TF32/cuDNN algorithm differences between
    batch sizes; batch statistics or injected noise differ by far more."""
    x = to_unit(x[:16]).to(device)
    with model_mode(model, "eval"):
        a, b = model(x), model(x)
        alone = model(x[:1])
    scale = a.abs().max().clamp_min(1e-6)
    repeat = ((a - b).abs().max() / scale).item()
    batch = ((a[:1] - alone).abs().max() / scale).item()
    if repeat > rtol:
        return _result(
            "deterministic",
            False,
            f"the same input gives different logits in eval mode (relative difference "
            f"{repeat:.2g}): a randomised defence; evaluate with EOT / AutoAttack "
            "version='rand', and expect restarts to disagree",
            repeat=repeat,
            batch=batch,
        )
    if batch > rtol:
        return _result(
            "deterministic",
            False,
            f"an image's logits depend on the rest of its batch (relative difference "
            f"{batch:.2g}) in eval mode: batch statistics are in use",
            repeat=repeat,
            batch=batch,
        )
    return _result(
        "deterministic",
        True,
        "same logits on repeat and alone vs in a batch",
        repeat=repeat,
        batch=batch,
    )


@torch.no_grad()
def check_probabilities(model, x: torch.Tensor, device="cpu", tol: float = 1e-4) -> dict:
    x = to_unit(x[:32]).to(device)
    with model_mode(model, "eval"):
        out = model(x).float()
    in_range = bool(out.min() >= -tol and out.max() <= 1 + tol)
    sums = out.sum(1)
    sum_one = bool(((sums - 1).abs() < tol * out.shape[1]).all())
    if in_range and sum_one:
        return _result(
            "probabilities",
            False,
            "the model returns probabilities (outputs in [0, 1], rows sum to 1), not "
            "logits: cross-entropy on them saturates, so gradient attacks are weakened "
            "and robustness is over-reported; return logits",
            min=out.min().item(),
            max=out.max().item(),
        )
    return _result(
        "probabilities",
        True,
        "outputs are logits (not in [0, 1] summing to 1)",
        min=out.min().item(),
        max=out.max().item(),
    )


def check_zero_gradients(model, x: torch.Tensor, y: torch.Tensor, device="cpu") -> dict:
    x = to_unit(x).to(device).requires_grad_(True)
    y = y.to(device)
    with model_mode(model, "eval"), frozen_params(model), torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        try:
            (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
        except RuntimeError as e:  # no path from the input to the loss at all
            return _result(
                "zero_gradients",
                False,
                f"no input gradient can be computed ({e})",
                n_zero=len(y),
                n=len(y),
            )
    if grad is None:
        grad = torch.zeros_like(x)
    per_image = grad.flatten(1).abs().sum(1)
    zero = int((per_image == 0).sum())
    nonfinite = int((~torch.isfinite(grad.flatten(1))).any(1).sum())
    if zero or nonfinite:
        return _result(
            "zero_gradients",
            False,
            f"{zero} of {len(y)} images have an exactly zero input gradient"
            + (f" and {nonfinite} a non-finite one" if nonfinite else "")
            + ": gradient attacks cannot move them (non-differentiable or saturating "
            "layers, gradient masking); robustness measured by PGD is unreliable",
            n_zero=zero,
            n_nonfinite=nonfinite,
            n=len(y),
        )
    return _result(
        "zero_gradients",
        True,
        f"all {len(y)} input gradients non-zero and finite",
        n_zero=0,
        n=len(y),
    )


def check_large_eps(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    batch_size=256,
    device="cpu",
    seed: int = 0,
    threshold: float = 0.1,
) -> dict:
    big = min(1.0, max(LARGE_EPS, 4 * eps))
    ctx = Context(big, big / 4, seed, batch_size, device)
    acc = get_attack("pgd20").run(model, x, y, ctx).correct.float().mean().item()
    detail = dict(eps_255=round(big * 255, 2), accuracy=acc, n=len(y), threshold=threshold)
    if acc > threshold:
        return _result(
            "large_eps",
            False,
            f"accuracy is still {100 * acc:.1f}% under PGD-20 at ε = {big * 255:.0f}/255, "
            "where images can be turned into other classes' images: the attack is not "
            "reaching the model (gradient masking, obfuscation or a bug)",
            **detail,
        )
    return _result(
        "large_eps", True, f"accuracy {100 * acc:.1f}% at ε = {big * 255:.0f}/255", **detail
    )


# ----------------------------------------------------------------------------- result checks
def _paired_excess(weak: torch.Tensor, strong: torch.Tensor) -> tuple[int, int, bool]:
    """b = images robust to `strong` but not `weak`, c = the reverse; significant if b - c
    exceeds two standard deviations of a paired (McNemar) difference and 4 images."""
    b = int((strong & ~weak).sum())
    c = int((weak & ~strong).sum())
    return b, c, (b - c) > max(4, 2 * math.sqrt(b + c))


def check_more_steps(correct10: torch.Tensor, correct50: torch.Tensor) -> dict:
    n = len(correct10)
    a10, a50 = correct10.float().mean().item(), correct50.float().mean().item()
    b, c, bad = _paired_excess(correct10, correct50)
    detail = dict(pgd10=a10, pgd50=a50, n=n, robust_only_to_50=b, robust_only_to_10=c)
    if bad:
        return _result(
            "more_steps",
            False,
            f"PGD-50 leaves {100 * a50:.1f}% accuracy, more than PGD-10's {100 * a10:.1f}% "
            f"({b} images survive 50 steps but not 10): a stronger attack must not do "
            "worse; the loss surface is masked or the model is randomised/stateful",
            **detail,
        )
    return _result(
        "more_steps",
        True,
        f"PGD-50 {100 * a50:.1f}% <= PGD-10 {100 * a10:.1f}% (within noise)",
        **detail,
    )


def _ours(correct: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The results of dhat's own gradient attacks (the registry's 'pgd' family)."""
    return {k: v for k, v in correct.items() if getattr(find_attack(k), "family", "") == "pgd"}


def check_aa_vs_pgd(
    correct: dict[str, torch.Tensor], aa_robust: torch.Tensor, threshold: float = 0.05
) -> dict:
    """`correct`: per-image correctness under our gradient attacks (the 'pgd' family: pgdK,
    cwK); `aa_robust`: per image robust to AutoAttack; compared on the images both saw."""
    ours = _ours(correct)
    if not ours:
        return _result("aa_vs_pgd", None, "no PGD/CW result to compare AutoAttack with")
    m = min(len(aa_robust), *(len(v) for v in ours.values()))
    ours_all = torch.stack([v[:m] for v in ours.values()]).all(0)
    aa = aa_robust[:m]
    acc_ours, acc_aa = ours_all.float().mean().item(), aa.float().mean().item()
    b, c, _ = _paired_excess(aa, ours_all)  # b: robust to all of ours, fooled by AA
    gap = acc_ours - acc_aa
    noise = 2 * math.sqrt(b + c) / max(m, 1)
    detail = dict(
        n=m, ours=acc_ours, autoattack=acc_aa, attacks=sorted(ours), gap=gap, threshold=threshold
    )
    if gap > max(threshold, noise):
        return _result(
            "aa_vs_pgd",
            False,
            f"AutoAttack leaves {100 * acc_aa:.1f}%, {100 * gap:.1f} points below our "
            f"PGD/CW ({100 * acc_ours:.1f}%, {', '.join(sorted(ours))}): PGD is weak or "
            "its gradients are masked; report AutoAttack, not PGD",
            **detail,
        )
    if -gap > max(0.02, noise, 4 / max(m, 1)):
        return _result(
            "aa_vs_pgd",
            False,
            f"AutoAttack leaves {100 * acc_aa:.1f}%, {100 * -gap:.1f} points above our "
            f"PGD/CW ({100 * acc_ours:.1f}%): AutoAttack should be the stronger; check its "
            "input range/normalisation, or the model is randomised",
            **detail,
        )
    return _result(
        "aa_vs_pgd",
        True,
        f"AutoAttack {100 * acc_aa:.1f}% vs PGD/CW {100 * acc_ours:.1f}% "
        f"(gap {100 * gap:.1f} points)",
        **detail,
    )


def check_amp_vs_fp32(
    fp32_model,
    amp_model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float = 2 / 255,
    batch_size: int = 256,
    device="cpu",
    seed: int = 0,
) -> dict:
    """PGD-10 with the same seed on the same images, in fp32 and under the evaluation's low
    precision. Tolerance: a paired (McNemar) test at 3 σ on the per-image discordance: with
    b images robust only in low precision and c only in fp32, warn when |b − c| > 3·√(b + c)
    (so at least 10 discordant images). b > c is gradient masking by precision."""
    ctx = Context(eps, step_size, seed, batch_size, device)
    pgd10 = get_attack("pgd10")
    full = pgd10.run(fp32_model, x, y, ctx).correct.bool().cpu()
    low = pgd10.run(amp_model, x, y, ctx).correct.bool().cpu()
    b, c = int((low & ~full).sum()), int((full & ~low).sum())
    a32, alow = full.float().mean().item(), low.float().mean().item()
    detail = dict(
        fp32=a32, low_precision=alow, n=len(y), robust_only_low=b, robust_only_fp32=c,
        rule="|b - c| > 3*sqrt(b + c) (McNemar, 3 sigma)",
    )  # fmt: skip
    if abs(b - c) > 3 * math.sqrt(b + c):
        why = (
            "low precision masks the gradients (the attack fails where fp32's succeeds); "
            "report the fp32 evaluation (--amp off)"
            if b > c
            else "low precision changes the model's decisions; report the fp32 evaluation"
        )
        return _result(
            "amp_vs_fp32",
            False,
            f"PGD-10 robust accuracy {100 * alow:.1f}% in bf16 vs {100 * a32:.1f}% in fp32 "
            f"on {len(y)} images ({b} robust only in bf16, {c} only in fp32): {why}",
            **detail,
        )
    return _result(
        "amp_vs_fp32",
        True,
        f"PGD-10 {100 * alow:.1f}% in bf16 vs {100 * a32:.1f}% in fp32 (within 3 σ, paired)",
        **detail,
    )


def check_aa_flags(messages: list[str]) -> dict:
    """AutoAttack's own checks (zero gradients, randomness, probabilities, Square beating the
    gradient attacks, ...), as it logs them."""
    if messages:
        return _result(
            "aa_flags",
            False,
            "AutoAttack's own checks flagged: " + " | ".join(messages),
            messages=messages,
        )
    return _result("aa_flags", True, "AutoAttack's own checks raised nothing")


def check_curves(curves: dict) -> dict:
    bad = monotone_violations(curves)
    if bad:
        return _result(
            "curves",
            False,
            "; ".join(bad) + ": accuracy must fall with the budget and with attack steps",
            violations=bad,
        )
    return _result("curves", True, "accuracy falls with ε and with PGD steps (within noise)")


# ----------------------------------------------------------------------------- driver
def run_sanity_checks(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float = 2 / 255,
    n: int = 100,
    batch_size: int = 256,
    device="cpu",
    seed: int = 0,
    correct: dict[str, torch.Tensor] | None = None,
    aa_robust: torch.Tensor | None = None,
    aa_warnings: list[str] | None = None,
    curves: dict | None = None,
    train_mode: dict | None = None,
    fp32_model=None,
    warn: bool = True,
) -> list[dict]:
    """All checks. Model checks run on the first `n` of x (uint8 or float in [0, 1]). `correct`
    (per-image correctness from the main evaluation, by attack name) is reused for PGD-10 vs
    PGD-50 when it has both; `aa_robust` / `curves` enable those checks. `train_mode` is a
    check_train_mode result taken earlier (before anything changed the model's mode).
    `fp32_model` (the fp32 model behind a low-precision `model`) adds amp_vs_fp32."""
    correct = correct or {}
    xs, ys = x[:n], y[:n]
    out = [
        train_mode or check_train_mode(model),
        check_deterministic(model, xs, device),
        check_probabilities(model, xs, device),
        check_zero_gradients(model, xs, ys, device),
        check_large_eps(model, xs, ys, eps=eps, batch_size=batch_size, device=device, seed=seed),
    ]
    if "pgd10" in correct and "pgd50" in correct:
        c10, c50 = correct["pgd10"], correct["pgd50"]
    else:
        ctx = Context(eps, step_size, seed, batch_size, device)
        c10, c50 = (get_attack(k).run(model, xs, ys, ctx).correct for k in ("pgd10", "pgd50"))
    out.append(check_more_steps(c10, c50))
    if aa_robust is None:
        out.append(_result("aa_vs_pgd", None, "AutoAttack not run (add 'aa' to --attacks)"))
    else:  # no PGD/CW asked for: compare with the PGD-10/50 just run on the first n images
        ours = _ours(correct)
        out.append(check_aa_vs_pgd(ours or {"pgd10": c10, "pgd50": c50}, aa_robust))
    out.append(
        check_aa_flags(aa_warnings or [])
        if aa_robust is not None
        else _result("aa_flags", None, "AutoAttack not run")
    )
    out.append(
        check_curves(curves)
        if curves is not None
        else _result("curves", None, "curves not computed (--curves)")
    )
    if fp32_model is not None:
        out.append(
            check_amp_vs_fp32(
                fp32_model,
                model,
                xs,
                ys,
                eps=eps,
                step_size=step_size,
                batch_size=batch_size,
                device=device,
                seed=seed,
            )
        )
    if warn:
        for r in out:
            if r["status"] == "warn":
                warnings.warn(
                    f"sanity check '{r['check']}' FAILED: {r['message']} (see {r['doc']})",
                    SanityWarning,
                    stacklevel=2,
                )
    return out


def failed(checks: list[dict]) -> list[dict]:
    return [c for c in checks if c["status"] == "warn"]

"""The robust gap: PGD-10 accuracy on images the model trained on minus on test images, with
a bootstrap interval that resamples each set independently."""

from __future__ import annotations

from typing import Any

import torch

from ..attacks.registry import Context, get_attack
from ..attacks.robust import correct_under
from ..attacks.spec import make_attack
from .background import robust_gap_ci


def robust_gap(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    train: tuple[torch.Tensor, torch.Tensor],
    test_correct: torch.Tensor | None,
    ctx: Context,
    records: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card's "robust_gap" for test images x (N, 3, H, W), y (N,) and training images
    `train` ((M, 3, H, W), (M,)). `test_correct` is the test images' (N,) PGD-10 correctness
    when the evaluation measured it, else None: then it is measured here, as the registry's
    "pgd10" would be, without `ctx`'s runner (not resumed). `ctx`: ε, step size, seed, batch
    size, device and progress of the evaluation. With `records`, the per-image correctness
    is added to it as "gap|train" (M,) and "gap|test" (N,)."""
    pgd10 = make_attack("pgd10", ctx.eps, ctx.step_size)
    if test_correct is None:
        local = Context(ctx.eps, ctx.step_size, ctx.seed, ctx.batch_size, ctx.device)
        test_correct = get_attack("pgd10").run(model, x, y, local).correct
    torch.manual_seed(ctx.seed)
    train_correct = correct_under(
        model,
        *train,
        pgd10,
        batch_size=ctx.batch_size,
        device=ctx.device,
        desc="gap (train)" if ctx.progress else None,
    )
    acc_train, acc_test = train_correct.float().mean().item(), test_correct.float().mean().item()
    if records is not None:
        records["gap|train"], records["gap|test"] = train_correct, test_correct
    return {
        "attack": "pgd10",
        "train": acc_train,
        "test": acc_test,
        "gap": acc_train - acc_test,
        "n_train": len(train[1]),
        "ci": robust_gap_ci(train_correct, test_correct, seed=ctx.seed)["ci"],
    }

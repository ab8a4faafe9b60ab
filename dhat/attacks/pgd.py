"""L-inf PGD in [0, 1] pixel space: the attack (ascent) and the inverse attack (descent).

Every attack takes the model's mode as an explicit argument (`bn_mode`), sets it for the
attack only and restores the caller's mode afterwards. Gradients are input-only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch

from ..models.base import called_from_outside, check_pixels
from ..models.registry import unwrap_parallel
from ..modes import BNMode, frozen_params, model_mode
from .losses import ce_loss, cw_margin_loss, dhat_inverse_loss, kl_to

Init = Literal["uniform", "gauss", "none"]


def _as_eps(eps, x: torch.Tensor) -> torch.Tensor | float:
    """A float, or a (B,) tensor of per-sample budgets broadcast to x's shape."""
    if isinstance(eps, torch.Tensor):
        return eps.to(x).view(-1, *([1] * (x.dim() - 1)))
    return float(eps)


def _check_eps(eps) -> None:
    """ε in (0, 1]. A per-sample budget on an accelerator is not read back (that would
    synchronise the host every attack); its producer (CFA's class-wise ε) keeps it in range."""
    if isinstance(eps, torch.Tensor) and eps.device.type != "cpu":
        return
    e = eps if isinstance(eps, torch.Tensor) else torch.tensor(float(eps))
    if not torch.all((e > 0) & (e <= 1)):
        raise ValueError(f"eps must lie in (0, 1] (pixel units, e.g. 8/255), got {eps}")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps) -> torch.Tensor:
    """Clamp into the L-inf ball of radius eps around x, then into [0, 1]."""
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def random_init(x: torch.Tensor, eps, init: Init) -> torch.Tensor:
    """Starting point: uniform in the eps-ball (clamped), x + 0.001 N(0, I) (TRADES), or x."""
    if init == "uniform":
        noise = (
            torch.empty_like(x).uniform_(-eps, eps)
            if isinstance(eps, float)
            else torch.empty_like(x).uniform_(-1, 1) * eps
        )
        return torch.clamp(x + noise, 0.0, 1.0)
    if init == "gauss":
        return x + 0.001 * torch.randn_like(x)
    if init == "none":
        return x.clone()
    raise ValueError(f"init must be uniform, gauss or none, got {init!r}")


def sign_pgd(
    model,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps,
    step_size: float,
    steps: int,
    init: Init = "uniform",
    bn_mode: BNMode = "eval",
    descend: bool = False,
) -> torch.Tensor:
    """The shared loop: x <- Π(x ± α·sign(∇ objective(f(x)))). Returns a detached x_adv.

    x: (B, C, H, W) in [0, 1]; `objective(logits) -> scalar`; eps float or (B,) tensor.
    """
    _check_eps(eps)
    model = unwrap_parallel(model)
    x = x.detach()
    e = _as_eps(eps, x)
    direction = -1.0 if descend else 1.0
    with model_mode(model, bn_mode), frozen_params(model):
        x_adv = random_init(x, e, init)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = objective(model(x_adv))
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + direction * step_size * grad.sign(), x, e)
    return project(x_adv, x, e).detach()


def pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps,
    step_size: float,
    steps: int,
    loss: Literal["ce", "cw", "kl"] = "ce",
    p_ref: torch.Tensor | None = None,
    init: Init = "uniform",
    bn_mode: BNMode = "eval",
) -> torch.Tensor:
    """PGD ascent on CE, the CW margin, or KL(p_ref || p(x')) (TRADES; p_ref (B, C) fixed).

    x: (B, C, H, W) in [0, 1], y: (B,). Returns x_adv with ||x_adv - x||_inf <= eps, in [0, 1].
    A call from outside dhat checks x's range once (one read); dhat's own calls (per training
    step, per evaluation batch) check its dtype only.
    """
    check_pixels(x, "pgd", values=called_from_outside())
    if loss == "ce":
        objective: Callable[[torch.Tensor], torch.Tensor] = partial(ce_loss, y=y)
    elif loss == "cw":
        objective = partial(cw_margin_loss, y=y)
    elif loss == "kl":
        if p_ref is None:
            raise ValueError("loss='kl' needs p_ref, the reference distribution (B, C)")
        p_ref = p_ref.detach()
        objective = partial(kl_to, p_ref=p_ref)
    else:
        raise ValueError(f"loss must be ce, cw or kl, got {loss!r}")
    return sign_pgd(
        model, x, objective, eps=eps, step_size=step_size, steps=steps, init=init, bn_mode=bn_mode
    )


def _official_inverse_objective(
    z: torch.Tensor,
    *,
    y: torch.Tensor,
    p_nat: torch.Tensor,
    p_adv: torch.Tensor | None,
    net,
    x_adv: torch.Tensor,
) -> torch.Tensor:
    """The official inverse loss of logits z; p_adv None: recomputed now, in the loop's mode."""
    if p_adv is None:
        with torch.no_grad():
            p_adv = torch.softmax(net(x_adv), 1)
    return dhat_inverse_loss(z, y, p_nat, p_adv)


def inverse_pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps,
    step_size: float,
    steps: int,
    loss: Literal["ce", "official"] = "official",
    x_adv: torch.Tensor | None = None,
    init: Init = "uniform",
    bn_mode: BNMode = "eval",
    recompute_adv: bool = False,
) -> torch.Tensor:
    """Inverse adversarial example: PGD *descent* that makes y more likely.

    loss="ce": descend CE(f(x'), y) (UIAT's basic form).
    loss="official": descend CE(ž, y) + KL(p_nat || p̌) - KL(p_adv || p̌) (DHAT train.py:11-31),
    with p_nat = p(x) and p_adv = p(x_adv) computed once, under no_grad, in `bn_mode`.
    `recompute_adv`: recompute p_adv after f(x̌_t) in every step instead (the DHAT authors'
    UIAT loop); the values are the same in eval mode and in train mode (batch statistics of
    the same x_adv), only BatchNorm's running statistics see the extra forwards.
    x is checked as in `pgd`.
    """
    check_pixels(x, "inverse_pgd", values=called_from_outside())
    objective: Callable[[torch.Tensor], torch.Tensor]
    if loss == "ce":
        objective = partial(ce_loss, y=y)
    elif loss == "official":
        if x_adv is None:
            raise ValueError("inverse loss 'official' needs x_adv, the adversarial example")
        base = unwrap_parallel(model)
        with torch.no_grad(), model_mode(base, bn_mode):
            p_nat = torch.softmax(base(x), 1)
            p_adv = None if recompute_adv else torch.softmax(base(x_adv), 1)

        objective = partial(
            _official_inverse_objective, y=y, p_nat=p_nat, p_adv=p_adv, net=base, x_adv=x_adv
        )
    else:
        raise ValueError(f"inverse loss must be ce or official, got {loss!r}")
    return sign_pgd(
        model,
        x,
        objective,
        eps=eps,
        step_size=step_size,
        steps=steps,
        init=init,
        bn_mode=bn_mode,
        descend=True,
    )

"""PGD in [0, 1] pixel space: the attack (ascent) and the inverse attack (descent), in any
threat model's ball (`threat.py`; L-inf by default).

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
from .threat import ThreatModel, threat_model

Init = Literal["uniform", "gauss", "none"]


def _check_eps(threat: ThreatModel) -> None:
    """A per-sample ε in the threat model's range (a float one was checked when the threat
    model was built). A per-sample budget on an accelerator is not read back (that would
    synchronise the host every attack); its producer (CFA's class-wise ε) keeps it in range."""
    eps = threat.eps
    if not isinstance(eps, torch.Tensor) or eps.device.type != "cpu":
        return
    if not torch.all((eps > 0) & (eps <= threat.max_eps)):
        raise ValueError(threat.eps_error(eps))


def start(x: torch.Tensor, threat: ThreatModel, init: Init | None = None) -> torch.Tensor:
    """The first point: "uniform" the threat model's random start (uniform in the ε-ball),
    "gauss" x + 0.001 N(0, I) (TRADES), "none" x; None: "uniform" if `threat.rand_init`."""
    if init is None:
        init = "uniform" if threat.rand_init else "none"
    if init == "uniform":
        return threat.random_start(x)
    if init == "gauss":
        return x + 0.001 * torch.randn_like(x)
    if init == "none":
        return x.clone()
    raise ValueError(f"init must be uniform, gauss or none, got {init!r}")


def pgd_loop(
    model,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    threat: ThreatModel,
    *,
    init: Init | None = None,
    bn_mode: BNMode = "eval",
    descend: bool = False,
) -> torch.Tensor:
    """The shared loop: x <- Π(step(x, ∇ objective(f(x)))) for `threat.steps` steps, in
    `threat`'s ball (L-inf: x <- Π(x ± α·sign(∇))). Returns a detached x_adv.

    x: (B, C, H, W) in [0, 1]; `objective(logits) -> scalar`; `init` as in `start`.
    `descend`: go down the objective (the inverse attack).
    """
    _check_eps(threat)
    model = unwrap_parallel(model)
    x = x.detach()
    with model_mode(model, bn_mode), frozen_params(model):
        x_adv = start(x, threat, init)
        for _ in range(threat.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = objective(model(x_adv))
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = threat.project(threat.step(x_adv.detach(), grad, descend), x)
    return threat.project(x_adv, x).detach()


def _objective(
    loss: str, y: torch.Tensor, p_ref: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The attack's objective of the logits: CE, the CW margin, or KL(p_ref || p(x'))."""
    if loss == "ce":
        return partial(ce_loss, y=y)
    if loss == "cw":
        return partial(cw_margin_loss, y=y)
    if loss == "kl":
        if p_ref is None:
            raise ValueError("loss='kl' needs p_ref, the reference distribution (B, C)")
        return partial(kl_to, p_ref=p_ref.detach())
    raise ValueError(f"loss must be ce, cw or kl, got {loss!r}")


def threat_pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    loss: Literal["ce", "cw", "kl"] = "ce",
    p_ref: torch.Tensor | None = None,
    init: Init | None = None,
    bn_mode: BNMode = "eval",
) -> torch.Tensor:
    """`pgd` against `threat` (its ε, α, steps and, for init None, its random start)."""
    check_pixels(x, "pgd", values=called_from_outside())
    objective = _objective(loss, y, p_ref)
    return pgd_loop(model, x, objective, threat, init=init, bn_mode=bn_mode)


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
    norm: str = "Linf",
) -> torch.Tensor:
    """PGD ascent on CE, the CW margin, or KL(p_ref || p(x')) (TRADES; p_ref (B, C) fixed).

    x: (B, C, H, W) in [0, 1], y: (B,); eps a float or a (B,) tensor. Returns x_adv with
    ||x_adv - x|| <= eps in the `norm` ("Linf", "L2"; see `threat.threat_model`), in [0, 1].
    A call from outside dhat checks x's range once (one read); dhat's own calls (per training
    step, per evaluation batch) check its dtype only.
    """
    check_pixels(x, "pgd", values=called_from_outside())
    objective = _objective(loss, y, p_ref)
    threat = threat_model(norm, eps, step_size, steps, rand_init=init == "uniform")
    return pgd_loop(model, x, objective, threat, init=init, bn_mode=bn_mode)


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
    norm: str = "Linf",
) -> torch.Tensor:
    """Inverse adversarial example: PGD *descent* that makes y more likely.

    loss="ce": descend CE(f(x'), y) (UIAT's basic form).
    loss="official": descend CE(ž, y) + KL(p_nat || p̌) - KL(p_adv || p̌) (DHAT train.py:11-31),
    with p_nat = p(x) and p_adv = p(x_adv) computed once, under no_grad, in `bn_mode`.
    `recompute_adv`: recompute p_adv after f(x̌_t) in every step instead (the DHAT authors'
    UIAT loop); the values are the same in eval mode and in train mode (batch statistics of
    the same x_adv), only BatchNorm's running statistics see the extra forwards.
    x, eps and `norm` as in `pgd`.
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
    threat = threat_model(norm, eps, step_size, steps, rand_init=init == "uniform")
    return pgd_loop(model, x, objective, threat, init=init, bn_mode=bn_mode, descend=True)

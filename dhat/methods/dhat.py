"""DHAT (Zhang et al., ICCV 2025, arXiv 2408.06079) and UIAT as the DHAT authors ran it.

Each loss term is one named function; `dhat_loss` composes Eq. (total) of the paper:
L = CE(ẑ, y) + λ1·L_DHLR(ž*, ẑ) + λ2·L_FLOE(ž, ž_B), ž* = ž − ž_B.
Where the official code and the paper differ, both forms are here behind an option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..attacks import inverse_pgd
from ..cam import grad_cam
from ..errors import UserError
from ..schema import NONNEG, UNIT, option
from .base import accuracy
from .batched import forward_parts
from .frozen import checkpoint_option
from .registry import register_method
from .standard import Adversarial


def dhlr_official(z_adv: torch.Tensor, z_star: torch.Tensor) -> torch.Tensor:
    """L_DHLR as the official code computes it (train.py:107): mean_i KL(φ(ẑ_i) ‖ φ(ž*_i)),
    i.e. `kl_div(log(softmax(ž*) + 1e-12), softmax(ẑ) + 1e-12, 'batchmean')`; nothing detached."""
    return F.kl_div(
        (F.softmax(z_star, 1) + 1e-12).log(), F.softmax(z_adv, 1) + 1e-12, reduction="batchmean"
    )


def dhlr_paper(z_adv: torch.Tensor, z_star: torch.Tensor) -> torch.Tensor:
    """L_DHLR as the paper writes it: mean_i KL(φ(ž*_i) ‖ φ(ẑ_i)), with ž* a detached target."""
    return F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z_star.detach(), 1), reduction="batchmean")


def floe_official(z_inv: torch.Tensor, z_bg: torch.Tensor) -> torch.Tensor:
    """L_FLOE as the official code computes it (train.py:64-67, added with +):
    ‖Ž − (Ž Ž_Bᵀ / ‖Ž_B Ž_Bᵀ‖_F) Ž_B‖_F / B for Ž, Ž_B (B, C). Batch-coupled; equals the
    paper's per-sample residual norm when B = 1. Scales like 1/√B."""
    proj = z_inv @ z_bg.t() / torch.linalg.matrix_norm(z_bg @ z_bg.t())
    return torch.linalg.matrix_norm(z_inv - proj @ z_bg) / z_inv.shape[0]


def floe_paper(z_inv: torch.Tensor, z_bg: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L_FLOE as the paper writes it, −‖ž − (ž·ž_B/‖ž_B‖²) ž_B‖₂ per sample, made bounded by
    dividing by ‖ž‖: −mean_i sin∠(ž_i, ž_B,i) ∈ [−1, 0]. (The paper's raw form is unbounded
    below: scaling ž up decreases it without limit.)"""
    coef = (z_inv * z_bg).sum(1, keepdim=True) / (z_bg.pow(2).sum(1, keepdim=True) + eps)
    residual = z_inv - coef * z_bg
    return -(residual.norm(dim=1) / (z_inv.norm(dim=1) + eps)).mean()


def background_mask(cam: torch.Tensor, omega: float) -> torch.Tensor:
    """1[M ≤ ω] as float (B, 1, H, W): the official code keeps pixels with M ≤ ω (train.py:93)."""
    return (cam <= omega).to(cam.dtype)


def inverse_example(m: UIAT | DHAT, model, batch, x_adv, recompute_adv: bool = False):
    """x̌: `m.steps` descent steps of m's inverse loss within m.eps_inv (step m.step_size, BN in
    m.bn_mode), from x; the official loss also needs x̂ (see `dhat.attacks.inverse_pgd`)."""
    return inverse_pgd(
        model,
        batch.x,
        batch.y,
        eps=m.eps_inv,
        step_size=m.step_size,
        steps=m.steps,
        loss=m.inverse_loss,
        x_adv=x_adv,
        bn_mode=m.bn_mode,
        recompute_adv=recompute_adv,
    )


DHLR = {"official": dhlr_official, "paper": dhlr_paper}
FLOE = {"official": floe_official, "paper": floe_paper}


@register_method("uiat")
@dataclass
class UIAT(Adversarial):
    """UIAT as the DHAT authors ran it (AdverRobust@0fc1c36, `train_adversarial_UIAT` with
    `pgd_invserse_attack_UIAT`): x̌ by 10 descent steps of the official inverse loss within
    ε_inv = 8/255; loss CE(ẑ, y) + β·KL(φ(ẑ) ‖ φ(ž)), β = 3.5, nothing detached.
    `inverse_loss="ce"` gives UIAT's basic (plain CE descent) form.

    Forwards per step, all in the model's mode (train mode in the authors' code), K steps:
    K for x̂; f(x) once; then per inverse step f(x̌_t) and a recomputation of f(x̂); the two
    training forwards f(x̌), f(x̂); and after the optimizer step one more f(x̂) (the authors'
    accuracy log): 3K + 4, 34 at K = 10. Train-mode BatchNorm never reads its running
    statistics, so the weights do not depend on these extra forwards, but the running
    statistics (used by every evaluation) do. `hoist_forwards=True` computes f(x̂) once before
    the inverse loop and skips the post-step forward (2K + 4 = 24): identical weights,
    different running statistics."""

    name = "uiat"
    eps_inv: float = option(8 / 255, "L-inf budget ε_inv of the inverse example x̌", budget=True)
    beta: float = option(3.5, "weight β of KL(φ(ẑ) ‖ φ(ž))", range=NONNEG)
    inverse_loss: Literal["official", "ce"] = option(
        "official", "inverse attack loss: official (CE + KL to p(x) − KL to p(x̂)) or ce"
    )
    hoist_forwards: bool = option(
        False,
        "skip the authors' in-loop recomputation of f(x̂) and their post-step forward "
        "(fewer forwards, same weights, different BN running statistics)",
    )

    def inputs(self, model, batch):
        x_adv = self.adversarial(model, batch)
        x_inv = inverse_example(self, model, batch, x_adv, recompute_adv=not self.hoist_forwards)
        self._post_step_x = None if self.hoist_forwards else x_adv
        return {"x_adv": x_adv, "x_inv": x_inv}

    def objective(self, model, batch, inputs):
        z_inv = model(inputs["x_inv"])
        z_adv = model(inputs["x_adv"])
        ce = self.ce(z_adv, batch.y)
        kl = F.kl_div(F.log_softmax(z_inv, 1), F.softmax(z_adv, 1), reduction="batchmean")
        loss = ce + self.beta * kl
        return loss, {
            "ce": ce.detach(),
            "kl": kl.detach(),
            "adv_acc": accuracy(z_adv, batch.y),
            "inv_acc": accuracy(z_inv, batch.y),
        }

    @torch.no_grad()
    def after_step(self, model):
        """The authors' post-step forward f(x̂) in the model's (train) mode: it only moves
        the BatchNorm running statistics, as theirs does."""
        x = getattr(self, "_post_step_x", None)
        if x is not None:
            model(x)
        self._post_step_x = None


@register_method("dhat")
@dataclass
class DHAT(Adversarial):
    """DHAT. Defaults follow the official code: ε_inv 4/255, ω 0.1, λ1 = λ2 = 1, official
    DHLR/FLOE and inverse loss, BN in train mode (docs/dhat.md says where the paper differs).

    cam_model: "self" (the model being trained, eval mode, detached) or the path of a
    checkpoint of a standard-trained model (the official frozen Grad-CAM network); the
    trainer loads it and hands it over in `RunInfo.frozen_models["cam_model"]`.
    """

    name = "dhat"
    eps_inv: float = option(4 / 255, "L-inf budget ε_inv of the inverse example x̌", budget=True)
    omega: float = option(
        0.1, "Grad-CAM threshold ω: pixels with M <= ω form the background image x̌_B", range=UNIT
    )
    lambda1: float = option(
        1.0, "weight λ1 of the debiased high-confidence term L_DHLR", range=NONNEG
    )
    lambda2: float = option(
        1.0, "weight λ2 of the foreground logit orthogonal term L_FLOE", range=NONNEG
    )
    dhlr: Literal["official", "paper"] = option(
        "official", "L_DHLR form: official KL(φ(ẑ) ‖ φ(ž*)) or paper KL(φ(ž*) ‖ φ(ẑ)), ž* detached"
    )
    floe: Literal["official", "paper"] = option(
        "official", "L_FLOE form: official (+, batch-coupled) or paper (−sin∠(ž, ž_B))"
    )
    inverse_loss: Literal["official", "ce"] = option(
        "official", "inverse attack loss: official (CE + KL to p(x) − KL to p(x̂)) or ce"
    )
    cam_model: str = checkpoint_option(
        "Grad-CAM network: 'self' or the path of a --method "
        "standard checkpoint (the official frozen network)"
    )
    cam_layer: str = option(
        "", "Grad-CAM layer (dotted path; empty = the CAM model's last convolutional stage)"
    )
    batched_forward: bool = option(
        False, "compute ẑ, ž, ž_B in one pass with per-part BatchNorm (identical to three passes)"
    )

    def setup(self, info):
        super().setup(info)
        self._cam_net = info.frozen_models.get("cam_model")
        if self.cam_model != "self" and self._cam_net is None:
            raise UserError(
                f"DHAT: cam_model {self.cam_model!r} was not loaded; pass the frozen "
                "network in RunInfo.frozen_models['cam_model'] (the trainer does)"
            )

    def mask(self, model, batch):
        """Grad-CAM M (B, 1, H, W) of natural x for the true label (constant)."""
        net = self._cam_net if self._cam_net is not None else model
        return grad_cam(net, batch.x, batch.y, layer=self.cam_layer or None, bn_mode="eval")

    def inputs(self, model, batch):
        keep = background_mask(self.mask(model, batch), self.omega)
        x_adv = self.adversarial(model, batch)
        x_inv = inverse_example(self, model, batch, x_adv)
        return {"x_adv": x_adv, "x_inv": x_inv, "x_bg": x_inv * keep, "fg_frac": 1.0 - keep.mean()}

    def objective(self, model, batch, inputs):
        xs = [inputs["x_adv"], inputs["x_inv"], inputs["x_bg"]]
        if self.batched_forward:
            z_adv, z_inv, z_bg = forward_parts(model, xs)
        else:
            z_adv, z_inv, z_bg = (model(x) for x in xs)
        return self.combine(z_adv, z_inv, z_bg, batch.y, inputs)

    def combine(self, z_adv, z_inv, z_bg, y, inputs):
        """CE(ẑ, y) + λ1·DHLR(ẑ, ž − ž_B) + λ2·FLOE(ž, ž_B), with the metrics."""
        ce = self.ce(z_adv, y)
        dhlr = DHLR[self.dhlr](z_adv, z_inv - z_bg)
        floe = FLOE[self.floe](z_inv, z_bg)
        loss = ce + self.lambda1 * dhlr + self.lambda2 * floe
        return loss, {
            "ce": ce.detach(),
            "dhlr": dhlr.detach(),
            "floe": floe.detach(),
            "adv_acc": accuracy(z_adv, y),
            "inv_acc": accuracy(z_inv, y),
            "fg_frac": inputs["fg_frac"].detach(),
        }

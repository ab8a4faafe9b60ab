"""Grad-CAM (Selvaraju et al. 2017), batched and torch-native.

Matches pytorch-grad-cam's GradCAM as the official DHAT code uses it: channel weights are
the spatial mean of the gradients, ReLU, per-image min-max to [0, 1], bilinear upsampling
to the input size, then (`renormalise=True`, the official path) per-image min-max again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError, clip, excerpt
from .models.base import called_from_outside, check_pixels
from .models.registry import OutsideModel, cam_layer, unwrap
from .modes import BNMode, frozen_params, model_mode


def check_cam_layer(
    model: nn.Module, layer: str | nn.Module | None, where: str = "Grad-CAM layer"
) -> nn.Module:
    """The module `layer` names in `model` (None: the model's `cam_layer`); a one-line
    UserError naming a few of the model's modules if it has no such module."""
    try:
        return cam_layer(model, layer)
    except (AttributeError, ValueError) as e:
        base = unwrap(model)
        inner = base.net if isinstance(base, OutsideModel) else base  # paths without `net.`
        names = [n for n, _ in inner.named_modules() if n and n.count(".") < 1]
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        if not layer and not getattr(base, "cam_layer", ""):
            raise UserError(
                f"{type(inner).__name__} names no Grad-CAM layer: give one with "
                f"--cam-layer (dhat train), or layer= in Python: a dotted path such as {shown}"
            ) from None
        what = f"{where} {excerpt(layer)}" if layer else where
        raise UserError(
            f"{what}: not a module of {type(inner).__name__} "
            f"({clip(str(e), 100)}); "
            f"give a dotted path such as {shown}"
        ) from None


def minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per-image (x - min) / (1e-7 + max(x - min)) on (B, 1, h, w); an all-zero map stays zero."""
    flat = cam.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    flat = flat / (1e-7 + flat.amax(1, keepdim=True))
    return flat.view_as(cam)


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    layer: str | nn.Module | None = None,
    bn_mode: BNMode = "eval",
    renormalise: bool = True,
) -> torch.Tensor:
    """Grad-CAM maps of `target` classes: x (B, 3, H, W), target (B,) -> (B, 1, H, W) in [0, 1].

    The map is a constant (detached). The model's mode, parameter gradients and hooks are
    left exactly as they were; `layer` defaults to the model's `cam_layer`. x is checked as
    in `dhat.pgd` (its range once for a call from outside dhat).
    """
    check_pixels(x, "grad_cam", values=called_from_outside())
    model = unwrap(model)  # eager: a hooked activation inside a compiled graph has no grad path
    module = check_cam_layer(model, layer)
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        store["act"] = out

    handle = module.register_forward_hook(hook)
    try:
        with model_mode(model, bn_mode), frozen_params(model), torch.enable_grad():
            x_in = x.detach().requires_grad_(True)  # keeps a graph to the hooked activation
            logits = model(x_in)
            act = store["act"]
            score = logits.gather(1, target.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
    with torch.no_grad():
        weights = grad.float().mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act.float()).sum(1, keepdim=True))
        cam = minmax(cam)
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if renormalise:
            cam = minmax(cam)
    return cam.detach()

"""Attention analysis: where does a model look? IoU of binarised Grad-CAM with the object.

The DHAT paper's core claim: inverse adversarial training (UIAT) moves Grad-CAM attention
from the object to the background, and DHAT removes that bias. We measure it so:
Grad-CAM of the true class (per-image min-max, upsampled, min-max again), binarised
at `threshold` (map >= threshold), then per image

    foreground IoU = |A ∩ M| / |A ∪ M|,   background IoU = |A ∩ (1-M)| / |A ∪ (1-M)|

with M the ground-truth foreground mask, averaged over images (and per class). Optionally
the same on inverse-adversarial images x̌ (inverse PGD, CE descent, step 2/255, 10 steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError

__all__ = ["iou", "attention_maps", "attention_per_image", "attention_iou", "eps_key"]


# ----------------------------------------------------------------------------- metrics
def iou(pred_mask: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of two bool masks (N, H, W) -> (N,) float. Two empty masks give 1."""
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"iou: shapes differ, {tuple(pred_mask.shape)} vs {tuple(gt_mask.shape)}")
    p, g = pred_mask.bool().flatten(1), gt_mask.bool().flatten(1)
    inter = (p & g).sum(1).double()
    union = (p | g).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


# ----------------------------------------------------------------------------- Grad-CAM
def _as_float_images(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float()


def _device_of(model: nn.Module) -> torch.device:
    p: torch.Tensor | None = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def _inverse_images(model, xb, yb, eps, steps, step_size):
    from ..attacks.pgd import inverse_pgd

    return inverse_pgd(
        model,
        xb,
        yb,
        eps=eps,
        step_size=step_size,
        steps=steps,
        loss="ce",
        init="uniform",
        bn_mode="eval",
    )


def attention_maps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    layer: str | nn.Module | None = None,
    batch_size: int = 256,
    inverse_eps: float | None = None,
    inverse_steps: int = 10,
    inverse_step_size: float = 2 / 255,
) -> torch.Tensor:
    """Grad-CAM of the true class, (N, H, W) float in [0, 1], on the CPU.

    x: (N, 3, H, W) uint8 or float in [0, 1]; with `inverse_eps` the maps are of the
    inverse-adversarial images (CE descent, `inverse_steps` steps of `inverse_step_size`).
    """
    from ..cam import grad_cam

    dev = _device_of(model)
    out = []
    for lo in range(0, len(y), batch_size):
        xb = _as_float_images(x[lo : lo + batch_size]).to(dev)
        yb = y[lo : lo + batch_size].long().to(dev)
        if inverse_eps is not None:
            xb = _inverse_images(model, xb, yb, inverse_eps, inverse_steps, inverse_step_size)
        out.append(grad_cam(model, xb, yb, layer=layer, bn_mode="eval")[:, 0].cpu())
    if not out:
        return torch.empty(0, *x.shape[-2:])
    return torch.cat(out)


def _summary(
    fg: torch.Tensor, bg: torch.Tensor, area: torch.Tensor, correct: torch.Tensor, y: torch.Tensor
) -> dict:
    def m(v):
        return float(v.double().mean()) if v.numel() else float("nan")

    per_class = []
    for c in torch.unique(y).tolist():
        sel = y == c
        per_class.append(
            dict(
                cls=int(c),
                n=int(sel.sum()),
                fg_iou=m(fg[sel]),
                bg_iou=m(bg[sel]),
                cam_area=m(area[sel]),
                accuracy=m(correct[sel]),
            )
        )
    return dict(
        fg_iou=m(fg), bg_iou=m(bg), cam_area=m(area), accuracy=m(correct), per_class=per_class
    )


def eps_key(eps: float) -> str:
    """4/255 -> '4/255' (the key of an inverse result)."""
    return f"{eps * 255:g}/255"


def attention_per_image(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    *,
    threshold: float = 0.5,
    layer: str | nn.Module | None = None,
    batch_size: int = 256,
    inverse_eps: Sequence[float] = (),
    inverse_steps: int = 10,
    inverse_step_size: float = 2 / 255,
) -> dict[float | None, dict[str, torch.Tensor]]:
    """Per-image attention measures, {None (natural) or ε_inv: {"fg", "bg", "area", "correct"}},
    each (N,) float64 on the CPU: foreground IoU, background IoU, attended fraction and top-1
    correctness of the Grad-CAM (true class) binarised at `threshold`."""
    from ..cam import grad_cam
    from ..models.registry import unwrap_parallel
    from ..modes import model_mode

    base = unwrap_parallel(model)
    n = len(y)
    if x.shape[0] != n or masks.shape[0] != n:
        raise UserError(f"attention_iou: {x.shape[0]} images, {n} labels, {masks.shape[0]} masks")
    if masks.shape[-2:] != x.shape[-2:]:
        raise UserError(
            f"attention_iou: masks are {tuple(masks.shape[-2:])}, images {tuple(x.shape[-2:])}"
        )
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"threshold must lie in [0, 1], got {threshold}")
    dev = _device_of(model)
    masks = masks.bool()
    settings: list[float | None] = [None, *[float(e) for e in inverse_eps]]
    acc: dict[float | None, dict[str, list[torch.Tensor]]] = {
        s: dict(fg=[], bg=[], area=[], correct=[]) for s in settings
    }
    for lo in range(0, n, batch_size):
        x0 = _as_float_images(x[lo : lo + batch_size]).to(dev)
        yb = y[lo : lo + batch_size].long().to(dev)
        mb = masks[lo : lo + batch_size]
        for s in settings:
            xb = (
                x0
                if s is None
                else _inverse_images(model, x0, yb, s, inverse_steps, inverse_step_size)
            )
            cam = grad_cam(model, xb, yb, layer=layer, bn_mode="eval")[:, 0].cpu()
            with torch.no_grad(), model_mode(base, "eval"):
                pred = base(xb).argmax(1).cpu()
            att = cam >= threshold
            a = acc[s]
            a["fg"].append(iou(att, mb))
            a["bg"].append(iou(att, ~mb))
            a["area"].append(att.flatten(1).double().mean(1))
            a["correct"].append((pred == yb.cpu()).double())
    empty = torch.empty(0, dtype=torch.float64)
    return {s: {k: torch.cat(v) if v else empty for k, v in a.items()} for s, a in acc.items()}


def attention_iou(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    *,
    threshold: float = 0.5,
    layer: str | nn.Module | None = None,
    batch_size: int = 256,
    inverse_eps: float | Sequence[float] | None = None,
    inverse_steps: int = 10,
    inverse_step_size: float = 2 / 255,
) -> dict:
    """Foreground/background IoU of the binarised Grad-CAM (true class) with `masks`.

    x: (N, 3, H, W) uint8 or float in [0, 1]; y: (N,); masks: (N, H, W) bool foregrounds.
    The attention region is `cam >= threshold`. Returns

        {"n", "threshold", "fg_iou", "bg_iou", "cam_area", "mask_area", "accuracy",
         "per_class": [{"cls", "n", "fg_iou", "bg_iou", "cam_area", "accuracy"}, ...],
         "inverse": {"4/255": {same metrics, "eps"}, ...}   # only with inverse_eps}

    fg_iou/bg_iou are means over images of per-image IoU; cam_area is the mean fraction of
    pixels attended; accuracy is clean (or inverse) top-1 on these images. `inverse_eps`:
    one budget or several ([0, 1] units, e.g. 4/255); the inverse images are made by
    dhat.attacks.inverse_pgd (loss "ce", uniform start) in eval mode.
    """
    if inverse_eps is None:
        eps_list: list[float] = []
    elif isinstance(inverse_eps, (int, float)):
        eps_list = [float(inverse_eps)]
    else:
        eps_list = [float(e) for e in inverse_eps]
    per = attention_per_image(
        model,
        x,
        y,
        masks,
        threshold=threshold,
        layer=layer,
        batch_size=batch_size,
        inverse_eps=eps_list,
        inverse_steps=inverse_steps,
        inverse_step_size=inverse_step_size,
    )
    yc = y.long().cpu()

    def summ(s):
        a = per[s]
        return _summary(a["fg"], a["bg"], a["area"], a["correct"], yc)

    n = len(y)
    out = dict(
        n=n,
        threshold=float(threshold),
        **summ(None),
        mask_area=float(masks.bool().flatten(1).double().mean()) if n else float("nan"),
    )
    if eps_list:
        out["inverse"] = {eps_key(e): dict(eps=e, **summ(e)) for e in eps_list}
    return out

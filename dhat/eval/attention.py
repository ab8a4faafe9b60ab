"""Attention analysis: where does a model look? Grad-CAM against the exact object mask.

The DHAT paper's core claim: inverse adversarial training (UIAT) moves Grad-CAM attention
from the object to the background, and DHAT removes that bias. Per image, with G the
Grad-CAM of the true class (per-image min-max, upsampled, min-max again) and M the
ground-truth foreground mask:

    object share   = Σ G·M / Σ G          (the energy-based pointing game: no threshold,
                                           invariant to scaling G, independent of G's area)
    foreground IoU = |A ∩ M| / |A ∪ M|,   background IoU = |A ∩ (1-M)| / |A ∪ (1-M)|
                                          with A = {G >= threshold} (the paper's measure)

Every measure comes with its **shuffled-mask null**: the same measure with each image's map
scored against another image's mask (a fixed derangement of the images, from a seed). A
model whose maps do not follow the object scores its null; `measure − null` is the part
that does. With scene classes (`fashion_scenes`' mixed_rand) the Grad-CAM of the *scene's*
class is scored too: the share of it on the background says whether the model finds the
scene's class in the scene. Optionally all of it on inverse-adversarial images x̌ (inverse
PGD, CE descent, step 2/255, 10 steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks.pgd import inverse_pgd
from ..cam import grad_cam
from ..errors import UserError
from ..models.registry import unwrap_parallel
from ..modes import model_mode
from ..pixels import to_unit

__all__ = [
    "iou",
    "object_share",
    "derangement",
    "attention_maps",
    "attention_per_image",
    "attention_iou",
    "eps_key",
]


# ----------------------------------------------------------------------------- metrics
def iou(pred_mask: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of two bool masks (N, H, W) -> (N,) float. Two empty masks give 1."""
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"iou: shapes differ, {tuple(pred_mask.shape)} vs {tuple(gt_mask.shape)}")
    p, g = pred_mask.bool().flatten(1), gt_mask.bool().flatten(1)
    inter = (p & g).sum(1).double()
    union = (p | g).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def object_share(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image share of a map's energy on the mask: Σ(map·mask) / Σ(map), (N,) float64.

    maps: (N, H, W) non-negative; masks: (N, H, W) bool. A map with no energy (all zero)
    carries no location and scores as a uniform map would: the mask's area fraction."""
    if maps.shape != masks.shape:
        raise ValueError(
            f"object_share: shapes differ, {tuple(maps.shape)} vs {tuple(masks.shape)}"
        )
    g = maps.double().flatten(1)
    if (g < 0).any():
        raise ValueError("object_share: maps must be non-negative")
    m = masks.bool().flatten(1).double()
    total = g.sum(1)
    area = m.mean(1)
    return torch.where(total > 0, (g * m).sum(1) / total.clamp_min(1e-300), area)


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A permutation π of range(n) with π(i) != i for every i (n >= 2), from a seed: one
    random cycle through all images. Image i's map is scored against mask π(i) in the null."""
    if n < 2:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


# ----------------------------------------------------------------------------- Grad-CAM
def _device_of(model: nn.Module) -> torch.device:
    p: torch.Tensor | None = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def _inverse_images(model, xb, yb, eps, steps, step_size):
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
    dev = _device_of(model)
    out = []
    for lo in range(0, len(y), batch_size):
        xb = to_unit(x[lo : lo + batch_size]).to(dev)
        yb = y[lo : lo + batch_size].long().to(dev)
        if inverse_eps is not None:
            xb = _inverse_images(model, xb, yb, inverse_eps, inverse_steps, inverse_step_size)
        out.append(grad_cam(model, xb, yb, layer=layer, bn_mode="eval")[:, 0].cpu())
    if not out:
        return torch.empty(0, *x.shape[-2:])
    return torch.cat(out)


def _summary(a: dict[str, torch.Tensor], y: torch.Tensor) -> dict:
    """Means over images (and per class) of `attention_per_image`'s measures for one setting."""

    def m(v):
        v = v.double()
        v = v[~v.isnan()]
        return float(v.mean()) if v.numel() else float("nan")

    def measures(sel):
        out = dict(
            object_share=m(a["share"][sel]),
            object_share_null=m(a["share_null"][sel]),
            object_share_minus_null=m(a["share"][sel] - a["share_null"][sel]),
            fg_iou=m(a["fg"][sel]),
            fg_iou_null=m(a["fg_null"][sel]),
            bg_iou=m(a["bg"][sel]),
            bg_iou_null=m(a["bg_null"][sel]),
            cam_area=m(a["area"][sel]),
            accuracy=m(a["correct"][sel]),
        )
        if "scene_bg_share" in a:
            out["scene_bg_share"] = m(a["scene_bg_share"][sel])
            out["scene_bg_share_null"] = m(a["scene_bg_share_null"][sel])
        return out

    per_class = [
        dict(cls=int(c), n=int((y == c).sum()), **measures(y == c))
        for c in torch.unique(y).tolist()
    ]
    return dict(**measures(torch.ones_like(y, dtype=torch.bool)), per_class=per_class)


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
    null_perm: torch.Tensor | None = None,
    scene_y: torch.Tensor | None = None,
    desc: str | None = None,
) -> dict[float | None, dict[str, torch.Tensor]]:
    """Per-image attention measures, {None (natural) or ε_inv: {name: (N,) float64}} on the
    CPU: "share" (object share of the true-class map), "fg"/"bg" (IoU of the map binarised at
    `threshold` with the mask / the background), "area" (attended fraction), "correct" (top-1)
    and, against mask π(i) of `null_perm` (default: `derangement(N)`), their nulls
    "share_null", "fg_null", "bg_null". With `scene_y` (N,) (the scene's class, -1 for none):
    "scene_bg_share" = 1 − object share of the scene class's map and its "scene_bg_share_null"
    (NaN where an image has no scene). `desc`: a tqdm bar over the batches, so named."""
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
    perm = derangement(n) if null_perm is None else null_perm.long().cpu()
    if perm.shape != (n,):
        raise UserError(f"attention: null_perm has shape {tuple(perm.shape)}, need ({n},)")
    dev = _device_of(model)
    masks = masks.bool().cpu()
    settings: list[float | None] = [None, *[float(e) for e in inverse_eps]]
    keys = ["share", "fg", "bg", "area", "correct", "share_null", "fg_null", "bg_null"]
    if scene_y is not None:
        keys += ["scene_bg_share", "scene_bg_share_null"]
    acc: dict[float | None, dict[str, list[torch.Tensor]]] = {
        s: {k: [] for k in keys} for s in settings
    }
    batches = range(0, n, batch_size)
    for lo in tqdm(batches, desc=desc, leave=False, disable=desc is None):
        x0 = to_unit(x[lo : lo + batch_size]).to(dev)
        yb = y[lo : lo + batch_size].long().to(dev)
        mb = masks[lo : lo + batch_size]
        mnull = masks[perm[lo : lo + batch_size]]
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
            a["share"].append(object_share(cam, mb))
            a["fg"].append(iou(att, mb))
            a["bg"].append(iou(att, ~mb))
            a["area"].append(att.flatten(1).double().mean(1))
            a["correct"].append((pred == yb.cpu()).double())
            a["share_null"].append(object_share(cam, mnull))
            a["fg_null"].append(iou(att, mnull))
            a["bg_null"].append(iou(att, ~mnull))
            if scene_y is not None:
                sy = scene_y[lo : lo + batch_size].long()
                has = sy >= 0
                scam = grad_cam(model, xb, sy.clamp_min(0).to(dev), layer=layer, bn_mode="eval")
                scam = scam[:, 0].cpu()
                nan = torch.full((len(sy),), float("nan"), dtype=torch.float64)
                a["scene_bg_share"].append(torch.where(has, 1 - object_share(scam, mb), nan))
                a["scene_bg_share_null"].append(
                    torch.where(has, 1 - object_share(scam, mnull), nan)
                )
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
    null_seed: int = 0,
    scene_y: torch.Tensor | None = None,
    desc: str | None = None,
) -> dict:
    """Object share, and foreground/background IoU of the binarised Grad-CAM (true class),
    with `masks`, each beside its shuffled-mask null (see the module docstring).

    x: (N, 3, H, W) uint8 or float in [0, 1]; y: (N,); masks: (N, H, W) bool foregrounds.
    The attention region is `cam >= threshold`. Returns

        {"n", "threshold", "null_seed", "object_share", "object_share_null",
         "object_share_minus_null", "fg_iou", "fg_iou_null", "bg_iou", "bg_iou_null",
         "cam_area", "mask_area", "accuracy", ["scene_bg_share", "scene_bg_share_null"],
         "per_class": [{"cls", "n", same measures}, ...],
         "inverse": {"4/255": {same measures, "eps"}, ...}   # only with inverse_eps}

    fg_iou/bg_iou are means over images of per-image IoU; cam_area is the mean fraction of
    pixels attended; accuracy is clean (or inverse) top-1 on these images. `inverse_eps`:
    one budget or several ([0, 1] units, e.g. 4/255); the inverse images are made by
    dhat.attacks.inverse_pgd (loss "ce", uniform start) in eval mode. `desc`: a progress bar.
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
        null_perm=derangement(len(y), null_seed),
        scene_y=scene_y,
        desc=desc,
    )
    yc = y.long().cpu()

    def summ(s):
        return _summary(per[s], yc)

    n = len(y)
    out = dict(
        n=n,
        threshold=float(threshold),
        null_seed=null_seed,
        **summ(None),
        mask_area=float(masks.bool().flatten(1).double().mean()) if n else float("nan"),
    )
    if eps_list:
        out["inverse"] = {eps_key(e): dict(eps=e, **summ(e)) for e in eps_list}
    return out

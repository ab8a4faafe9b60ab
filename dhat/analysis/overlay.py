"""Overlay figures: image | ground-truth mask | Grad-CAM, a row per class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import UserError
from ..io import atomic_write


def _jet(v: np.ndarray) -> np.ndarray:
    """The 'jet' colour map, (...) in [0, 1] -> (..., 3) in [0, 1]."""
    v = np.clip(v, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([r, g, b], -1)


def _to_hwc01(images) -> np.ndarray:
    x = torch.as_tensor(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def select_per_class(labels: np.ndarray, per_class: int) -> list[tuple[int, list[int]]]:
    rows = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0][:per_class]
        rows.append((int(c), [int(i) for i in idx]))
    return rows


def save_overlay_grid(
    path,
    images,
    masks,
    cams,
    labels,
    class_names: Sequence[str] | None = None,
    per_class: int = 4,
    use_matplotlib: bool | None = None,
) -> Path:
    """A PNG grid: one row per class, `per_class` samples each as (image | mask | CAM overlay).

    images (N, 3, H, W) uint8 or [0, 1]; masks (N, H, W) bool; cams (N, H, W) in [0, 1]
    (jet colour map blended 50/50 over the image); labels (N,). Rendered with matplotlib's
    Agg canvas when matplotlib is installed (`use_matplotlib=None`), else with Pillow.
    Returns the path written.
    """
    path = Path(path)
    img = _to_hwc01(images)
    msk = torch.as_tensor(masks).bool().cpu().numpy()
    cam = torch.as_tensor(cams).float().cpu().numpy()
    if cam.ndim == 4:
        cam = cam[:, 0]
    lab = torch.as_tensor(labels).long().cpu().numpy()
    if not (len(img) == len(msk) == len(cam) == len(lab)) or len(lab) == 0:
        raise UserError("save_overlay_grid: needs equally many (>0) images, masks, cams, labels")
    names = list(class_names or [])
    rows = select_per_class(lab, max(1, per_class))
    overlay = 0.5 * img + 0.5 * _jet(cam)
    mask_rgb = np.repeat(msk[..., None].astype(np.float32), 3, -1)

    # The whole grid as one array: tiles of `scale`-times upsampled pixels, white gaps.
    H, W = img.shape[1:3]
    scale = max(1, 64 // max(H, W))
    th, tw, gap = H * scale, W * scale, max(2, scale)
    ncol = 3 * max(len(ix) for _, ix in rows)
    grid = np.ones((len(rows) * (th + gap), ncol * (tw + gap) + gap, 3), np.float32)
    for r, (_, ix) in enumerate(rows):
        for k, i in enumerate(ix):
            for j, arr in enumerate((img, mask_rgb, overlay)):
                tile = np.repeat(np.repeat(arr[i], scale, 0), scale, 1)
                x0 = (3 * k + j) * (tw + gap)
                y0 = r * (th + gap)
                grid[y0 : y0 + th, x0 : x0 + tw] = tile
    grid8 = np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)
    row_names = [names[c] if c < len(names) else str(c) for c, _ in rows]

    if use_matplotlib is None:
        try:
            import matplotlib  # noqa: F401  # optional dependency: is it installed?

            use_matplotlib = True
        except ImportError:
            use_matplotlib = False
    if use_matplotlib:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, no pyplot state
        from matplotlib.figure import Figure  # optional dependency: matplotlib

        dpi, label_in = 100, 1.2
        fig = Figure(figsize=(grid8.shape[1] / dpi + label_in, grid8.shape[0] / dpi + 0.3), dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_axes(
            (
                label_in / fig.get_figwidth(),
                0.0,
                1 - label_in / fig.get_figwidth(),
                1 - 0.3 / fig.get_figheight(),
            )
        )
        ax.imshow(grid8, interpolation="nearest")
        ax.set_xticks([(j + 0.5) * (tw + gap) for j in range(ncol)])
        ax.set_xticklabels([("image", "mask", "Grad-CAM")[j % 3] for j in range(ncol)], fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks([(r + 0.5) * (th + gap) for r in range(len(rows))])
        ax.set_yticklabels(row_names, fontsize=8)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
        return path
    label_w, head = 90, 14
    canvas = Image.new("RGB", (label_w + grid8.shape[1], head + grid8.shape[0]), "white")
    canvas.paste(Image.fromarray(grid8), (label_w, head))
    draw = ImageDraw.Draw(canvas)
    for j in range(ncol):
        draw.text((label_w + j * (tw + gap) + 2, 1), ("image", "mask", "CAM")[j % 3], fill="black")
    for r, nm in enumerate(row_names):
        draw.text((2, head + r * (th + gap) + th // 2 - 5), nm, fill="black")
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return path

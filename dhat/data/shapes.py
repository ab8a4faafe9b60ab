"""`shapes`: a procedurally generated 10-class dataset with ground-truth foreground masks.

Each image is one solid-coloured shape (the class) over a background. The background is
either a texture of one of 10 types or a real CIFAR-10 image. In the training split the
background *agrees* with the class (texture type == label, or CIFAR class == label) with
probability `rho` (default 0.9), otherwise it is drawn uniformly from the 9 other types,
so the background is a spurious shortcut; in the test split it is independent of the class
(uniform over the 10 types). A model that leans on the background loses accuracy on the
test split, and its Grad-CAM lies on the background: the attention analysis measures the
IoU of the binarised map with the exact object mask, which this dataset provides.

Nothing is downloaded or cached: 50k + 10k images generate in a few seconds (vectorised
numpy, batched by shape and by texture type), deterministically from `seed`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .cifar import find_folder, load_cifar
from .datasets import DEFAULT_CIFAR_ROOTS, DataBundle, register_dataset

CLASS_NAMES = [
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "diamond",
    "star",
    "horizontal_bar",
    "vertical_bar",
    "ellipse",
]
TEXTURES = [
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "antidiagonal_stripes",
    "checkerboard",
    "dots",
    "noise",
    "gradient",
    "concentric_rings",
    "waves",
]
NUM_CLASSES = 10

# Rotation range (degrees, +-) per class: shapes that a large rotation would turn into
# another class (square <-> diamond, horizontal <-> vertical bar) turn by at most 15 degrees.
_ROT_MAX = np.deg2rad(np.array([180, 15, 180, 15, 180, 15, 180, 15, 15, 15], np.float32))
_EXTENT = 1.15  # every shape lies within this radius (in units of its scale r)
_R_RANGE = (6.0, 10.0)  # shape scale in pixels at 32 px (scaled with `size`)
_PERIOD_RANGE = (4.0, 8.0)  # texture period in pixels at 32 px
_MIN_CONTRAST = 0.4  # RGB (in [0, 1]) distance between the shape and each texture colour
_CHUNK = 8192  # images composed at a time (bounds memory; results do not depend on it)
CONSTANT_GREY = 0.5


def _shape_mask(k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Class k's shape in its own frame: a right, b up, unit scale. (m, S, S) bool."""
    if k == 0:  # circle
        return a * a + b * b <= 1.0
    if k == 1:  # square
        return np.maximum(np.abs(a), np.abs(b)) <= 0.8
    if k == 2:  # equilateral triangle, apex up, inradius 0.55
        h = 0.55
        return (b >= -h) & (0.8660254 * a + 0.5 * b <= h) & (-0.8660254 * a + 0.5 * b <= h)
    if k == 3:  # plus-shaped cross
        aa, bb = np.abs(a), np.abs(b)
        return ((aa <= 0.3) & (bb <= 1.0)) | ((bb <= 0.3) & (aa <= 1.0))
    if k == 4:  # ring
        rr = a * a + b * b
        return (rr <= 1.0) & (rr >= 0.25)
    if k == 5:  # diamond
        return np.abs(a) + np.abs(b) <= 1.05
    if k == 6:  # five-pointed star: radius linear in the angle between tips (1.1) and notches (0.4)
        rad = np.sqrt(a * a + b * b)
        frac = np.mod(np.arctan2(b, a) * (5.0 / (2.0 * math.pi)) - 0.25, 1.0)
        return rad <= 0.4 + 0.7 * np.abs(2.0 * frac - 1.0)
    if k == 7:  # horizontal bar
        return (np.abs(a) <= 1.05) & (np.abs(b) <= 0.32)
    if k == 8:  # vertical bar
        return (np.abs(a) <= 0.32) & (np.abs(b) <= 1.05)
    if k == 9:  # ellipse (axes 1 : 0.55)
        return a * a + (b / 0.55) ** 2 <= 1.0
    raise ValueError(k)


def shape_masks(
    labels: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    theta: np.ndarray,
    r: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
) -> np.ndarray:
    """(m, H, W) bool masks of shapes of classes `labels` (m,), centred at (`cx`, `cy`),
    rotated by `theta`, of radius `r`, on the pixel-centre grids `gx` (1, 1, W), `gy` (1, H, 1)."""
    out = np.zeros((len(labels), gy.shape[-2], gx.shape[-1]), bool)
    for k in range(NUM_CLASSES):
        idx = np.nonzero(labels == k)[0]
        if len(idx) == 0:
            continue
        dx, dy = gx - _as_col(cx[idx]), gy - _as_col(cy[idx])
        c, s, rr = _as_col(np.cos(theta[idx])), _as_col(np.sin(theta[idx])), _as_col(r[idx])
        out[idx] = _shape_mask(k, (c * dx + s * dy) / rr, (s * dx - c * dy) / rr)
    return out


def _as_col(v: np.ndarray) -> np.ndarray:
    """(m,) -> (m, 1, 1) float32."""
    return v.astype(np.float32).reshape(-1, 1, 1)


def _texture(
    t: int,
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    ph: np.ndarray,
    ang: np.ndarray,
    ctr: np.ndarray,
    noise: np.ndarray | None,
    size: int,
) -> np.ndarray:
    """Texture type t as a blend weight in [0, 1], (m, S, S) float32.

    x, y: (1, S, S) pixel centres; p (m,1,1) period; ph (m,2,1,1) phases in [0, 1);
    ang (m,1,1) angle; ctr (m,2,1,1) a point in the image; noise (m, S, S) for type 6.
    """
    if t == 0:
        return (np.mod(y / p + ph[:, 0], 1.0) < 0.5).astype(np.float32)
    if t == 1:
        return (np.mod(x / p + ph[:, 0], 1.0) < 0.5).astype(np.float32)
    if t == 2:
        return (np.mod((x + y) / (p * math.sqrt(2.0)) + ph[:, 0], 1.0) < 0.5).astype(np.float32)
    if t == 3:
        return (np.mod((x - y) / (p * math.sqrt(2.0)) + ph[:, 0], 1.0) < 0.5).astype(np.float32)
    if t == 4:
        cell = p / 2.0
        par = np.floor(x / cell + ph[:, 0]) + np.floor(y / cell + ph[:, 1])
        return np.mod(par, 2.0).astype(np.float32)
    if t == 5:
        gx = np.mod(x / p + ph[:, 0], 1.0) - 0.5
        gy = np.mod(y / p + ph[:, 1], 1.0) - 0.5
        return (gx * gx + gy * gy <= 0.09).astype(np.float32)
    if t == 6:
        assert noise is not None  # the caller passes noise for type 6
        return noise
    if t == 7:
        half = size / 2.0
        proj = (x - half) * np.cos(ang) + (y - half) * np.sin(ang)
        return (0.5 + proj / (2.0 * half * math.sqrt(2.0))).astype(np.float32)
    if t == 8:
        d = np.sqrt((x - ctr[:, 0]) ** 2 + (y - ctr[:, 1]) ** 2)
        return (np.mod(d / p + ph[:, 0], 1.0) < 0.5).astype(np.float32)
    if t == 9:
        arg = 2 * math.pi * (x / p + ph[:, 0]) + 2.0 * np.sin(
            2 * math.pi * (y / (2 * p) + ph[:, 1])
        )
        return (0.5 + 0.5 * np.sin(arg)).astype(np.float32)
    raise ValueError(t)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (each (n,), in [0, 1]) -> RGB (n, 3) in [0, 1]."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.stack([v, t, p], 1),
            np.stack([q, v, p], 1),
            np.stack([p, v, t], 1),
            np.stack([p, q, v], 1),
            np.stack([t, p, v], 1),
            np.stack([v, p, q], 1),
        ],
        0,
    )
    return table[i, np.arange(len(h))]


def _draw_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return _hsv_to_rgb(rng.random(n), rng.uniform(0.5, 1.0, n), rng.uniform(0.5, 1.0, n))


def generate_shapes(
    n: int,
    rho: float | None = 0.9,
    seed: int = 0,
    *,
    background: str = "texture",
    size: int = 32,
    bg_pool: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Generate `n` images. Returns a dict of tensors:

    images (n, 3, S, S) uint8, labels (n,) int64 (balanced: n // 10 or one more per class),
    masks (n, S, S) bool (the shape's pixels), bg_type (n,) int64 (texture type, or the
    CIFAR class of the background; -1 for `background="constant"`), colors (n, 3) uint8
    (the shape's colour: every mask pixel has exactly this value), and for
    `background="cifar10"` bg_index (n,) int64 into `bg_pool`.

    rho: P(bg_type == label); the other types share 1 - rho equally. rho=None draws the
    background independently of the class (uniform; the same as rho=0.1).
    background: "texture"; "cifar10" (needs bg_pool=(images (M,3,32,32) uint8, labels (M,)));
    "constant" (uniform grey, for tests and controls).
    """
    if n < 0:
        raise UserError(f"shapes: n must be >= 0, got {n}")
    if rho is not None and not 0.0 <= rho <= 1.0:
        raise UserError(f"shapes: rho must lie in [0, 1], got {rho}")
    if background not in ("texture", "cifar10", "constant"):
        raise UserError(
            f"shapes: background must be texture, cifar10 or constant, got {background!r}"
        )
    if size < 8:
        raise UserError(f"shapes: size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    sc = size / 32.0

    # Per-image parameters, all drawn up front in a fixed order (determinism by seed).
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    if rho is None:
        bg_type = rng.integers(0, NUM_CLASSES, n)
    else:
        agree = rng.random(n) < rho
        other = (labels + rng.integers(1, NUM_CLASSES, n)) % NUM_CLASSES
        bg_type = np.where(agree, labels, other)
    bg_type = bg_type.astype(np.int64)
    r = rng.uniform(*_R_RANGE, n) * sc
    ext = _EXTENT * r
    cx, cy = rng.uniform(ext, size - ext), rng.uniform(ext, size - ext)
    theta = rng.uniform(-1.0, 1.0, n) * _ROT_MAX[labels]
    fg = _draw_colours(rng, n)
    c1, c2 = rng.random((n, 3)), rng.random((n, 3))
    period = rng.uniform(*_PERIOD_RANGE, n) * sc
    phase = rng.random((n, 2))
    angle = rng.uniform(0.0, 2 * math.pi, n)
    centre = rng.uniform(0.0, size, (n, 2))
    is_noise = bg_type == 6
    noise = rng.random(
        (int(is_noise.sum()) if background == "texture" else 0, size, size), dtype=np.float32
    )
    noise_row = np.cumsum(is_noise) - 1

    if background == "constant":
        c1[:] = CONSTANT_GREY
        c2[:] = CONSTANT_GREY
        bg_type[:] = -1
    if background in ("texture", "constant"):
        # The texture's two colours differ visibly; the shape stands out from both.
        for _ in range(100):
            bad = np.linalg.norm(c1 - c2, axis=1) < _MIN_CONTRAST
            if background == "constant" or not bad.any():
                break
            c2[bad] = rng.random((int(bad.sum()), 3))
        for _ in range(100):
            bad = (np.linalg.norm(fg - c1, axis=1) < _MIN_CONTRAST) | (
                np.linalg.norm(fg - c2, axis=1) < _MIN_CONTRAST
            )
            if not bad.any():
                break
            fg[bad] = _draw_colours(rng, int(bad.sum()))
    bg_index: np.ndarray | None = None
    if background == "cifar10":
        if bg_pool is None:
            raise UserError("shapes: background='cifar10' needs bg_pool=(images, labels)")
        pool_x, pool_labels = bg_pool
        pool_y = np.asarray(pool_labels, np.int64)
        if tuple(pool_x.shape[1:]) != (3, size, size):
            raise UserError(
                f"shapes: CIFAR backgrounds are {tuple(pool_x.shape[1:])}, need (3, {size}, {size})"
            )
        counts = np.bincount(pool_y, minlength=NUM_CLASSES)[:NUM_CLASSES]
        if (counts == 0).any():
            raise UserError("shapes: the CIFAR background pool lacks some of the 10 classes")
        order = np.argsort(pool_y, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pick = np.minimum((rng.random(n) * counts[bg_type]).astype(np.int64), counts[bg_type] - 1)
        bg_index = order[starts[bg_type] + pick]
        pool_np = pool_x.numpy() if isinstance(pool_x, torch.Tensor) else np.asarray(pool_x)

    fg_u8 = np.round(fg * 255.0).astype(np.uint8)
    images = np.empty((n, 3, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    coords = np.arange(size, dtype=np.float32) + 0.5
    gx, gy = coords[None, None, :], coords[None, :, None]  # (1,1,S), (1,S,1) pixel centres
    xs, ys = np.broadcast_to(gx, (1, size, size)), np.broadcast_to(gy, (1, size, size))

    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        sl = slice(lo, hi)
        lab, bgt = labels[sl], bg_type[sl]
        mask = shape_masks(lab, cx[sl], cy[sl], theta[sl], r[sl], gx, gy)
        if background == "cifar10":
            assert bg_index is not None  # drawn above for cifar10 backgrounds
            bg = pool_np[bg_index[sl]]
        else:
            w = np.zeros((hi - lo, size, size), np.float32)
            if background == "texture":
                for t in range(NUM_CLASSES):
                    idx = np.nonzero(bgt == t)[0]
                    if len(idx) == 0:
                        continue
                    j = idx + lo
                    w[idx] = _texture(
                        t,
                        xs,
                        ys,
                        _as_col(period[j]),
                        phase[j].astype(np.float32)[:, :, None, None],
                        _as_col(angle[j]),
                        centre[j].astype(np.float32)[:, :, None, None],
                        noise[noise_row[j]] if t == 6 else None,
                        size,
                    )
            a1 = c1[sl].astype(np.float32)[:, :, None, None]
            a2 = c2[sl].astype(np.float32)[:, :, None, None]
            bg = np.clip(np.rint((a1 + w[:, None] * (a2 - a1)) * 255.0), 0, 255).astype(np.uint8)
        images[sl] = np.where(mask[:, None], fg_u8[sl][:, :, None, None], bg)
        masks[sl] = mask

    out = dict(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        masks=torch.from_numpy(masks),
        bg_type=torch.from_numpy(bg_type),
        colors=torch.from_numpy(fg_u8),
    )
    if bg_index is not None:
        out["bg_index"] = torch.from_numpy(bg_index.astype(np.int64))
    return out


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units of uint8 (N, 3, H, W), via histograms."""
    x = images.numpy()
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for ch in range(x.shape[1]):
        h = np.bincount(x[:, ch].ravel(), minlength=256).astype(np.float64)
        tot = max(h.sum(), 1.0)
        m = float((h * levels).sum() / tot)
        v = float((h * (levels - m) ** 2).sum() / tot)
        mean.append(m)
        std.append(max(math.sqrt(v), 1e-3))
    return tuple(mean), tuple(std)


def _cifar_pool(root: str | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if root is None:
        root = next(
            (r for r in DEFAULT_CIFAR_ROOTS if find_folder(Path(r).expanduser(), "cifar10")), "data"
        )
    x, y, _ = load_cifar(root, "cifar10", train=train)
    return x, y


@register_dataset("shapes")
def shapes(
    root: str | None = None,
    n_train: int = 50000,
    n_test: int = 10000,
    rho: float = 0.9,
    seed: int = 0,
    background: str = "texture",
    download: bool = False,
) -> DataBundle:
    """The shapes dataset (see the module docstring). Train: background agrees with the class
    with probability `rho`; test: independent. `root` is CIFAR-10's folder, used only with
    `background="cifar10"` (train backgrounds from CIFAR train, test from CIFAR test).
    mean/std are measured on the training split (on the test split if n_train is 0)."""
    if background not in ("texture", "cifar10"):
        raise UserError(f"shapes: background must be texture or cifar10, got {background!r}")
    seeds = np.random.SeedSequence(seed).spawn(2)
    s_train, s_test = (int(s.generate_state(1)[0]) for s in seeds)
    pools = (
        (_cifar_pool(root, True), _cifar_pool(root, False))
        if background == "cifar10"
        else (None, None)
    )
    tr = generate_shapes(n_train, rho, s_train, background=background, bg_pool=pools[0])
    te = generate_shapes(n_test, None, s_test, background=background, bg_pool=pools[1])
    mean, std = channel_stats(tr["images"] if n_train > 0 else te["images"])
    name = "shapes" if background == "texture" else "shapes-cifar10"
    return DataBundle(
        name,
        tr["images"],
        tr["labels"],
        te["images"],
        te["labels"],
        NUM_CLASSES,
        mean,
        std,
        list(CLASS_NAMES),
        train_masks=tr["masks"],
        test_masks=te["masks"],
    )

"""`toy_scenes`: the built-in default. Shapes on class-correlated textures, with the evaluation
splits of `fashion_scenes`, generated in about a second (nothing downloaded).

Each 32×32 image is one bright, solid-coloured shape of `shapes` (its class is the label)
over a darker two-colour texture "scene" of one of `shapes`' 10 texture types (the scene's
class). In the training split the scene's class equals the label with probability `rho`
(0.9), otherwise it is one of the nine others, uniformly: the scene is a shortcut a model
can learn besides the object. The object is made learnable within the smoke budget (a small
CNN, a few minutes on a CPU): each shape's brightest channel (0.85–1) is brighter than
any channel of any texture colour (at most 0.55), so its outline is a plain edge whatever
the colours. Its size (`r_min`–`r_max` pixels) sets how hard it is against the scene.

The test side shares one set of shapes (class, size, position, rotation, colour) across its
splits, which differ in the background alone (the Backgrounds Challenge's splits, Xiao et
al., ICLR 2021), as in `fashion_scenes`:

    test        scenes drawn like training (class = label with probability rho)
    mixed_same  a scene of the label's class
    mixed_rand  a scene of a uniformly random class
    only_fg     the shape on black
    only_bg     the mixed_same scene with the shape removed (its mask marks where it was)

Masks are exact: every mask pixel has the shape's colour, which differs from both texture
colours. acc(mixed_same) − acc(mixed_rand) is the BG-gap: how much a model leans on the
scene. Deterministic by `seed`; training and test sides come from independent seeds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import UserError
from .datasets import DataBundle, register_dataset
from .fashion_scenes import scene_bundle, scene_seeds
from .shapes import CLASS_NAMES, NUM_CLASSES, _as_col, _hsv_to_rgb, _texture, shape_masks

SPLITS = ("test", "mixed_same", "mixed_rand", "only_fg", "only_bg")
SIZE = 32
_ROT_MAX = np.deg2rad(np.array([180, 15, 180, 15, 180, 15, 180, 15, 15, 15], np.float32))
_EXTENT = 1.15  # every shape lies within this radius (in units of its scale r)
_PERIOD_RANGE = (4.0, 8.0)  # texture period in pixels
_MIN_DISTANCE = 0.4  # RGB distance between the shape's colour and each texture colour
_CHUNK = 8192
_BG_MAX = 0.55  # texture colours lie in [0, _BG_MAX]^3: darker than every shape


def _scene_classes(rng: np.random.Generator, name: str, labels: np.ndarray, rho: float):
    n = len(labels)
    if name in ("train", "test"):
        agree = rng.random(n) < rho
        other = (labels + rng.integers(1, NUM_CLASSES, n)) % NUM_CLASSES
        return np.where(agree, labels, other).astype(np.int64)
    if name == "mixed_rand":
        return rng.integers(0, NUM_CLASSES, n).astype(np.int64)
    if name in ("mixed_same", "only_bg"):
        return labels.copy()
    if name == "only_fg":
        return np.full(n, -1, np.int64)
    raise UserError(f"toy_scenes: unknown split {name!r}; known: train, {', '.join(SPLITS)}")


def _scene_params(rng: np.random.Generator, fg: np.ndarray, contrast: float) -> dict:
    """Per-image texture parameters: two colours in [0, _BG_MAX]³ `contrast` apart (RGB
    distance, or less where clipped), each at least _MIN_DISTANCE from the shape's colour fg
    (n, 3); period, phases, angle, centre; and the seed of the noise texture."""
    n = len(fg)
    c1 = rng.uniform(0.0, _BG_MAX, (n, 3))
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    c2 = c1 + contrast * direction
    for _ in range(200):
        bad = (
            (c2.min(1) < 0)
            | (c2.max(1) > _BG_MAX)
            | (np.linalg.norm(fg - c1, axis=1) < _MIN_DISTANCE)
            | (np.linalg.norm(fg - c2, axis=1) < _MIN_DISTANCE)
        )
        if not bad.any():
            break
        k = int(bad.sum())
        c1[bad] = rng.uniform(0.0, _BG_MAX, (k, 3))
        d = rng.normal(size=(k, 3))
        c2[bad] = c1[bad] + contrast * d / np.linalg.norm(d, axis=1, keepdims=True)
    c2 = np.clip(c2, 0.0, _BG_MAX)
    return dict(
        c1=c1.astype(np.float32),
        c2=c2.astype(np.float32),
        period=rng.uniform(*_PERIOD_RANGE, n).astype(np.float32),
        phase=rng.random((n, 2)).astype(np.float32),
        angle=rng.uniform(0.0, 2 * math.pi, n).astype(np.float32),
        centre=rng.uniform(0.0, SIZE, (n, 2)).astype(np.float32),
        noise_seed=int(rng.integers(0, 2**63 - 1)),
    )


def _paint_scenes(kind: np.ndarray, p: dict, sl: slice) -> np.ndarray:
    """Scenes (m, 3, S, S) uint8 of texture types kind (m,) with the parameters p[sl]."""
    m = len(kind)
    coords = np.arange(SIZE, dtype=np.float32) + 0.5
    xs = np.broadcast_to(coords[None, None, :], (1, SIZE, SIZE))
    ys = np.broadcast_to(coords[None, :, None], (1, SIZE, SIZE))
    w = np.zeros((m, SIZE, SIZE), np.float32)
    noise_rng = np.random.default_rng([p["noise_seed"], sl.start])
    noise = noise_rng.random((m, SIZE, SIZE), dtype=np.float32)  # type 6; one draw per image
    for t in range(NUM_CLASSES):
        idx = np.nonzero(kind == t)[0]
        if len(idx) == 0:
            continue
        j = idx + sl.start
        w[idx] = _texture(
            t,
            xs,
            ys,
            _as_col(p["period"][j]),
            p["phase"][j][:, :, None, None],
            _as_col(p["angle"][j]),
            p["centre"][j][:, :, None, None],
            noise[idx],
            SIZE,
        )
    a1, a2 = p["c1"][sl][:, :, None, None], p["c2"][sl][:, :, None, None]
    return np.clip(np.rint((a1 + w[:, None] * (a2 - a1)) * 255.0), 0, 255).astype(np.uint8)


def generate(
    n: int,
    *,
    seed: int,
    rho: float,
    splits: tuple[str, ...] = SPLITS,
    r_range: tuple[float, float] = (6.0, 9.0),
    bg_contrast: float = 0.5,
) -> dict[str, dict[str, torch.Tensor]]:
    """`n` images per split (names: "train" and those of SPLITS; default: SPLITS). All splits
    share the shapes (class, scale r in `r_range` pixels, position, rotation, colour); each
    draws its own scenes (only_bg reuses mixed_same's). Returns {split: {"images" (n, 3, 32,
    32) uint8, "labels" (n,), "masks" (n, 32, 32) bool, "scene_class" (n,) (-1: only_fg)}}."""
    if n < 0:
        raise UserError(f"toy_scenes: n must be >= 0, got {n}")
    if not 0.0 <= rho <= 1.0:
        raise UserError(f"toy_scenes: rho must lie in [0, 1], got {rho}")
    lo, hi = r_range
    if not 2.0 <= lo <= hi <= SIZE / (2 * _EXTENT):
        raise UserError(
            f"toy_scenes: need 2 <= r_min <= r_max <= {SIZE / (2 * _EXTENT):.1f}, got {lo}, {hi}"
        )
    if not 0.0 < bg_contrast <= 1.0:
        raise UserError(f"toy_scenes: bg_contrast must lie in (0, 1], got {bg_contrast}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    r = rng.uniform(lo, hi, n)
    ext = _EXTENT * r
    cx, cy = rng.uniform(ext, SIZE - ext), rng.uniform(ext, SIZE - ext)
    theta = rng.uniform(-1.0, 1.0, n) * _ROT_MAX[labels]
    fg = _hsv_to_rgb(rng.random(n), rng.uniform(0.2, 0.7, n), rng.uniform(0.85, 1.0, n))
    fg_u8 = np.round(fg * 255.0).astype(np.uint8)
    classes = {s: _scene_classes(rng, s, labels, rho) for s in splits}
    params = {s: _scene_params(rng, fg, bg_contrast) for s in splits if s not in ("only_fg",)}
    if "only_bg" in params and "mixed_same" in params:
        params["only_bg"] = params["mixed_same"]

    coords = np.arange(SIZE, dtype=np.float32) + 0.5
    gx, gy = coords[None, None, :], coords[None, :, None]
    masks = np.empty((n, SIZE, SIZE), bool)
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        masks[a:b] = shape_masks(labels[a:b], cx[a:b], cy[a:b], theta[a:b], r[a:b], gx, gy)
    out = {}
    for name in splits:
        images = np.zeros((n, 3, SIZE, SIZE), np.uint8)
        for a in range(0, n, _CHUNK):
            b = min(n, a + _CHUNK)
            sl = slice(a, b)
            if name != "only_fg":
                scene_kind = classes["mixed_same" if name == "only_bg" else name][sl]
                images[sl] = _paint_scenes(scene_kind, params[name], sl)
            if name != "only_bg":
                images[sl] = np.where(masks[sl][:, None], fg_u8[sl][:, :, None, None], images[sl])
        out[name] = dict(
            images=torch.from_numpy(images),
            labels=torch.from_numpy(labels),
            masks=torch.from_numpy(masks),
            scene_class=torch.from_numpy(classes[name]),
        )
    return out


@register_dataset("toy_scenes")
def toy_scenes(
    root: str | None = None,
    n_train: int = 10000,
    n_test: int = 1000,
    rho: float = 0.9,
    r_min: float = 6.0,
    r_max: float = 9.0,
    bg_contrast: float = 0.5,
    seed: int = 0,
    download: bool = False,
    label: str = "object",
) -> DataBundle:
    """Shapes on class-correlated textures (see the module docstring): `n_train`
    training images (scene class = label with probability `rho`) and `n_test` images in each
    test-side split. The bundle's test split is `test` (drawn like training); the others are
    in `bundle.splits`. `label="scene"` labels the training images by their scene's class (the
    scene-only calibration model). `root` and `download` are unused (nothing is read)."""
    s_train, s_test = scene_seeds("toy_scenes", seed, label, n_train, n_test)
    r_range = (r_min, r_max)
    tr = generate(
        n_train, seed=s_train, rho=rho, r_range=r_range, bg_contrast=bg_contrast, splits=("train",)
    )["train"]
    te = generate(n_test, seed=s_test, rho=rho, r_range=r_range, bg_contrast=bg_contrast)
    return scene_bundle("toy_scenes", tr, te, label, list(CLASS_NAMES))

"""Paired comparisons of models evaluated on the same images, with intervals that include
seed variation.

Two models evaluated on the same images differ image by image; the difference of their means
is estimated far more tightly from the per-image differences than from two unpaired
intervals. Across training seeds the difference also varies from run to run. The interval
here covers both: a two-level (hierarchical) percentile bootstrap that first resamples the
seeds, then, within each drawn seed, the images (the same draw for both models: paired).

A *statistic* is a sum of means over image sets: {image set: (N,) per-image values}, e.g.
{"test": pgd10_a − pgd10_b} for a difference in PGD-10 accuracy, or {"train": train_a −
train_b, "test": −(test_a − test_b)} for a difference in robust gap (train − test). Each
image set is resampled on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import UserError

__all__ = [
    "Statistic",
    "hierarchical_bootstrap",
    "card_values",
    "paired_values",
    "reliance",
]

Statistic = Mapping[str, np.ndarray]


def _value(stat: Statistic) -> float:
    return float(sum(np.asarray(v, dtype=np.float64).mean() for v in stat.values()))


def hierarchical_bootstrap(
    per_seed: Sequence[Statistic], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Mean over seeds of a statistic (see the module docstring), with a percentile interval
    from resampling seeds, then images within each drawn seed.

    per_seed: one statistic per seed, {image set: (N_set,) values}; every seed must have the
    same image sets. Returns {"value", "ci": [lo, hi], "per_seed": [value per seed],
    "n_seeds", "n_images": {set: N}, "n_boot"}. With one seed it is the ordinary paired
    bootstrap over images; identical inputs give exactly 0 with the interval [0, 0]."""
    if not per_seed:
        raise UserError("hierarchical_bootstrap: no seeds")
    sets = sorted(per_seed[0])
    if any(sorted(s) != sets for s in per_seed):
        raise UserError("hierarchical_bootstrap: the seeds do not share their image sets")
    arrays = [{k: np.asarray(s[k], dtype=np.float64) for k in sets} for s in per_seed]
    per = [_value(a) for a in arrays]
    rng = np.random.default_rng(seed)
    k = len(arrays)
    boots = np.zeros(n_boot)
    seed_draws = rng.integers(0, k, size=(n_boot, k))
    for b in range(n_boot):
        total = 0.0
        for j in seed_draws[b]:
            for name in sets:
                v = arrays[j][name]
                if len(v):
                    total += v[rng.integers(0, len(v), len(v))].mean()
        boots[b] = total / k
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return {
        "value": float(np.mean(per)),
        "ci": [float(lo), float(hi)],
        "per_seed": per,
        "n_seeds": k,
        "n_images": {name: len(arrays[0][name]) for name in sets},
        "n_boot": n_boot,
    }


def _image_set(name: str) -> tuple[str, str]:
    """(resampling group, image set) of a record name: "test|pgd10" -> ("test", "test");
    "bg|mixed_rand|clean" and "att|mixed_rand|natural|share" -> ("bg", "bg|mixed_rand") —
    the background splits share their items image by image, so they are resampled together;
    "gap|train" -> ("gap|train", "gap|train"); "aa|robust" -> ("aa", "aa")."""
    head, _, rest = name.partition("|")
    if head in ("bg", "att"):
        return "bg", "bg|" + rest.partition("|")[0]
    if head == "gap":
        return name, name
    return head, head


def _images_hash(card: Mapping[str, Any], image_set: str) -> str | None:
    hashes = dict(card.get("images_sha256") or {})
    bg = (card.get("background") or {}).get("images_sha256") or {}
    if image_set.startswith("bg|"):
        return bg.get(image_set[3:])
    if image_set == "gap|train":
        return hashes.get("gap_train")
    if image_set == "gap|test":
        return hashes.get("test")
    return hashes.get(image_set)


def card_values(records: Mapping[str, np.ndarray], name: str, where: str = "") -> np.ndarray:
    """One per-image record as float64 (one-line UserError naming what exists if missing)."""
    if name not in records:
        known = ", ".join(sorted(records)[:8])
        raise UserError(f"{where}: no per-image record {name!r} (it has {known}, ...)")
    return np.asarray(records[name], dtype=np.float64)


def paired_values(
    card_a: Mapping[str, Any],
    rec_a: Mapping[str, np.ndarray],
    card_b: Mapping[str, Any],
    rec_b: Mapping[str, np.ndarray],
    terms: Sequence[tuple[float, str]],
) -> dict[str, np.ndarray]:
    """The per-image statistic of A − B: for each (sign, record name) term, sign·(a − b),
    summed per resampling group (`_image_set`). E.g. [(1, "bg|mixed_same|clean"), (-1,
    "bg|mixed_rand|clean")] is the difference in BG-gap. The two cards must have evaluated
    the same images (their SHA-256 per image set is compared; one-line UserError otherwise)."""
    out: dict[str, np.ndarray] = {}
    for sign, name in terms:
        group, image_set = _image_set(name)
        ha, hb = _images_hash(card_a, image_set), _images_hash(card_b, image_set)
        if ha is None or hb is None or ha != hb:
            raise UserError(
                f"{card_a.get('path', 'card A')} and {card_b.get('path', 'card B')} were not "
                f"evaluated on the same images ({image_set}): a paired difference needs them"
            )
        a = card_values(rec_a, name, str(card_a.get("path", "")))
        b = card_values(rec_b, name, str(card_b.get("path", "")))
        if group in out and len(out[group]) != len(a):
            raise UserError(
                f"{name}: {len(a)} images, but its group {group!r} has {len(out[group])}"
            )
        out[group] = out.get(group, np.zeros(len(a))) + sign * (a - b)
    # an image where a measure is undefined (NaN: no scene) leaves the statistic
    return {k: v[~np.isnan(v)] for k, v in out.items()}


def reliance(value: float, object_only: float, scene_only: float) -> float:
    """Place `value` on the calibration scale: 0 = the object-only model's value, 1 = the
    scene-only model's (NaN when the two calibration values coincide)."""
    span = scene_only - object_only
    return float("nan") if span == 0 else (value - object_only) / span

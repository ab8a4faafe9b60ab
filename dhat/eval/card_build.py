"""Building the result card of one evaluation from its measurements (`evaluate_model`'s
result), its model's provenance (`load_for_eval`'s info) and its settings; the card's schema,
validation and saving are in card.py."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from ..attacks.registry import describe
from ..attacks.threat import LinfThreat
from ..config import EvalConfig
from .card import SCHEMA
from .loading import environment

INFO_HEAD = ("checkpoint", "checkpoint_sha256", "source", "weights", "epoch", "run_dir")
"""`load_for_eval`'s info fields that open the card (what was evaluated)."""

INFO_MODEL = (
    "model",
    "model_kwargs",
    "num_classes",
    "normalization",
    "method",
    "method_args",
    "config_hash",
)
"""`load_for_eval`'s info fields that describe the model and its training."""

RESULT_FIELDS = (
    "n_images",
    "worst_case",
    "robust_gap",
    "autoattack",
    "attack_records",
    "curves",
    "background",
    "images_sha256",
)
"""`evaluate_model`'s result fields copied to the card when measured."""


def attack_settings(attacks: Iterable[str], eps: float, step_size: float) -> dict[str, str]:
    """A line per attack saying exactly what was run (for the result card)."""
    return {name: describe(name, eps, step_size) for name in attacks}


def build_card(
    result: dict[str, Any],
    info: dict[str, Any],
    cfg: EvalConfig,
    *,
    dataset: str,
    eps: float,
    seconds: float,
) -> dict[str, Any]:
    """The result card of one evaluation (see card.py)."""
    acc = result["accuracy"]
    summary = {k: round(100 * v, 2) for k, v in acc.items()}
    if "worst_case" in result:
        summary["worst_case"] = round(100 * result["worst_case"]["accuracy"], 2)
    if "robust_gap" in result:
        summary["robust_gap"] = round(100 * result["robust_gap"]["gap"], 2)
    sanity = result.get("sanity", [])
    return {
        "schema": SCHEMA,
        **{k: info[k] for k in INFO_HEAD},
        "dataset": dataset,
        "split": "test",
        "threat_model": LinfThreat.norm,  # "Linf": every evaluation attack is L-inf
        "eps": eps,
        "eps_255": round(eps * 255, 3),
        "step_size": cfg.step_size,
        "amp": result.get("amp", "off"),
        **{k: info[k] for k in INFO_MODEL},
        **(
            {"robustbench_model": info["robustbench_model"]}
            if info.get("robustbench_model")
            else {}
        ),
        "n_test": result["n_test"],
        "n_aa": result.get("n_aa"),
        "attack_settings": attack_settings(list(acc), eps, cfg.step_size),
        "accuracy": acc,
        "summary_percent": summary,
        **{k: result[k] for k in RESULT_FIELDS if k in result},
        "sanity": sanity,
        "sanity_failed": [c["check"] for c in sanity if c["status"] == "warn"],
        "unreliable": any(c["status"] == "warn" for c in sanity),
        "eval_config": asdict(cfg),
        "seed": cfg.seed,
        **environment(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
    }

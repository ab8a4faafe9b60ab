"""Evaluate one checkpoint: clean, PGD, CW and the robust gap, into one JSON result."""
from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write, model_from_state, read_checkpoint
from ..config import EvalConfig, config_hash
from ..data import DataBundle, load_dataset, validation_split
from ..errors import UserError
from .robust import correct_under, make_attack


def environment() -> dict[str, Any]:
    """Library versions and hardware, recorded with every result."""
    from .. import __version__
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"dhat": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "hardware": f"{dev}; {platform.processor() or platform.machine()}; "
                        f"{torch.get_num_threads()} CPU threads"}


def training_images(data: DataBundle, cfg: dict[str, Any], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` images (seeded order) of the images the run trained on (its subset minus
    its validation split), without augmentation."""
    seed = cfg.get("seed", 0)
    if cfg.get("train_subset"):
        data.subset_train(cfg["train_subset"], seed)
    train_idx, _ = validation_split(data.train_y, cfg.get("val_size", 0), seed)
    order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed))]
    pick = order[:n]
    return data.train_x[pick], data.train_y[pick]


def evaluate_model(model, data: DataBundle, *, attacks, eps: float, step_size: float,
                   n_test: int = 0, gap_train: tuple[torch.Tensor, torch.Tensor] | None = None,
                   batch_size: int = 256, device="cpu", progress: bool = True) -> dict[str, Any]:
    """Accuracy (fraction) under each named attack on the first `n_test` test images, and the
    robust gap (PGD-10 train minus test) when `gap_train` images are given."""
    x, y = data.test_x, data.test_y
    if n_test:
        x, y = x[:n_test], y[:n_test]
    acc: dict[str, float] = {}
    for name in attacks:
        if name == "aa":
            continue
        attack = make_attack(name, eps, step_size)
        correct = correct_under(model, x, y, attack, batch_size=batch_size, device=device,
                                desc=name if progress else None)
        acc[name] = correct.float().mean().item()
    out: dict[str, Any] = {"n_test": len(y), "accuracy": acc}
    if gap_train is not None and len(gap_train[1]):
        pgd10 = make_attack("pgd10", eps, step_size)
        test = acc.get("pgd10")
        if test is None:
            test = correct_under(model, x, y, pgd10, batch_size=batch_size, device=device).float().mean().item()
        train = correct_under(model, *gap_train, pgd10, batch_size=batch_size, device=device,
                              desc="gap (train)" if progress else None).float().mean().item()
        out["robust_gap"] = {"attack": "pgd10", "train": train, "test": test, "gap": train - test,
                             "n_train": len(gap_train[1])}
    return out


def evaluate_checkpoint(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Load `cfg.checkpoint`, evaluate it, write the JSON result and return it."""
    t0 = time.perf_counter()
    state = read_checkpoint(cfg.checkpoint)
    run_cfg = state.get("config", {})
    device = torch.device(cfg.device if cfg.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.weights != "model":
        extra = state.get("extra_models", {})
        if cfg.weights not in extra:
            raise UserError(f"{cfg.checkpoint} holds no '{cfg.weights}' weights; it has: "
                            f"{', '.join(['model', *extra])}")
        state = {**state, "model": extra[cfg.weights]}
    model = model_from_state(state, device)
    dataset = cfg.dataset or run_cfg.get("dataset", "cifar10")
    data = load_dataset(dataset, cfg.data_root or run_cfg.get("data_root"),
                        download=run_cfg.get("download", False))
    eps = cfg.eps if cfg.eps is not None else run_cfg.get("eps", 8 / 255)
    if not 0 < eps <= 1:
        raise UserError(f"--eps must lie in (0, 1] in pixel units (e.g. 8/255), got {eps}")
    torch.manual_seed(cfg.seed)
    gap = training_images(data, run_cfg, cfg.gap_train_images) if cfg.gap_train_images else None
    result = evaluate_model(model, data, attacks=cfg.attacks, eps=eps, step_size=cfg.step_size,
                            n_test=cfg.n_test, gap_train=gap, batch_size=cfg.batch_size,
                            device=device, progress=progress)
    if "aa" in cfg.attacks:
        from ..attacks.autoattack import run_autoattack
        n = cfg.n_test or len(data.test_y)
        result["autoattack"] = run_autoattack(model, data.test_x[:n], data.test_y[:n], eps=eps,
                                              batch_size=cfg.batch_size, device=device,
                                              seed=cfg.seed)
        result["accuracy"]["aa"] = result["autoattack"]["robust_accuracy"]
    card = {
        "checkpoint": str(cfg.checkpoint), "weights": cfg.weights, "epoch": state.get("epoch"),
        "dataset": dataset, "threat_model": "Linf", "eps": eps, "eps_255": round(eps * 255, 3),
        "step_size": cfg.step_size, "model": state["model_spec"]["name"],
        "model_kwargs": state["model_spec"].get("kwargs", {}), "method": state.get("method"),
        "method_args": run_cfg.get("method_args", {}), "config_hash": config_hash(run_cfg),
        **result, **environment(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).with_name(
        f"eval_{Path(cfg.checkpoint).stem}.json")
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2)))
    card["path"] = str(out)
    return card


def format_result(card: dict[str, Any]) -> str:
    """A small text table of one result."""
    rows = [(k, f"{100 * v:.2f}") for k, v in card["accuracy"].items()]
    if "robust_gap" in card:
        g = card["robust_gap"]
        rows.append((f"robust gap (pgd10, {g['n_train']} train imgs)",
                     f"{100 * g['gap']:.2f} ({100 * g['train']:.2f} - {100 * g['test']:.2f})"))
    w = max(len(k) for k, _ in rows)
    head = f"{card['model']} / {card['method']} on {card['dataset']} ({card['n_test']} test images, eps {card['eps_255']}/255)"
    return "\n".join([head] + [f"  {k:<{w}}  {v}" for k, v in rows])

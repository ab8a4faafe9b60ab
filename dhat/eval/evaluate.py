"""Evaluate one checkpoint: clean, PGD, CW, AutoAttack and the robust gap, plus sanity checks
and (optionally) robustness curves, into one JSON result card.

The card follows the spirit of RobustBench's model_info: dataset, threat model, ε, number of
images, clean and per-attack accuracy, robust gap, model, method, config hash, library
versions, hardware and date, and the evaluation's own settings, so a reader can tell what
was measured and rerun it.
"""
from __future__ import annotations

import datetime
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write, model_from_state, read_checkpoint
from ..config import EvalConfig, config_hash
from ..data import DataBundle, load_dataset, validation_split
from ..errors import UserError
from .background import background_measures, robust_gap_ci
from .robust import correct_under, make_attack

SCHEMA = "dhat-result-v1"


def environment() -> dict[str, Any]:
    """Library versions and hardware, recorded with every result."""
    import numpy

    from .. import __version__
    from ..attacks.autoattack import import_autoattack
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    try:
        _, aa_name, aa_version = import_autoattack()
        aa = f"{aa_name} {aa_version}"
    except UserError:
        aa = None
    return {"dhat": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "numpy": numpy.__version__, "autoattack_package": aa,
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
    view = getattr(data, "train_view", None)     # e.g. imagefolder: center crop to the resolution
    x = data.train_x[pick]
    return (view(x) if view else x), data.train_y[pick]


def attack_settings(attacks, eps: float, step_size: float) -> dict[str, str]:
    """A line per attack saying exactly what was run (for the result card)."""
    out = {}
    for name in attacks:
        if name == "clean":
            out[name] = "no attack"
        elif name == "aa":
            out[name] = ("AutoAttack, version 'standard' (APGD-CE, APGD-T, FAB-T, Square), L-inf, "
                         f"eps {eps * 255:g}/255, official implementation")
        else:
            steps = int(name.lstrip("pgdcw") or (10 if name.startswith("pgd") else 20))
            loss = "cross-entropy" if name.startswith("pgd") else "CW margin"
            out[name] = (f"L-inf PGD, {steps} steps, {loss} loss, step {step_size * 255:g}/255, "
                         f"eps {eps * 255:g}/255, uniform random start, 1 restart, eval mode")
    return out


def evaluate_model(model, data: DataBundle, *, attacks, eps: float, step_size: float,
                   n_test: int = 0, gap_train: tuple[torch.Tensor, torch.Tensor] | None = None,
                   batch_size: int = 256, device="cpu", progress: bool = True, seed: int = 0,
                   aa_n: int = 0, sanity: bool = False, sanity_n: int = 100, curves: bool = False,
                   curves_n: int = 1000, background: bool = True, background_n: int = 0,
                   inverse_eps: tuple[float, ...] = ()) -> dict[str, Any]:
    """Accuracy (fraction) under each named attack on the first `n_test` test images
    ("aa" = standard AutoAttack on the first `aa_n`, default `n_test`), the robust gap
    (PGD-10 train minus test) when `gap_train` images are given, robustness curves and sanity
    checks when asked, and the background-reliance measures (`background.py`) when the dataset
    has object/background splits."""
    from .sanity import check_train_mode, run_sanity_checks
    mode_check = check_train_mode(model) if sanity else None  # before anything sets eval mode
    x, y = data.test_x, data.test_y
    if n_test:
        x, y = x[:n_test], y[:n_test]
    acc: dict[str, float] = {}
    correct: dict[str, torch.Tensor] = {}
    out: dict[str, Any] = {"n_test": len(y)}
    aa_robust = None
    for name in attacks:
        if name == "aa":
            from ..attacks.autoattack import run_autoattack
            n = aa_n or len(y)
            out["autoattack"], aa_robust = run_autoattack(
                model, data.test_x[:n], data.test_y[:n], eps=eps, batch_size=batch_size,
                device=device, seed=seed, return_flags=True, progress=progress)
            acc["aa"] = out["autoattack"]["robust_accuracy"]
            out["n_aa"] = out["autoattack"]["n"]
            continue
        attack = make_attack(name, eps, step_size)
        torch.manual_seed(seed)
        correct[name] = correct_under(model, x, y, attack, batch_size=batch_size, device=device,
                                      desc=name if progress else None)
        acc[name] = correct[name].float().mean().item()
    out["accuracy"] = acc
    if gap_train is not None and len(gap_train[1]):
        pgd10 = make_attack("pgd10", eps, step_size)
        test_correct = correct.get("pgd10")
        if test_correct is None:
            torch.manual_seed(seed)
            test_correct = correct_under(model, x, y, pgd10, batch_size=batch_size, device=device)
        torch.manual_seed(seed)
        train_correct = correct_under(model, *gap_train, pgd10, batch_size=batch_size,
                                      device=device, desc="gap (train)" if progress else None)
        train, test = train_correct.float().mean().item(), test_correct.float().mean().item()
        out["robust_gap"] = {"attack": "pgd10", "train": train, "test": test, "gap": train - test,
                             "n_train": len(gap_train[1]),
                             "ci": robust_gap_ci(train_correct, test_correct, seed=seed)["ci"]}
    if background and data.splits:
        attacks_bg = {"clean": None, "pgd10": make_attack("pgd10", eps, step_size)}
        out["background"] = background_measures(
            model, data.splits, attacks=attacks_bg, inverse_eps=inverse_eps,
            n=background_n or len(y), batch_size=batch_size, device=device, seed=seed)
    if curves:
        from .curves import robustness_curves
        m = curves_n or len(y)
        out["curves"] = robustness_curves(model, x[:m], y[:m], eps=eps, step_size=step_size,
                                          batch_size=batch_size, device=device, seed=seed,
                                          progress=progress)
    if sanity:
        out["sanity"] = run_sanity_checks(model, x, y, eps=eps, step_size=step_size, n=sanity_n,
                                          batch_size=batch_size, device=device, seed=seed,
                                          correct=correct, aa_robust=aa_robust,
                                          aa_warnings=out.get("autoattack", {}).get("warnings"),
                                          curves=out.get("curves"), train_mode=mode_check)
    return out


def _load(cfg, device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model to evaluate and what the card says about it (dhat checkpoint or plain weights)."""
    from .thirdparty import file_sha256
    weights_file = cfg.weights_file
    if weights_file:
        from .thirdparty import load_weights_file
        if cfg.checkpoint:
            raise UserError("pass either a checkpoint or --weights-file, not both")
        model, info = load_weights_file(weights_file, cfg.model,
                                        num_classes=cfg.num_classes,
                                        model_args=cfg.model_args,
                                        normalization=cfg.normalization, device=device)
        meta = info.get("sidecar") or {}
        return model, {
            "source": "state-dict", "checkpoint": str(weights_file), "checkpoint_sha256": info["sha256"],
            "weights": "model", "epoch": meta.get("epoch"), "run_dir": None,
            "model": info["model"], "model_kwargs": info["model_kwargs"],
            "num_classes": info["num_classes"],
            "normalization": {"mean": info["mean"], "std": info["std"],
                              "source": info["normalization_source"]},
            "method": meta.get("method"), "method_args": {}, "config_hash": meta.get("config_hash"),
            "run_config": {}, "dataset_default": meta.get("dataset"), "eps_default": meta.get("eps"),
        }
    if not cfg.checkpoint:
        raise UserError("pass a checkpoint (a best.pt/last.pt of `dhat train`) or --weights-file FILE "
                        "--model NAME")
    state = read_checkpoint(cfg.checkpoint)
    run_cfg = state.get("config", {})
    if cfg.weights != "model":
        extra = state.get("extra_models", {})
        if cfg.weights not in extra:
            raise UserError(f"{cfg.checkpoint} holds no '{cfg.weights}' weights; it has: "
                            f"{', '.join(['model', *extra])}")
        state = {**state, "model": extra[cfg.weights]}
    model = model_from_state(state, device)
    spec = state["model_spec"]
    return model, {
        "source": "dhat-checkpoint", "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": file_sha256(cfg.checkpoint), "weights": cfg.weights,
        "epoch": state.get("epoch"), "run_dir": str(Path(cfg.checkpoint).resolve().parent),
        "model": spec["name"], "model_kwargs": spec.get("kwargs", {}),
        "num_classes": spec["num_classes"],
        "normalization": {"mean": [float(v) for v in model.mean.flatten()],
                          "std": [float(v) for v in model.std.flatten()], "source": "checkpoint"},
        "method": state.get("method"), "method_args": run_cfg.get("method_args", {}),
        "config_hash": config_hash(run_cfg), "run_config": run_cfg,
        "dataset_default": run_cfg.get("dataset"), "eps_default": run_cfg.get("eps"),
    }


def run_inverse_eps(run_cfg: dict[str, Any]) -> list[float]:
    """The run's ε_inv (its method option, or the method's default), else DHAT's 4/255."""
    from ..methods import method_options
    method = run_cfg.get("method")
    if method and "eps_inv" in run_cfg.get("method_args", {}):
        return [float(run_cfg["method_args"]["eps_inv"])]
    try:
        field = method_options(method).get("eps_inv") if method else None
    except UserError:
        field = None
    return [float(field.default) if field is not None else 4 / 255]


def evaluate_checkpoint(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Load `cfg.checkpoint` (or `cfg.weights_file`), evaluate it, write the JSON result card
    (and the curves PNG) and return the card (with "path")."""
    t0 = time.perf_counter()
    device = torch.device(cfg.device if cfg.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    model, info = _load(cfg, device)
    run_cfg = info.pop("run_config")
    dataset = cfg.dataset or info.pop("dataset_default", None) or "cifar10"
    info.pop("dataset_default", None)
    data = load_dataset(dataset, cfg.data_root or run_cfg.get("data_root"),
                        download=run_cfg.get("download", False),
                        **(run_cfg.get("dataset_args", {}) if dataset == run_cfg.get("dataset") else {}))
    if data.num_classes != info["num_classes"]:
        raise UserError(f"the model has {info['num_classes']} classes but {dataset} has "
                        f"{data.num_classes}; pass --dataset (or --num-classes)")
    eps_default = info.pop("eps_default", None)
    eps = cfg.eps if cfg.eps is not None else (eps_default or 8 / 255)
    if not 0 < eps <= 1:
        raise UserError(f"--eps must lie in (0, 1] in pixel units (e.g. 8/255), got {eps}")
    for name in cfg.attacks:  # unknown names or a missing AutoAttack fail before any work
        if name == "aa":
            from ..attacks.autoattack import import_autoattack
            import_autoattack()
        else:
            make_attack(name, eps, cfg.step_size)
    torch.manual_seed(cfg.seed)
    gap = training_images(data, run_cfg, cfg.gap_train_images) if cfg.gap_train_images else None
    result = evaluate_model(model, data, attacks=cfg.attacks, eps=eps, step_size=cfg.step_size,
                            n_test=cfg.n_test, gap_train=gap, batch_size=cfg.batch_size,
                            device=device, progress=progress, seed=cfg.seed,
                            aa_n=cfg.aa_n, sanity=cfg.sanity,
                            sanity_n=cfg.sanity_n, curves=cfg.curves,
                            curves_n=cfg.curves_n, background=cfg.background,
                            background_n=cfg.background_n,
                            inverse_eps=tuple(cfg.inverse_eps or run_inverse_eps(run_cfg)))
    acc = result["accuracy"]
    summary = {k: round(100 * v, 2) for k, v in acc.items()}
    if "robust_gap" in result:
        summary["robust_gap"] = round(100 * result["robust_gap"]["gap"], 2)
    sanity = result.get("sanity", [])
    card = {
        "schema": SCHEMA,
        **{k: info[k] for k in ("checkpoint", "checkpoint_sha256", "source", "weights", "epoch",
                                "run_dir")},
        "dataset": dataset, "split": "test", "threat_model": "Linf", "eps": eps,
        "eps_255": round(eps * 255, 3), "step_size": cfg.step_size,
        **{k: info[k] for k in ("model", "model_kwargs", "num_classes", "normalization", "method",
                                "method_args", "config_hash")},
        "n_test": result["n_test"], "n_aa": result.get("n_aa"),
        "attack_settings": attack_settings(cfg.attacks, eps, cfg.step_size),
        "accuracy": acc, "summary_percent": summary,
        **{k: result[k] for k in ("robust_gap", "autoattack", "curves", "background") if k in result},
        "sanity": sanity, "sanity_failed": [c["check"] for c in sanity if c["status"] == "warn"],
        "unreliable": any(c["status"] == "warn" for c in sanity),
        "eval_config": {k: v for k, v in asdict(cfg).items()} if hasattr(cfg, "__dataclass_fields__") else {},
        "seed": cfg.seed,
        **environment(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    src = Path(info["checkpoint"])
    out = Path(cfg.out) if cfg.out else src.with_name(f"eval_{src.stem}.json")
    if "curves" in card:
        png = out.with_name(f"{out.stem}_curves.png")
        try:
            from .curves import plot_curves
            plot_curves([(_label(card), card["curves"])], png)
            card["curves"]["png"] = str(png)
        except UserError as e:  # matplotlib missing: the JSON still has the numbers
            import warnings
            warnings.warn(f"curves plot skipped: {e}", stacklevel=2)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2)))
    card["path"] = str(out)
    return card


def _label(card: dict[str, Any]) -> str:
    return f"{card.get('method') or card.get('model')}"


def format_result(card: dict[str, Any]) -> str:
    """A small text table of one result, AutoAttack's cascade and any failed sanity check."""
    rows = [(k, f"{100 * v:.2f}") for k, v in card["accuracy"].items()]
    if "autoattack" in card:
        a = card["autoattack"]
        for attack, v in a["robust_accuracy_after"].items():
            rows.append((f"  aa: after {attack}", f"{100 * v:.2f}"))
    if "robust_gap" in card:
        g = card["robust_gap"]
        rows.append((f"robust gap (pgd10, {g['n_train']} train imgs)",
                     f"{100 * g['gap']:.2f} ({100 * g['train']:.2f} - {100 * g['test']:.2f})"))
    w = max(len(k) for k, _ in rows)
    aa = f", AA on {card['n_aa']}" if card.get("n_aa") else ""
    head = (f"{card['model']} / {card['method']} on {card['dataset']} ({card['n_test']} test images"
            f"{aa}, eps {card['eps_255']}/255)")
    lines = [head] + [f"  {k:<{w}}  {v}" for k, v in rows]
    if "curves" in card:
        c = card["curves"]
        lines.append("  curves: eps/255 " + " ".join(f"{e:g}" for e in c["eps"]["eps_255"])
                     + " | PGD-20 " + " ".join(f"{100 * v:.1f}" for v in c["eps"]["pgd20"]))
    bad = [c for c in card.get("sanity", []) if c["status"] == "warn"]
    if card.get("sanity"):
        if bad:
            lines.append(f"  !! {len(bad)} SANITY CHECK(S) FAILED: this evaluation may over-report robustness")
            lines += [f"  !! {c['check']}: {c['message']}  [{c['doc']}]" for c in bad]
        else:
            ran = sum(c["status"] == "ok" for c in card["sanity"])
            lines.append(f"  sanity: {ran} checks passed")
    return "\n".join(lines)

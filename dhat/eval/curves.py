"""Robustness curves: accuracy against the budget ε and against the number of PGD steps.

* ε-curve: PGD-20 (CE) and CW∞ (PGD-20 on the CW margin) at ε ∈ {2, 4, 6, 8, 10, 12, 16}/255,
  step size ε/4 (2/255 at 8/255, and every point can cross its ball within 20 steps), uniform
  random start; ε = 0 is the clean accuracy.
* steps-curve: PGD (CE) with 1, 5, 10, 20, 50 steps at the evaluation ε and step size.

A well-behaved evaluation gives curves that fall with ε (to ~0 at large ε) and flatten with
steps. `monotone_violations` lists where they do not (the sanity checks report it).
Plots use matplotlib (optional extra `dhat[plot]`), imported lazily, Agg canvas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..attacks.registry import Context, get_attack
from ..errors import UserError
from ..io import atomic_write

EPS_255 = (2, 4, 6, 8, 10, 12, 16)
STEPS = (1, 5, 10, 20, 50)


def _acc(model, x, y, name: str, eps, step_size, batch_size, device, seed) -> float:
    """Accuracy under the registry's attack `name` at (eps, step_size)."""
    ctx = Context(eps, step_size, seed, batch_size, device)
    return get_attack(name).run(model, x, y, ctx).correct.float().mean().item()


def robustness_curves(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    eps_255: Sequence[float] = EPS_255,
    steps: Sequence[int] = STEPS,
    batch_size: int = 256,
    device="cpu",
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Accuracy (fractions) on images x (uint8 or float in [0, 1]) -> a JSON-ready dict:
    {"n" (the image count every point is measured on), "clean", "eps": {"eps_255", "pgd20",
    "cw", ...}, "steps": {"steps", "pgd", ...}}."""
    clean = _acc(model, x, y, "clean", eps, step_size, batch_size, device, seed)
    pgd20, cw = [clean], [clean]
    for e in eps_255:
        e_ = e / 255
        for name, out in (("pgd20", pgd20), ("cw20", cw)):
            out.append(_acc(model, x, y, name, e_, e_ / 4, batch_size, device, seed))
        if log is not None:
            log(
                f"  curves (n={len(y)}): eps {e}/255  PGD-20 {100 * pgd20[-1]:.2f}  "
                f"CW {100 * cw[-1]:.2f}"
            )
    by_steps = []
    for k in steps:
        by_steps.append(_acc(model, x, y, f"pgd{k}", eps, step_size, batch_size, device, seed))
        if log is not None:
            log(f"  curves (n={len(y)}): PGD-{k}  {100 * by_steps[-1]:.2f}")
    return {
        "n": len(y),
        "clean": clean,
        "seed": seed,
        "eps": {
            "eps_255": [0, *eps_255],
            "pgd20": pgd20,
            "cw": cw,
            "steps": 20,
            "step_size": "eps/4",
            "init": "uniform",
        },
        "steps": {
            "steps": list(steps),
            "pgd": by_steps,
            "eps_255": round(eps * 255, 3),
            "step_size_255": round(step_size * 255, 3),
            "init": "uniform",
        },
    }


def _noise(p: float, n: int) -> float:
    """Two binomial standard errors plus one image: differences below this are noise."""
    return 2 * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1)) + 1 / max(n, 1)


def monotone_violations(curves: dict) -> list[str]:
    """Where accuracy rises with ε or with steps by more than noise."""
    n = curves.get("n", 0)
    out = []
    e = curves["eps"]
    for key in ("pgd20", "cw"):
        acc = e[key]
        for i in range(1, len(acc)):
            if acc[i] - min(acc[:i]) > _noise(acc[i], n):
                out.append(
                    f"{key} accuracy rises from {100 * min(acc[:i]):.1f}% to {100 * acc[i]:.1f}% "
                    f"at eps {e['eps_255'][i]}/255"
                )
                break
    s = curves["steps"]
    acc = s["pgd"]
    for i in range(1, len(acc)):
        if acc[i] - min(acc[:i]) > _noise(acc[i], n):
            out.append(
                f"PGD accuracy rises from {100 * min(acc[:i]):.1f}% to {100 * acc[i]:.1f}% "
                f"at {s['steps'][i]} steps"
            )
            break
    return out


def figure(ncols: int, width: float = 5.0):
    try:  # matplotlib is an optional dependency (dhat[plot])
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional: matplotlib
        from matplotlib.figure import Figure  # optional dependency: matplotlib
    except ImportError:
        raise UserError(
            "plots need matplotlib: pip install matplotlib   (or 'dhat[plot]')"
        ) from None
    fig = Figure(figsize=(width * ncols, 3.8))
    FigureCanvasAgg(fig)
    return fig


def plot_curves(runs: Sequence[tuple[str, dict]], path: str | Path) -> Path:
    """One figure, two panels (accuracy vs ε: PGD-20 solid, CW dashed; accuracy vs PGD steps),
    one colour per run. `runs` = [(label, curves dict)]. The image count n is in the panel
    titles when every run has the same, else in each run's legend label. Writes a PNG and
    returns its path."""
    fig = figure(2)
    ax_e, ax_s = fig.subplots(1, 2)
    ns = {c.get("n") for _, c in runs}
    same_n = next(iter(ns)) if len(ns) == 1 else None
    for i, (label, c) in enumerate(runs):
        if same_n is None:
            label = f"{label}, n={c.get('n', '?')}"
        colour = f"C{i % 10}"
        ax_e.plot(
            c["eps"]["eps_255"],
            [100 * v for v in c["eps"]["pgd20"]],
            "-o",
            ms=3,
            color=colour,
            label=f"{label} PGD-20",
        )
        ax_e.plot(
            c["eps"]["eps_255"],
            [100 * v for v in c["eps"]["cw"]],
            "--s",
            ms=3,
            color=colour,
            label=f"{label} CW",
        )
        ax_s.plot(
            c["steps"]["steps"],
            [100 * v for v in c["steps"]["pgd"]],
            "-o",
            ms=3,
            color=colour,
            label=f"{label} (ε={c['steps']['eps_255']:g}/255)",
        )
    ax_e.set_xlabel("ε (/255)")
    ax_e.set_ylabel("accuracy (%)")
    on = f" (n={same_n} images)" if same_n is not None else ""
    ax_e.set_title(f"accuracy under attack vs budget{on}")
    ax_s.set_xscale("log")
    ax_s.set_xlabel("PGD steps")
    ax_s.set_ylabel("accuracy (%)")
    ax_s.set_title(f"accuracy vs PGD steps{on}")
    for ax in (ax_e, ax_s):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return path

"""A thin adapter over the official AutoAttack (Croce & Hein, 2020), standard version.

`run_autoattack` runs APGD-CE, APGD-T, FAB-T and Square (version='standard', L-inf) from the
installed package, unchanged: the `autoattack` module (github.com/fra31/auto-attack) if it is
importable, else the PyPI package `pyautoattack` (a packaged copy of the same code, with a
keyword-only API). Neither is a hard dependency: `pip install --no-deps pyautoattack`.

AutoAttack applies its attacks in cascade: each attack only sees the images that every
earlier attack failed on, and reports the robust accuracy after it. The packages print those
numbers but do not return them, so the adapter calls the package once per attack, in the
standard order, on the images still robust (the package's own way to run a subset of its
attacks: `attacks_to_run`). Every attack re-seeds itself per batch and the batches are the
same images in the same order, so the cascade is the one a single call runs: the final robust
accuracy equals `AutoAttack(...).run_standard_evaluation(x, y)` with the same seed and batch
size (tests/test_eval_autoattack.py checks this). The adapter hands the package one batch at
a time (the batches the package would form itself), which gives a progress bar per attack.

`run_single` runs one of the four attacks alone on every image, with the standard version's
settings, the same way (the registry's apgd-ce, apgd-t, fab-t and square). Both hand their
package calls to a `batches` runner (`dhat.eval.runner`: resumable, sharded); each call's
result and AutoAttack's notes during it depend only on its batch and the seed.

`estimate_autoattack_seconds` times the same cascade on one batch with a reduced budget and
extrapolates each attack to its full budget and to the images it will see.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version as dist_version
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..modes import frozen_params, model_mode
from ..pixels import to_unit

Batches = Callable[[str, int, Callable[[int], Any]], list[Any]]
Inspect = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def _local(key: str, n: int, fn: Callable[[int], Any]) -> list[Any]:
    return [fn(i) for i in range(n)]


STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
INSTALL_HINT = "pip install --no-deps pyautoattack   (or: pip install 'dhat[autoattack]')"


def import_autoattack():
    """(module, distribution name, version): `autoattack` if importable, else `pyautoattack`."""
    for name in ("autoattack", "pyautoattack"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "AutoAttack"):
            version = getattr(module, "__version__", None)
            if version is None:
                try:
                    version = dist_version(name)
                except Exception:
                    version = "unknown"
            return module, name, str(version)
    raise UserError(f"AutoAttack is not installed; install it with: {INSTALL_HINT}")


def autoattack_available() -> bool:
    try:
        import_autoattack()
        return True
    except UserError:
        return False


class _Capture(logging.Handler):
    """Collects the warnings AutoAttack's own checks log (randomness, probabilities, ...)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _noted(call: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """Run one package call -> (its result, what AutoAttack's checks said during it), so that a
    batch's notes travel with its result (a resumed or sharded batch keeps them); `_say`
    re-issues them where the caller collects them."""
    handler = _Capture()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = call()
    finally:
        aa_logger.removeHandler(handler)
    notes = handler.messages + [str(w.message) for w in caught if w.category is Warning]
    for w in caught:  # others (a torch deprecation, ...) pass through
        if w.category is not Warning:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out, notes


def _say(results: list[tuple[torch.Tensor, list[str]]]) -> torch.Tensor:
    """The batches' results concatenated; their notes re-issued (as AutoAttack's warnings)."""
    for _, notes in results:
        for m in notes:
            warnings.warn(m, Warning, stacklevel=2)
    return torch.cat([r for r, _ in results])


def _build(module, name: str, model, *, eps: float, seed: int, device) -> Any:
    if name == "pyautoattack":  # keyword-only API, logs through logging.getLogger('auto-attack')
        aa = module.AutoAttack(
            model, norm="Linf", eps=eps, version="standard", seed=seed, device=device
        )
    else:  # the official package: verbose prints to stdout
        aa = module.AutoAttack(
            model, norm="Linf", eps=eps, version="standard", seed=seed, device=device, verbose=False
        )
    return aa


def _evaluate(aa, name: str, x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """One run_standard_evaluation call -> (x_adv, y_adv) for either package."""
    if name == "pyautoattack":
        return aa.run_standard_evaluation(x, y, batch_size=batch_size)
    return aa.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)


def reduce_budget(aa, *, n_iter: int | None = None, n_queries: int | None = None) -> None:
    """Fewer iterations/queries than standard (tests and smoke runs only): the step-size
    checkpoints APGD derives from `n_iter` in its constructor are recomputed the same way."""
    if n_iter is not None:
        for attack in (aa.apgd, aa.apgd_targeted):
            attack.n_iter = attack.n_iter_orig = n_iter
            attack.n_iter_2 = max(int(0.22 * n_iter), 1)
            attack.n_iter_min = max(int(0.06 * n_iter), 1)
            attack.size_decr = max(int(0.03 * n_iter), 1)
        aa.fab.n_iter = n_iter
    if n_queries is not None:
        aa.square.n_queries = n_queries


def run_autoattack(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    batch_size: int = 250,
    device="cpu",
    seed: int = 0,
    n: int | None = None,
    n_iter: int | None = None,
    n_queries: int | None = None,
    return_flags: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
    batches: Batches = _local,
    inspect: Inspect | None = None,
):
    """Standard AutoAttack (L-inf) on the first `n` images of `x` (uint8 (N,3,H,W) or float in
    [0, 1]) -> a JSON-ready dict:

        robust_accuracy            the final robust accuracy (what AutoAttack reports)
        clean_accuracy             accuracy before any attack (same images)
        robust_accuracy_after      {attack: robust accuracy after it}, cumulative, in order
        attacks, package, package_version, version, norm, eps, n, seed, batch_size,
        n_target_classes, warnings (AutoAttack's own checks), seconds

    `n_iter` / `n_queries` shrink APGD/FAB iterations and Square queries for tests; the result
    is then marked version 'standard (reduced budget)'. With `return_flags`, also returns the
    (n,) bool tensor of images robust to every attack. `log` receives a line per attack;
    `progress`: a tqdm bar per attack (None: only on a terminal). `batches(key, n, fn)` runs
    the package calls, batch i of each stage being `fn(i)` (the registry's runners resume or
    shard them; each call depends only on its batch and the seed). `inspect(x, y, x_adv)`
    sees each package call's adversarial images.
    """
    module, name, version = import_autoattack()
    if not 0 < eps <= 1:
        raise UserError(f"AutoAttack eps must lie in (0, 1] in pixel units, got {eps}")
    if n:
        x, y = x[:n], y[:n]
    x = to_unit(x)
    x, y = x.cpu().contiguous(), y.cpu().long()
    device = str(device)
    t0 = time.perf_counter()
    handler = _Capture()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.addHandler(handler)
    propagate, aa_logger.propagate = aa_logger.propagate, False  # re-issued below as warnings
    flagged: list[str] = []
    try:
        with (
            model_mode(model, "eval"),
            frozen_params(model),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            robust, after, clean, standard, n_targets = _cascade(
                module,
                name,
                model,
                x,
                y,
                eps=eps,
                seed=seed,
                device=device,
                batch_size=batch_size,
                n_iter=n_iter,
                n_queries=n_queries,
                flagged=flagged,
                log=log,
                progress=progress,
                batches=batches,
                inspect=inspect,
            )
    finally:
        aa_logger.removeHandler(handler)
        aa_logger.propagate = propagate
    reduced = n_iter is not None or n_queries is not None
    own = [
        str(w.message)
        for w in caught  # AutoAttack's checks warn with the bare Warning class
        if w.category is Warning or f"{name}/" in w.filename.replace("\\", "/")
    ]
    for w in caught:  # anything else (e.g. a torch deprecation) passes through unchanged
        if str(w.message) not in own:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for m in [*handler.messages, *own]:
        if m not in flagged and "attacks_to_run" not in m:
            flagged.append(m)
    for m in flagged:
        warnings.warn(f"AutoAttack: {m}", stacklevel=2)
    result = {
        "package": name,
        "package_version": version,
        "version": "standard"
        if not reduced
        else f"standard (reduced budget: n_iter={n_iter}, n_queries={n_queries})",
        "norm": "Linf",
        "eps": eps,
        "eps_255": round(eps * 255, 3),
        "n": len(y),
        "seed": seed,
        "batch_size": batch_size,
        "attacks": standard,
        "n_target_classes": n_targets,
        "clean_accuracy": clean,
        "robust_accuracy_after": after,
        "robust_accuracy": robust.float().mean().item() if len(y) else 0.0,
        "warnings": flagged,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return (result, robust.clone()) if return_flags else result


def _cascade(
    module,
    name,
    model,
    x,
    y,
    *,
    eps,
    seed,
    device,
    batch_size,
    n_iter,
    n_queries,
    flagged,
    log,
    progress=None,
    timing=None,
    batches: Batches = _local,
    inspect: Inspect | None = None,
):
    """Run the standard attacks one after another on the images still robust, a batch per
    package call: the first attack's batches are the correctly classified images in order,
    as the package forms them. With `timing` (a dict), record per attack the seconds, the
    images attacked and the robust accuracy after it, and the package's full budget."""
    with torch.no_grad():
        num_classes = model(x[:1].to(device)).shape[-1]
    aa = _build(module, name, model, eps=eps, seed=seed, device=device)
    standard = list(aa.attacks_to_run)
    if tuple(standard) != STANDARD_ATTACKS:  # a future version changed the ensemble: say so
        flagged.append(f"{name} standard attacks are {standard}, expected {list(STANDARD_ATTACKS)}")
    n_targets = min(aa.apgd_targeted.n_target_classes, num_classes - 1)
    if n_targets < aa.apgd_targeted.n_target_classes:  # fewer than 10 classes
        aa.apgd_targeted.n_target_classes = n_targets
        aa.fab.n_target_classes = n_targets
    if timing is not None:
        timing["full_budget"] = {
            "apgd-ce": aa.apgd.n_iter,
            "apgd-t": aa.apgd_targeted.n_iter,
            "fab-t": aa.fab.n_iter,
            "square": aa.square.n_queries,
        }
    reduce_budget(aa, n_iter=n_iter, n_queries=n_queries)
    if name == "pyautoattack":
        aa.verbose = False
    robust = torch.zeros(len(y), dtype=torch.bool)
    after: dict[str, float] = {}

    def clean_batch(i: int) -> torch.Tensor:  # the package's own clean pass: same batches
        with torch.no_grad():
            return model(x[i * batch_size : (i + 1) * batch_size].to(device)).argmax(1).cpu()

    pred = batches("aa/clean", (len(y) + batch_size - 1) // batch_size, clean_batch)
    correct = torch.cat(pred) == y if len(y) else torch.zeros(0, dtype=torch.bool)
    clean = correct.float().mean().item() if len(y) else 0.0

    def quiet():  # the official package prints its progress
        return (
            contextlib.redirect_stdout(None) if name != "pyautoattack" else contextlib.nullcontext()
        )

    for k, attack in enumerate(standard):
        # The cascade: the correctly classified images for the first attack, then only those
        # that survived every earlier attack; in the package's batches, in order.
        idx = (correct if k == 0 else robust).nonzero().flatten()
        t0 = time.perf_counter()
        if len(idx) == 0:
            after[attack] = 0.0
        else:
            aa.attacks_to_run = [attack]
            bar = tqdm(
                total=len(idx),
                desc=f"autoattack {attack}",
                unit="img",
                leave=False,
                disable=None if progress is None else not progress,
            )

            def one(i: int, idx=idx, bar=bar) -> tuple[torch.Tensor, list[str]]:
                part = idx[i * batch_size : (i + 1) * batch_size]
                with quiet():
                    (x_adv, y_adv), notes = _noted(
                        lambda: _evaluate(aa, name, x[part], y[part], batch_size)
                    )
                if inspect is not None:
                    inspect(x[part], y[part], x_adv.cpu())
                bar.update(len(part))
                return y_adv.cpu() == y[part], notes

            with bar:
                nb = (len(idx) + batch_size - 1) // batch_size
                survived = _say(batches(f"aa/{attack}", nb, one))
            robust[:] = False
            robust[idx[survived]] = True
            after[attack] = robust.float().mean().item()
            if log is not None:
                log(f"  autoattack: robust accuracy after {attack}: {100 * after[attack]:.2f}%")
        if timing is not None:
            timing[attack] = {
                "seconds": time.perf_counter() - t0,
                "images": len(idx),
                "robust_after": after[attack],
            }
    if timing is not None:
        timing["clean"] = clean
    try:  # AutoAttack's own check that Square did not beat the gradient attacks
        checks = importlib.import_module(f"{name}.checks")
        checks.check_square_sr({"clean": clean, **after}, logger=None)
    except (ImportError, AttributeError, TypeError):
        pass
    return robust, after, clean, standard, n_targets


def run_single(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: str,
    eps: float,
    batch_size: int = 250,
    device="cpu",
    seed: int = 0,
    n_iter: int | None = None,
    n_queries: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
    batches: Batches = _local,
    inspect: Inspect | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """One attack of standard AutoAttack (`attack` in STANDARD_ATTACKS) alone on every image
    of `x` (uint8 or float in [0, 1]), with the standard version's settings, from the
    unmodified package (`attacks_to_run`, a batch per package call) -> (record, (N,) bool
    correct after it). `n_iter` / `n_queries` as in `run_autoattack`."""
    if attack not in STANDARD_ATTACKS:
        raise UserError(f"'{attack}' is not one of AutoAttack's {', '.join(STANDARD_ATTACKS)}")
    module, name, version = import_autoattack()
    if not 0 < eps <= 1:
        raise UserError(f"AutoAttack eps must lie in (0, 1] in pixel units, got {eps}")
    x = to_unit(x)
    x, y = x.cpu().contiguous(), y.cpu().long()
    device = str(device)
    t0 = time.perf_counter()
    handler = _Capture()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.addHandler(handler)
    propagate, aa_logger.propagate = aa_logger.propagate, False
    try:
        with (
            model_mode(model, "eval"),
            frozen_params(model),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            with torch.no_grad():
                num_classes = model(x[:1].to(device)).shape[-1]
            aa = _build(module, name, model, eps=eps, seed=seed, device=device)
            n_targets = min(aa.apgd_targeted.n_target_classes, num_classes - 1)
            aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = n_targets
            reduce_budget(aa, n_iter=n_iter, n_queries=n_queries)
            aa.attacks_to_run = [attack]
            if name == "pyautoattack":
                aa.verbose = False
            bar = tqdm(
                total=len(y),
                desc=attack,
                unit="img",
                leave=False,
                disable=None if progress is None else not progress,
            )

            def one(i: int) -> tuple[torch.Tensor, list[str]]:
                sl = slice(i * batch_size, (i + 1) * batch_size)
                quiet = contextlib.redirect_stdout(None) if name != "pyautoattack" else None
                with quiet or contextlib.nullcontext():
                    (x_adv, y_adv), notes = _noted(
                        lambda: _evaluate(aa, name, x[sl], y[sl], batch_size)
                    )
                if inspect is not None:
                    inspect(x[sl], y[sl], x_adv.cpu())
                bar.update(len(y[sl]))
                return y_adv.cpu() == y[sl], notes

            with bar:
                parts = batches(attack, (len(y) + batch_size - 1) // batch_size, one)
                correct = _say(parts) if parts else torch.zeros(0, dtype=torch.bool)
    finally:
        aa_logger.removeHandler(handler)
        aa_logger.propagate = propagate
    flagged = [m for m in handler.messages if "attacks_to_run" not in m]
    flagged += [
        str(w.message)
        for w in caught
        if (w.category is Warning or f"{name}/" in w.filename.replace("\\", "/"))
        and "attacks_to_run" not in str(w.message)
    ]
    reduced = n_iter is not None or n_queries is not None
    acc = correct.float().mean().item() if len(y) else 0.0
    if log is not None:
        log(f"  {attack}: {100 * acc:.2f}%")
    record = {
        "package": name,
        "package_version": version,
        "attack": attack,
        "version": "standard"
        if not reduced
        else f"standard (reduced budget: n_iter={n_iter}, n_queries={n_queries})",
        "n": len(y),
        "seed": seed,
        "n_target_classes": n_targets,
        "robust_accuracy": acc,
        "warnings": flagged,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return record, correct


CALIBRATION = {"n_iter": 10, "n_queries": 100}  # the reduced budget of the timed batch


def estimate_autoattack_seconds(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    batch_size: int = 250,
    device="cpu",
    seed: int = 0,
    calibration_n: int | None = None,
) -> float:
    """Seconds standard AutoAttack will take on `x`, `y`, from the cascade run on one batch
    with a reduced budget (`CALIBRATION`): each attack's seconds per image, scaled to its full
    budget (iterations, queries), times the images it will see (the clean and surviving
    fractions of the timed batch; a reduced budget leaves more images robust, so this errs
    long). The timed batch holds `calibration_n` images (default: a full batch on a GPU,
    where time depends on the batch more than on its images, 16 on a CPU). The model's
    train/eval mode and `requires_grad` flags are restored."""
    module, name, _ = import_autoattack()
    n = len(y)
    if n == 0:
        return 0.0
    gpu = torch.device(device).type != "cpu"
    b = min(n, batch_size, calibration_n or (batch_size if gpu else 16))
    xb = to_unit(x[:b])
    timing: dict[str, Any] = {}
    with (
        model_mode(model, "eval"),
        frozen_params(model),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(None),
    ):
        warnings.simplefilter("ignore")
        aa_logger = logging.getLogger("auto-attack")
        level, aa_logger.level = aa_logger.level, logging.CRITICAL + 1
        try:
            _cascade(
                module,
                name,
                model,
                xb.cpu().contiguous(),
                y[:b].cpu().long(),
                eps=eps,
                seed=seed,
                device=str(device),
                batch_size=batch_size,
                flagged=[],
                log=None,
                progress=False,
                timing=timing,
                n_iter=CALIBRATION["n_iter"],
                n_queries=CALIBRATION["n_queries"],
            )
        finally:
            aa_logger.level = level
    full, reduced = timing["full_budget"], CALIBRATION
    seconds, share = 0.0, timing["clean"]  # the fraction of images the next attack sees
    for attack in STANDARD_ATTACKS:
        t = timing.get(attack)
        if t is None or not t["images"]:
            break
        scale = full[attack] / (reduced["n_queries"] if attack == "square" else reduced["n_iter"])
        seconds += t["seconds"] / t["images"] * scale * share * n
        share = t["robust_after"]
    return seconds

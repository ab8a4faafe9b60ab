"""One unattended check of a GPU machine: AMP correctness, host syncs, step time and memory,
evaluation speed and a short training run, each written under --out as soon as it is measured.

    python benchmarks/pack_cifar_subset.py            # once: data/cifar10_subset.npz
    python benchmarks/device_check.py --data data/cifar10_subset.npz --minutes 8 \
        --out device_check_out

Parts, in order of value. Part i must end by start + minutes·(s_1 + … + s_i) (shares `SHARES`),
so time a part leaves unused passes to the next; a part is skipped when less than `MIN_PART_S`
of its time is left, and long parts stop their inner loops (methods, rounds, AutoAttack
chunks, epochs) when the next item would not fit.

  amp         bf16 autocast vs fp32 (TF32 off) on a briefly PGD-AT-trained PreActResNet-18:
              clean / PGD-10 / CW-20 accuracy, every method's metrics on a fixed batch (on the
              same fp32 attack inputs, and for a whole bf16 step), Grad-CAM maps; each judged
              against `TOLERANCES`
  syncs       CUDA sync debug mode: synchronising calls per training step of every method, per
              loader epoch and per trainer epoch (their source lines)
  step_time   every method's step time and peak memory (`step_time.py`'s machinery) for
              PreActResNet-18 and WRN-28-10 at batch 128: fp32, bf16, bf16+channels_last, compile
  eval_speed  images/s of clean, PGD-20 and standard AutoAttack on 1,000 images
  training    DHAT and PGD-AT for a few epochs on the subset (`dhat.train.train`), accuracies

Writes <part>.json and <part>.md per part, log.txt, and summary.json (rewritten after every
part: which ran, which were skipped for time or failed). `--smoke`: tiny sizes (`SMOKE`) that
run on a CPU in well under a minute and write the same files with the same fields. The
network is never used: internet connections are refused for the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_time  # noqa: E402  (it also puts the repository root on sys.path)

from dhat.attacks.autoattack import import_autoattack, run_autoattack  # noqa: E402
from dhat.attacks.robust import correct_under  # noqa: E402
from dhat.attacks.spec import make_attack  # noqa: E402
from dhat.cam import grad_cam  # noqa: E402
from dhat.checkpoint import load_model  # noqa: E402
from dhat.config import TrainConfig  # noqa: E402
from dhat.data import Batch, BatchLoader, DataBundle, register_dataset  # noqa: E402
from dhat.errors import UserError  # noqa: E402
from dhat.methods import RunInfo, create_method, list_methods  # noqa: E402
from dhat.models import create_model  # noqa: E402
from dhat.rundir import read_log  # noqa: E402
from dhat.train import train  # noqa: E402

PARTS = ("amp", "syncs", "step_time", "eval_speed", "training")
SHARES = {"amp": 0.15, "syncs": 0.05, "step_time": 0.45, "eval_speed": 0.15, "training": 0.20}
MIN_PART_S = 5.0
EPS, STEP = 8 / 255, 2 / 255
EPOCH = 100  # methods start here: every warm-up-gated part is on (CFA 10, TRADES-AWP 9, SGLR 90)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)  # as dhat's cifar10
FRACTIONS = ("fg_frac", "label_conf")  # metrics that are fractions, judged like accuracies


# --- sizes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Everything --smoke shrinks."""

    model: tuple[str, dict]  # amp, eval_speed, training
    bench_models: tuple[tuple[str, dict], ...]  # step_time
    configs: tuple[str, ...]  # step_time
    batch: int  # training batch (step_time, syncs, training)
    amp_batch: int  # the fixed batch of the method comparisons
    n_eval: int  # images of the accuracy checks and eval_speed
    eval_batch: int
    steps: int  # PGD steps of the training attacks
    val_steps: int
    fixed_epochs: int  # PGD-AT epochs of the fixed model
    train_epochs: int  # epochs of each training run (fewer if short)
    val_size: int
    warmup: int
    reps: int
    aa_budget: dict = field(default_factory=dict)  # run_autoattack n_iter / n_queries


FULL = Sizes(
    model=("preact_resnet18", {}),
    bench_models=(("preact_resnet18", {}), ("wrn_28_10", {})),
    configs=("fp32", "bf16", "bf16+channels_last", "compile"),
    batch=128,
    amp_batch=256,
    n_eval=1000,
    eval_batch=500,
    steps=10,
    val_steps=10,
    fixed_epochs=1,
    train_epochs=3,
    val_size=500,
    warmup=1,
    reps=3,
)
# compile is left out of the smoke run: Inductor's first build took 89 s on a 2-core CPU
SMOKE = Sizes(
    model=("small_cnn", {"width": 4}),
    bench_models=(("small_cnn", {"width": 4}), ("small_cnn", {"width": 8})),
    configs=("fp32", "bf16", "bf16+channels_last"),
    batch=8,
    amp_batch=8,
    n_eval=8,
    eval_batch=4,
    steps=1,
    val_steps=1,
    fixed_epochs=1,
    train_epochs=1,
    val_size=8,
    warmup=1,
    reps=1,
    aa_budget={"n_iter": 2, "n_queries": 5},
)


# --- tolerances and comparisons (plain functions: tests/test_device_check.py) ------------------
@dataclass(frozen=True)
class Tolerance:
    """A low-precision value passes if |low − ref| ≤ atol + rtol·|ref|."""

    atol: float
    rtol: float = 0.0
    why: str = ""

    def allows(self, ref: float, low: float) -> bool:
        return bool(abs(low - ref) <= self.atol + self.rtol * abs(ref))


TOLERANCES = {
    "accuracy": Tolerance(
        0.02,
        why="accuracy (fraction) over the evaluation images, 2 points: "
        "bf16 gradients move the attack differently on a few images, each "
        "worth 1/n; `flips` reports how many changed",
    ),
    "loss": Tolerance(
        1e-2,
        5e-2,
        why="a loss term computed from the same fp32 attack inputs: "
        "bf16 keeps 8 significand bits (rounding 2^-9, 0.2%, per operation) and the "
        "errors add up over the network's layers; 5% relative, with a 0.01 floor "
        "for terms near zero",
    ),
    "loss_step": Tolerance(
        2e-2,
        1e-1,
        why="a loss term of a whole bf16 step: its attacks follow "
        "bf16 gradients, so its adversarial examples differ as well",
    ),
    "batch_accuracy": Tolerance(
        0.05, why="an accuracy or fraction metric of the fixed batch, 5 points"
    ),
    "cam": Tolerance(
        0.05,
        why="mean |Δ| of Grad-CAM maps in [0, 1]; the min-max normalisation "
        "magnifies errors where a map is nearly flat",
    ),
}


@dataclass(frozen=True)
class Precision:
    """How a computation runs: parameters and inputs in `dtype`, under autocast to `autocast`."""

    name: str
    dtype: torch.dtype = torch.float32
    autocast: torch.dtype | None = None

    def context(self, device: torch.device):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)


FP32 = Precision("fp32")
BF16 = Precision("bf16 autocast", autocast=torch.bfloat16)


def metric_kind(name: str, step: bool = False) -> str:
    """The tolerance a method metric is judged by: accuracies and fractions absolutely, loss
    terms relatively (looser for a whole step, whose attacks differ)."""
    if name.endswith("acc") or name in FRACTIONS:
        return "batch_accuracy"
    return "loss_step" if step else "loss"


def compare_values(
    ref: dict[str, float], low: dict[str, float], kind: Callable[[str], str]
) -> dict[str, dict]:
    """{name: ref, low, abs_diff, rel_diff, tolerance, ok} for every value of `ref`."""
    out = {}
    for k, a in ref.items():
        b = low.get(k, math.nan)
        out[k] = {
            "ref": a,
            "low": b,
            "abs_diff": abs(b - a),
            "rel_diff": abs(b - a) / abs(a) if a else None,
            "tolerance": kind(k),
            "ok": TOLERANCES[kind(k)].allows(a, b),
        }
    return out


def compare_correct(ref: torch.Tensor, low: torch.Tensor) -> dict:
    """Accuracies of two (N,) bool correctness vectors, their difference and the fraction of
    images whose correctness differs (flips)."""
    a, b = ref.float().mean().item(), low.float().mean().item()
    return {
        "ref": a,
        "low": b,
        "diff": b - a,
        "flips": (ref != low).float().mean().item(),
        "n": len(ref),
        "tolerance": "accuracy",
        "ok": TOLERANCES["accuracy"].allows(a, b),
    }


def compare_cams(ref: torch.Tensor, low: torch.Tensor, omega: float = 0.1) -> dict:
    """Grad-CAM maps (B, 1, H, W): mean and max |Δ|, and the fraction of pixels on the same
    side of DHAT's background threshold ω."""
    d = (low.float() - ref.float()).abs()
    mean = d.mean().item()
    return {
        "mean_abs_diff": mean,
        "max_abs_diff": d.max().item(),
        "mask_agreement": ((ref <= omega) == (low <= omega)).float().mean().item(),
        "omega": omega,
        "tolerance": "cam",
        "ok": bool(mean <= TOLERANCES["cam"].atol),
    }


class AsDtype(nn.Module):
    """`net` fed its inputs in `dtype` (attacks and evaluation pass float32 images)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x):
        return self.net(x.to(self.dtype))


def fresh_method(name: str, *, steps: int, num_classes: int, num_train: int, device: torch.device):
    """A registered method set up as the trainer would, at epoch `EPOCH`."""
    cfg = TrainConfig(method=name, eps=EPS, step_size=STEP, steps=steps)
    method = create_method(name, **cfg.method_kwargs())
    method.setup(
        RunInfo(num_classes=num_classes, num_train=num_train, epochs=EPOCH + 10, device=device)
    )
    method.start_epoch(EPOCH)
    return method


def method_metrics(
    name: str,
    model: nn.Module,
    batch: Batch,
    prec: Precision,
    device: torch.device,
    *,
    steps: int,
    seed: int,
    inputs: dict | None = None,
) -> tuple[dict[str, float], dict]:
    """One training step's metrics of `name` on a copy of `model` (train mode) in `prec`; with
    `inputs`, only the objective runs, on them. Returns (metrics, the inputs used)."""
    net = copy.deepcopy(model).to(prec.dtype).train()
    b = Batch(batch.x.to(prec.dtype), batch.y, batch.index)
    method = fresh_method(
        name, steps=steps, num_classes=net.num_classes, num_train=len(b.y), device=device
    )
    torch.manual_seed(seed)
    with prec.context(device):
        if inputs is None:
            inputs = method.inputs(net, b)
        else:
            inputs = {
                k: v.to(prec.dtype) if v.is_floating_point() else v for k, v in inputs.items()
            }
        _, metrics = method.objective(net, b, inputs)
    return {k: float(v) for k, v in metrics.items()}, inputs


def correct_in(prec: Precision, model, x, y, attack, device, *, seed: int, batch_size: int):
    """(N,) bool: correctness of a copy of `model` in `prec` under `attack` (None: clean)."""
    net = AsDtype(copy.deepcopy(model).to(prec.dtype), prec.dtype)
    torch.manual_seed(seed)
    with prec.context(device):
        return correct_under(net, x, y, attack, batch_size=batch_size, device=device)


def cam_in(prec: Precision, model, x, y, device) -> torch.Tensor:
    net = copy.deepcopy(model).to(prec.dtype)
    with prec.context(device):
        return grad_cam(net, x.to(device, prec.dtype), y.to(device))


def amp_compare(
    model: nn.Module,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    batch: Batch,
    ref: Precision,
    low: Precision,
    device: torch.device,
    *,
    methods: list[str],
    steps: int,
    eval_batch: int,
    seed: int = 0,
    log: Callable[[str], None] = print,
    time_left: Callable[[], float] = lambda: math.inf,
) -> dict:
    """`low` against `ref`: clean / PGD-10 / CW-20 correctness on (eval_x, eval_y), every
    method's metrics on `batch` (objective on ref's inputs; a whole step), Grad-CAM maps.
    Methods that would not fit in `time_left()` seconds are listed under `skipped`."""
    out: dict[str, Any] = {
        "reference": ref.name,
        "low": low.name,
        "accuracy": {},
        "methods": {},
        "skipped": [],
    }
    for attack in ("clean", "pgd10", "cw20"):
        spec = make_attack(attack, EPS, STEP)
        flags = [
            correct_in(p, model, eval_x, eval_y, spec, device, seed=seed, batch_size=eval_batch)
            for p in (ref, low)
        ]
        out["accuracy"][attack] = compare_correct(*flags)
        log(f"  {attack}: {fmt_cmp(out['accuracy'][attack])}")
    spent = []
    for name in methods:
        if spent and time_left() < 1.5 * max(spent):
            out["skipped"].append(name)
            continue
        t = time.perf_counter()
        try:
            ref_m, inputs = method_metrics(name, model, batch, ref, device, steps=steps, seed=seed)
            obj_m, _ = method_metrics(
                name, model, batch, low, device, steps=steps, seed=seed, inputs=inputs
            )
            step_m, _ = method_metrics(name, model, batch, low, device, steps=steps, seed=seed)
        except Exception as e:  # one method's failure is a result, not the end of the part
            out["methods"][name] = {"error": one_line(e), "ok": False}
            log(f"  {name}: FAILED {one_line(e)}")
            continue
        res = {
            "objective": compare_values(ref_m, obj_m, metric_kind),
            "step": compare_values(ref_m, step_m, lambda k: metric_kind(k, step=True)),
        }
        res["ok"] = all(v["ok"] for part in res.values() for v in part.values())
        out["methods"][name] = res
        spent.append(time.perf_counter() - t)
        log(f"  {name}: {'ok' if res['ok'] else 'OUTSIDE TOLERANCE'}")
    if out["skipped"]:
        log(f"  skipped for time: {', '.join(out['skipped'])}")
    maps = [cam_in(p, model, batch.x, batch.y, device) for p in (ref, low)]
    out["grad_cam"] = compare_cams(*maps)
    out["failures"] = failures(out)
    out["ok"] = not out["failures"]
    return out


def failures(result: dict) -> list[str]:
    """Dotted names of every comparison outside its tolerance."""
    bad = [f"accuracy.{k}" for k, v in result["accuracy"].items() if not v["ok"]]
    for name, res in result["methods"].items():
        if "error" in res:
            bad.append(f"methods.{name} (error)")
            continue
        bad += [
            f"methods.{name}.{part}.{k}"
            for part in ("objective", "step")
            for k, v in res[part].items()
            if not v["ok"]
        ]
    return bad + ([] if result["grad_cam"]["ok"] else ["grad_cam"])


# --- small helpers -----------------------------------------------------------------------------
def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def fmt_cmp(c: dict) -> str:
    return (
        f"{100 * c['ref']:.2f}% vs {100 * c['low']:.2f}% ({100 * c['diff']:+.2f} pts, "
        f"flips {100 * c['flips']:.1f}%) {'ok' if c['ok'] else 'OUTSIDE TOLERANCE'}"
    )


def plain(obj):
    """JSON-ready: non-finite floats become None, tuples lists, dtypes strings."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def model_key(model: tuple[str, dict]) -> str:
    return f"{model[0]} {json.dumps(model[1], sort_keys=True)}"


def methods_in_order() -> list[str]:
    """Every registered method, pgd_at (the ratio reference) and dhat first."""
    names = [m for m in list_methods() if not m.startswith("_")]
    return sorted(names, key=lambda m: (m != "pgd_at", m != "dhat", m))


@contextlib.contextmanager
def no_network():
    """Refuse every internet connection (IPv4/IPv6) in this process within the block."""
    saved = socket.socket.connect, socket.socket.connect_ex

    def refuse(self, address, *rest):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"device_check does not use the network (refused {address})")
        return saved[0](self, address, *rest)

    socket.socket.connect = socket.socket.connect_ex = refuse
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = saved


@contextlib.contextmanager
def tf32_off():
    """fp32 matmuls and convolutions in full fp32 (no TF32) within the block."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def environment(device: torch.device) -> dict[str, Any]:
    """GPU, driver, torch, CUDA and cuDNN versions ('none' / 'cpu' without a GPU)."""
    cuda = device.type == "cuda"
    try:
        aa = import_autoattack()
        autoattack = f"{aa[1]} {aa[2]}"
    except Exception as e:  # reported, not fatal: eval_speed skips its AutoAttack row
        autoattack = f"none ({one_line(e)})"
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else "none",
        "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        if cuda
        else None,
        "driver": nvidia_driver() if cuda else "none",
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "cpu",
        "cudnn": str(torch.backends.cudnn.version()) if cuda else "none",
        "host": step_time.hardware(device),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "autoattack": autoattack,
        "tf32_default": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
    }


def nvidia_driver() -> str:
    """The kernel driver's version from /proc (no subprocess, no NVML), else 'unknown'."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return "unknown"
    words = text.split()
    return next((w for w in words if w[:1].isdigit() and w.count(".") >= 1), "unknown")


# --- the dataset -------------------------------------------------------------------------------
def read_npz(path: str | Path) -> DataBundle:
    """The packed subset (benchmarks/pack_cifar_subset.py) as a CIFAR-10 DataBundle."""
    with np.load(Path(path).expanduser()) as z:
        t = {k: torch.from_numpy(z[k]) for k in ("train_x", "train_y", "test_x", "test_y")}
        names = [str(n) for n in z["class_names"]] if "class_names" in z else []
    return DataBundle(
        "cifar10_npz",
        t["train_x"],
        t["train_y"].long(),
        t["test_x"],
        t["test_y"].long(),
        10,
        CIFAR_MEAN,
        CIFAR_STD,
        names,
    )


@register_dataset("cifar10_npz")
def cifar10_npz(root: str | None = None, download: bool = False) -> DataBundle:
    """The packed CIFAR-10 subset; `root` (--data-root) is the .npz file."""
    return read_npz(root or "data/cifar10_subset.npz")


# --- the run -----------------------------------------------------------------------------------
class Budget:
    """Part i must end by start + total·(s_1 + … + s_i)."""

    def __init__(self, minutes: float):
        self.t0, self.total, self.part = time.monotonic(), 60.0 * minutes, PARTS[0]

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def open(self, part: str) -> float:
        self.part = part
        return self.left()

    def left(self) -> float:
        done = sum(SHARES[p] for p in PARTS[: PARTS.index(self.part) + 1])
        return self.t0 + self.total * done - time.monotonic()


@dataclass
class Check:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    data: DataBundle
    out: Path
    budget: Budget
    env: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)
    step_medians: dict = field(default_factory=dict)  # (model_key, config, method) -> s/step
    _fixed: Path | None = None

    def log(self, msg: str) -> None:
        line = f"[{self.budget.elapsed():7.1f} s] {msg}"
        print(line, flush=True)
        with open(self.out / "log.txt", "a") as f:
            f.write(line + "\n")

    def write(self, part: str, result: dict, md: str) -> None:
        """<part>.json and <part>.md, each replaced atomically."""
        write_file(self.out / f"{part}.json", json.dumps(plain(result), indent=1) + "\n")
        write_file(self.out / f"{part}.md", md)

    def write_summary(self, finished: bool) -> None:
        status = {p: self.parts.get(p, {"status": "pending"}) for p in PARTS}
        write_file(
            self.out / "summary.json",
            json.dumps(
                plain(
                    {
                        "smoke": self.args.smoke,
                        "minutes": self.args.minutes,
                        "data": str(self.args.data),
                        "environment": self.env,
                        "parts": status,
                        "ran": [p for p, s in status.items() if s["status"] == "ran"],
                        "skipped_for_time": [
                            p for p, s in status.items() if s["status"] == "skipped"
                        ],
                        "not_applicable": [p for p, s in status.items() if s["status"] == "n/a"],
                        "failed": [p for p, s in status.items() if s["status"] == "failed"],
                        "wall_s": round(self.budget.elapsed(), 1),
                        "finished": finished,
                    }
                ),
                indent=1,
            )
            + "\n",
        )

    def train_config(self, method: str, out_dir: Path, epochs: int, **changes) -> TrainConfig:
        """A run on the packed subset: bf16 and channels-last on CUDA, unless `changes` say."""
        name, margs = self.sizes.model
        cuda = self.device.type == "cuda"
        return TrainConfig(
            **{
                **dict(
                    dataset="cifar10_npz",
                    data_root=str(self.args.data),
                    model=name,
                    model_args=dict(margs),
                    method=method,
                    epochs=epochs,
                    batch_size=self.sizes.batch,
                    val_size=self.sizes.val_size,
                    steps=self.sizes.steps,
                    val_steps=self.sizes.val_steps,
                    amp="bf16" if cuda else "off",
                    channels_last=cuda,
                    progress=False,
                    device=str(self.device),
                    out_dir=str(out_dir),
                    seed=self.args.seed,
                ),
                **changes,
            }
        )

    def fixed_model(self) -> nn.Module:
        """The fixed model of amp and eval_speed: PGD-AT for `fixed_epochs` (trained once)."""
        if self._fixed is None:
            run = self.out / "runs" / "fixed_pgd_at"
            cfg = self.train_config(
                "pgd_at", run, self.sizes.fixed_epochs, amp="off", channels_last=False
            )
            self.log(f"training the fixed model: pgd_at, {cfg.epochs} epoch(s) -> {run}")
            train(cfg, overwrite=True)
            self._fixed = run / "last.pt"
        return load_model(self._fixed, device=self.device).eval()

    def batch(self, n: int) -> Batch:
        """The first n test images as a fixed batch on the device."""
        x = self.data.test_x[:n].float().div(255).to(self.device)
        return Batch(x, self.data.test_y[:n].to(self.device), torch.arange(n, device=self.device))


def write_file(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    tmp.replace(path)


# --- part: amp ---------------------------------------------------------------------------------
def part_amp(c: Check) -> None:
    model = c.fixed_model()
    s = c.sizes
    t0 = time.perf_counter()
    with tf32_off():
        res = amp_compare(
            model,
            c.data.test_x[: s.n_eval],
            c.data.test_y[: s.n_eval],
            c.batch(s.amp_batch),
            FP32,
            BF16,
            c.device,
            methods=methods_in_order(),
            steps=s.steps,
            eval_batch=s.eval_batch,
            seed=c.args.seed,
            log=c.log,
            time_left=lambda: c.budget.left() - 5,
        )  # 5 s for Grad-CAM, files
    res.update(
        part="amp",
        model=s.model,
        n_eval=min(s.n_eval, len(c.data.test_y)),
        batch=s.amp_batch,
        attack_steps=s.steps,
        epoch=EPOCH,
        tf32=False,
        tolerances={k: asdict(v) for k, v in TOLERANCES.items()},
        seconds=round(time.perf_counter() - t0, 1),
    )
    c.write("amp", res, amp_markdown(res))
    c.log(f"amp: {verdict(res)}")


def verdict(r: dict) -> str:
    return "all within tolerance" if r["ok"] else "outside tolerance: " + ", ".join(r["failures"])


def amp_markdown(r: dict) -> str:
    lines = [
        f"# AMP correctness: {r['low']} vs {r['reference']} (TF32 off)",
        "",
        f"Model `{r['model'][0]}` {json.dumps(r['model'][1])}, briefly PGD-AT-trained; "
        f"{r['n_eval']} test images; methods on a fixed batch of {r['batch']} at epoch "
        f"{r['epoch']}, PGD-{r['attack_steps']}. Verdict: "
        f"**{verdict(r)}**.",
        "",
        "## Tolerances",
        "",
    ]
    lines += [
        f"- `{k}`: atol {v['atol']:g}, rtol {v['rtol']:g}: {v['why']}"
        for k, v in r["tolerances"].items()
    ]
    lines += [
        "",
        "## Accuracy",
        "",
        f"| attack | {r['reference']} | {r['low']} | Δ (pts) | flips | ok |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {k} | {100 * v['ref']:.2f} | {100 * v['low']:.2f} | {100 * v['diff']:+.2f} | "
        f"{100 * v['flips']:.1f}% | {v['ok']} |"
        for k, v in r["accuracy"].items()
    ]
    lines += [
        "",
        "## Method metrics",
        "",
        "`objective`: the loss on the fp32 attack inputs; `step`: a whole step in low "
        "precision (its own attacks).",
        "",
        f"| method | metric | {r['reference']} | objective | step | rel Δ obj | rel Δ step | ok |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, m in r["methods"].items():
        if "error" in m:
            lines.append(f"| {name} | failed: {m['error']} | | | | | | False |")
            continue
        for k, o in m["objective"].items():
            st = m["step"][k]
            rel = lambda v: "-" if v["rel_diff"] is None else f"{v['rel_diff']:.2e}"  # noqa: E731
            lines.append(
                f"| {name} | {k} | {o['ref']:.4f} | {o['low']:.4f} | {st['low']:.4f} | "
                f"{rel(o)} | {rel(st)} | {o['ok'] and st['ok']} |"
            )
    if r["skipped"]:
        lines += ["", f"Skipped for time: {', '.join(r['skipped'])}."]
    g = r["grad_cam"]
    lines += [
        "",
        "## Grad-CAM",
        "",
        f"mean |Δ| {g['mean_abs_diff']:.4f}, max |Δ| {g['max_abs_diff']:.4f}, "
        f"background-mask agreement at ω = {g['omega']}: {100 * g['mask_agreement']:.2f}%; "
        f"ok: {g['ok']}",
        "",
    ]
    return "\n".join(lines)


# --- part: syncs -------------------------------------------------------------------------------
def synchronising(fn: Callable, /, *args, **kwargs) -> list[str]:
    """Source lines ('file:line', one per call) of the synchronising CUDA calls that
    `fn(*args, **kwargs)` makes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [
        f"{short_path(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
    ]


def short_path(path: str) -> str:
    """'dhat/attacks/pgd.py' for a file of this repository, 'torch/...' for site-packages."""
    p = Path(path).resolve()
    if p.is_relative_to(step_time.ROOT):
        return str(p.relative_to(step_time.ROOT))
    return path.split("site-packages/")[-1]


def run_steps(runner: step_time.Runner, k: int) -> None:
    for _ in range(k):
        runner.step()


def iterate(batches) -> None:
    for _ in batches:
        pass


def sync_debug_available(device: torch.device) -> bool:
    return device.type == "cuda"


def part_syncs(c: Check) -> dict | None:
    s, res = c.sizes, {"part": "syncs", "available": sync_debug_available(c.device)}
    res.update(methods={}, loader=None, trainer=None, ok=None)
    if not res["available"]:
        res["reason"] = "no CUDA device (sync debug mode is CUDA's)"
        c.write("syncs", res, f"# Host syncs\n\nNot measured: {res['reason']}.\n")
        return {"status": "n/a", "reason": res["reason"]}
    args = bench_args(s.model, "fp32", s)
    base = create_model(s.model[0], num_classes=10, **s.model[1]).state_dict()
    for method in methods_in_order():
        try:
            r = step_time.build(method, "fp32", args, c.device, copy.deepcopy(base))
            r.step()  # warm-up, not counted
            where = synchronising(run_steps, r, 2)
            res["methods"][method] = {"syncs_per_step": len(where) / 2, "where": sorted(set(where))}
        except Exception as e:
            res["methods"][method] = {"error": one_line(e)}
        c.log(f"  {method}: {res['methods'][method]}")

    def loader_epoch(n):
        x, y = c.data.train_x[:n], c.data.train_y[:n]
        loader = BatchLoader(
            x,
            y,
            s.batch,
            shuffle=True,
            augment=True,
            device=c.device,
            generator=torch.Generator().manual_seed(0),
        )
        where = synchronising(iterate, loader)
        return {"batches": len(loader), "syncs": len(where), "where": sorted(set(where))}

    res["loader"] = [loader_epoch(n) for n in (2 * s.batch, 8 * s.batch)]

    def trainer_cfg(steps, name):
        return c.train_config(
            "pgd_at",
            c.out / "runs" / name,
            1,
            log_every=0,
            train_subset=s.val_size + steps * s.batch,
        )

    train(trainer_cfg(2, "syncs_warmup"), overwrite=True)  # first use of its kernels
    res["trainer"] = []
    for steps in (2, 6):
        where = synchronising(train, trainer_cfg(steps, f"syncs_{steps}"), overwrite=True)
        res["trainer"].append({"steps": steps, "syncs": len(where), "where": sorted(set(where))})
    per_step = [m.get("syncs_per_step") for m in res["methods"].values()]
    res["ok"] = (
        all(v == 0 for v in per_step)
        and res["loader"][0]["syncs"] == res["loader"][1]["syncs"]
        and res["trainer"][0]["syncs"] == res["trainer"][1]["syncs"]
    )
    c.write("syncs", res, syncs_markdown(res))
    return None


def syncs_markdown(r: dict) -> str:
    lines = [
        "# Host syncs (CUDA sync debug mode)",
        "",
        f"Verdict: **{'none per step' if r['ok'] else 'syncs per step found'}** (methods: 0 "
        "per step; loader and trainer epochs: the same count for few and many steps).",
        "",
        "| method | syncs / step | where |",
        "|---|---:|---|",
    ]
    for m, v in r["methods"].items():
        lines.append(
            f"| {m} | {v.get('syncs_per_step', 'failed: ' + v.get('error', ''))} | "
            f"{', '.join(v.get('where', []))} |"
        )
    lines += ["", "| run | size | syncs | where |", "|---|---:|---:|---|"]
    lines += [
        f"| loader epoch | {v['batches']} batches | {v['syncs']} | {', '.join(v['where'])} |"
        for v in r["loader"]
    ]
    lines += [
        f"| trainer epoch (with validation) | {v['steps']} steps | {v['syncs']} | "
        f"{', '.join(v['where'])} |"
        for v in r["trainer"]
    ]
    return "\n".join(lines) + "\n"


# --- part: step_time ---------------------------------------------------------------------------
def bench_args(model: tuple[str, dict], config: str, s: Sizes) -> argparse.Namespace:
    """step_time.py's arguments for one (model, config) at our sizes."""
    model_args = sum((["--model-arg", f"{k}={json.dumps(v)}"] for k, v in model[1].items()), [])
    return step_time.parse(
        [
            "--model",
            model[0],
            *model_args,
            "--batch-size",
            str(s.batch),
            "--steps",
            str(s.steps),
            "--epoch",
            str(EPOCH),
            "--configs",
            config,
            "--reps",
            str(s.reps),
            "--warmup",
            str(s.warmup),
        ]
    )


def time_block(
    c: Check, model: tuple[str, dict], config: str, rows: list[dict]
) -> argparse.Namespace:
    """Every method's step in one (model, config), round-robin as step_time.py times them;
    appends one row per method to `rows`. Methods and rounds that would not fit are skipped."""
    s, (name, margs) = c.sizes, model
    args = bench_args(model, config, s)
    torch.manual_seed(args.seed)
    base = create_model(name, num_classes=args.num_classes, **margs).state_dict()
    key = dict(model=name, model_args=margs, config=config, batch=s.batch)
    runners, cost = [], 0.0
    for method in methods_in_order():
        if runners and c.budget.left() < 2.5 * cost / len(runners):  # setup + the rounds
            rows.append(dict(key, method=method, skipped="time budget"))
            continue
        t = time.perf_counter()
        try:
            r = step_time.build(method, config, args, c.device, copy.deepcopy(base))
            for _ in range(s.warmup):
                r.step()
            r.mem = step_time.cuda_step_memory(r) if c.device.type == "cuda" else None
        except Exception as e:  # reported in the table; the other methods go on
            rows.append(dict(key, method=method, error=one_line(e)))
            c.log(f"  [{name} {config}] {method}: FAILED {one_line(e)}")
            continue
        cost += time.perf_counter() - t
        runners.append(r)
    for rep in range(s.reps):  # round-robin, rotating the order
        last = sum(r.times[-1] for r in runners) if rep else 0.0
        if rep and c.budget.left() < 1.5 * last:
            break
        step_time.timed_round(runners, c.device, rep)
    for r in runners:
        med = statistics.median(r.times)
        c.step_medians[(model_key(model), config, r.name)] = med
        rows.append(
            dict(
                key,
                method=r.name,
                median=med,
                min=min(r.times),
                max=max(r.times),
                reps=len(r.times),
                images_per_s=s.batch / med,
                mem=r.mem,
            )
        )
    ref = c.step_medians.get((model_key(model), config, "pgd_at"))
    for row in rows:
        if (
            row["model"] == name
            and row["model_args"] == margs
            and row["config"] == config
            and "median" in row
            and ref
        ):
            row["ratio_pgd_at"] = row["median"] / ref
    c.log(
        f"  [{name} {config}] "
        + ", ".join(f"{r.name} {statistics.median(r.times):.3f}s" for r in runners)
    )
    del runners
    if c.device.type == "cuda":
        torch.cuda.empty_cache()
    return args


def part_step_time(c: Check) -> None:
    s, rows, args_of = c.sizes, [], {}
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    blocks = [(m, cfg) for m in s.bench_models for cfg in s.configs if cfg != "compile"] + [
        (m, "compile") for m in s.bench_models if "compile" in s.configs
    ]
    first_block: dict[str, float] = {}  # seconds of each model's first (non-compile) block
    for model, config in blocks:
        need = 2 * first_block.get(model_key(model), 0) if config == "compile" else MIN_PART_S
        if c.budget.left() < max(need, MIN_PART_S):
            rows += [
                dict(
                    model=model[0],
                    model_args=model[1],
                    config=config,
                    batch=s.batch,
                    method=m,
                    skipped="time budget",
                )
                for m in methods_in_order()
            ]
            continue
        t = time.perf_counter()
        args_of[model_key(model)] = time_block(c, model, config, rows)
        first_block.setdefault(model_key(model), time.perf_counter() - t)
        res = {
            "part": "step_time",
            "batch": s.batch,
            "attack_steps": s.steps,
            "epoch": EPOCH,
            "warmup": s.warmup,
            "reps": s.reps,
            "device": str(c.device),
            "memory": "CUDA peak allocated during one step minus before it (MiB)"
            if c.device.type == "cuda"
            else "not measured on CPU",
            "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        c.write("step_time", res, step_markdown(rows, args_of, c.device, load0, t0))
    if not args_of:  # nothing fitted: still one file of each kind
        c.write(
            "step_time",
            {"part": "step_time", "rows": rows, "batch": s.batch},
            "# Step time\n\nEvery block was skipped for time.\n",
        )


def step_markdown(rows, args_of, device, load0, t0) -> str:
    parts = []
    for key, args in args_of.items():
        mine = [
            r
            for r in rows
            if model_key((r["model"], r["model_args"])) == key and ("median" in r or "error" in r)
        ]
        parts.append(
            step_time.table(
                mine, args, device, (load0, os.getloadavg()[0]), time.perf_counter() - t0
            )
        )
    skipped = [f"{r['model']} {r['config']} {r['method']}" for r in rows if "skipped" in r]
    if skipped:
        parts.append("Skipped for time: " + ", ".join(skipped) + "\n")
    cut = sorted(
        {
            f"{r['model']} {r['config']}"
            for r in rows
            if "reps" in r and r["reps"] < args_of[model_key((r["model"], r["model_args"]))].reps
        }
    )
    if cut:
        parts.append("Fewer timed rounds than asked (time budget): " + ", ".join(cut) + "\n")
    return "\n".join(parts)


# --- part: eval_speed --------------------------------------------------------------------------
def timed(device: torch.device, fn: Callable, /, *args, **kwargs) -> tuple[Any, float]:
    """(fn(*args, **kwargs), its seconds), the device synchronised before and after."""
    step_time.sync(device)
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    step_time.sync(device)
    return out, time.perf_counter() - t


class ComponentClock:
    """`run_autoattack`'s log callback: the seconds up to each attack's line go to it."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.last = device, {}, 0.0

    def start(self) -> None:
        self.last = time.perf_counter()

    def __call__(self, line: str) -> None:
        step_time.sync(self.device)
        now = time.perf_counter()
        attack = line.split("after ")[1].split(":")[0]
        self.seconds[attack] = self.seconds.get(attack, 0.0) + now - self.last
        self.last = now


def eval_speed_autoattack(c: Check, model, x, y, res: dict[str, Any]) -> str:
    """Standard AutoAttack's images/s, in batch chunks while time is left, into
    res["attacks"]["autoattack"]; returns the report's line on its components."""
    bs = c.sizes.eval_batch
    robust, secs, done, version, clock = [], 0.0, 0, "", ComponentClock(c.device)
    for i in range(0, len(y), bs):  # chunks, while the next one fits
        if i and c.budget.left() < 1.5 * secs / i * bs:
            break
        clock.start()
        (aa, flags), dt = timed(
            c.device,
            run_autoattack,
            model,
            x[i : i + bs],
            y[i : i + bs],
            eps=EPS,
            batch_size=bs,
            device=c.device,
            seed=c.args.seed,
            return_flags=True,
            log=clock,
            **c.sizes.aa_budget,
        )
        robust.append(flags)
        secs, done, version = secs + dt, done + len(flags), aa["version"]
    flags = torch.cat(robust)
    res["attacks"]["autoattack"] = {
        "images": done,
        "seconds": secs,
        "images_per_s": done / secs,
        "accuracy": flags.float().mean().item(),
        "version": version,
        "seconds_per_component": clock.seconds,
    }
    c.log(
        f"  autoattack ({version}): {done / secs:.2f} images/s on {done} images, robust "
        f"{100 * flags.float().mean():.2f}%"
    )
    return (
        f"AutoAttack: {version}; seconds per component (cascade: each runs on the "
        "images still robust): " + ", ".join(f"{k} {v:.1f}" for k, v in clock.seconds.items())
    )


def part_eval_speed(c: Check) -> None:
    s = c.sizes
    model = c.fixed_model()
    x, y = c.data.test_x[: s.n_eval], c.data.test_y[: s.n_eval]
    n, bs = len(y), s.eval_batch
    with torch.no_grad():  # warm-up (library initialisation)
        model(x[:bs].float().div(255).to(c.device))
    res: dict[str, Any] = {"part": "eval_speed", "model": s.model, "batch_size": bs, "attacks": {}}
    for name in ("clean", "pgd20"):
        flags, secs = timed(
            c.device,
            correct_under,
            model,
            x,
            y,
            make_attack(name, EPS, STEP),
            batch_size=bs,
            device=c.device,
        )
        res["attacks"][name] = {
            "images": n,
            "seconds": secs,
            "images_per_s": n / secs,
            "accuracy": flags.float().mean().item(),
        }
        c.log(f"  {name}: {n / secs:.1f} images/s, accuracy {100 * flags.float().mean():.2f}%")
    lines = [
        "# Evaluation speed",
        "",
        f"Model `{s.model[0]}` {json.dumps(s.model[1])} (the fixed PGD-AT model of `amp`), "
        f"batch {bs}, ε 8/255.",
        "",
        "| attack | images | seconds | images/s | accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    try:
        import_autoattack()
    except UserError as e:  # an optional package: its row is skipped, the part still runs
        res["autoattack_skipped"] = one_line(e)
        c.log(f"  autoattack: skipped ({one_line(e)})")
        aa_line = f"AutoAttack: skipped ({one_line(e)})."
    else:
        aa_line = eval_speed_autoattack(c, model, x, y, res)
    lines += [
        f"| {k} | {v['images']} | {v['seconds']:.2f} | {v['images_per_s']:.1f} | "
        f"{100 * v['accuracy']:.2f}% |"
        for k, v in res["attacks"].items()
    ]
    lines += ["", aa_line, ""]
    c.write("eval_speed", res, "\n".join(lines))


# --- part: training ----------------------------------------------------------------------------
def part_training(c: Check) -> None:
    s = c.sizes
    res = {"part": "training", "model": s.model, "runs": {}}
    n_train = len(c.data.train_y) - s.val_size
    steps_per_epoch = math.ceil(n_train / s.batch)
    config = "bf16+channels_last" if c.device.type == "cuda" else "fp32"
    methods = ["dhat", "pgd_at"]
    for k, method in enumerate(methods):
        median = c.step_medians.get((model_key(s.model), config, method))
        epochs = s.train_epochs
        if median is not None:  # from step_time: training plus validation (PGD, no backward)
            per_epoch = (steps_per_epoch + s.val_size / s.batch) * median
            share = c.budget.left() / (len(methods) - k)
            epochs = min(epochs, int(share // per_epoch))
        if epochs < 1 or c.budget.left() < MIN_PART_S:
            res["runs"][method] = {"skipped": "time budget"}
            c.log(f"  {method}: skipped for time")
            continue
        run = c.out / "runs" / method
        cfg = c.train_config(method, run, epochs)
        c.log(f"  {method}: {epochs} epoch(s) of {steps_per_epoch} steps, amp {cfg.amp}")
        _, secs = timed(c.device, train, cfg, overwrite=True)
        model = load_model(run / "last.pt", device=c.device)
        x, y = c.data.test_x[: s.n_eval], c.data.test_y[: s.n_eval]
        test = {
            a: correct_under(
                model, x, y, make_attack(a, EPS, STEP), batch_size=s.eval_batch, device=c.device
            )
            .float()
            .mean()
            .item()
            for a in ("clean", "pgd20")
        }
        res["runs"][method] = {
            "epochs": epochs,
            "amp": cfg.amp,
            "channels_last": cfg.channels_last,
            "train_images": n_train,
            "seconds": secs,
            "log": read_log(run / "log.jsonl"),
            "test_images": len(y),
            "test_clean_acc": test["clean"],
            "test_pgd20_acc": test["pgd20"],
        }
        c.log(
            f"  {method}: {secs:.1f} s, test clean {100 * test['clean']:.2f}%, PGD-20 "
            f"{100 * test['pgd20']:.2f}%"
        )
        c.write("training", res, training_markdown(res, s))
    if not any("epochs" in r for r in res["runs"].values()):
        c.write("training", res, training_markdown(res, s))


def training_markdown(r: dict, s: Sizes) -> str:
    lines = [
        "# Short training run",
        "",
        f"`{s.model[0]}` {json.dumps(s.model[1])} on the packed CIFAR-10 subset, batch "
        f"{s.batch}, PGD-{s.steps} training attacks, lr 0.1; validation PGD-{s.val_steps} "
        f"on {s.val_size} held-out training images; test: clean and PGD-20.",
        "",
        "| method | epoch | loss | val clean | val PGD | images/s | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, run in r["runs"].items():
        if "skipped" in run:
            lines.append(f"| {m} | skipped: {run['skipped']} | | | | | |")
            continue
        lines += [
            f"| {m} | {e['epoch']} | {e['loss']:.4f} | {100 * e['val_clean_acc']:.2f}% | "
            f"{100 * e['val_robust_acc']:.2f}% | {e['images_per_s']:.0f} | "
            f"{e['seconds']:.1f} |"
            for e in run["log"]
        ]
    lines += ["", "| method | test clean | test PGD-20 | wall s |", "|---|---:|---:|---:|"]
    lines += [
        f"| {m} | {100 * v['test_clean_acc']:.2f}% | {100 * v['test_pgd20_acc']:.2f}% | "
        f"{v['seconds']:.1f} |"
        for m, v in r["runs"].items()
        if "epochs" in v
    ]
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------
RUN = {
    "amp": part_amp,
    "syncs": part_syncs,
    "step_time": part_step_time,
    "eval_speed": part_eval_speed,
    "training": part_training,
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        default="data/cifar10_subset.npz",
        help="the packed subset (benchmarks/pack_cifar_subset.py)",
    )
    p.add_argument("--minutes", type=float, default=8.0, help="time budget of the whole check")
    p.add_argument("--out", default="device_check_out")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU, under a minute)")
    p.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    budget = Budget(args.minutes)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.data).expanduser().is_file():
        print(
            f"error: {args.data} not found; pack it first: python benchmarks/pack_cifar_subset.py",
            file=sys.stderr,
        )
        return 2
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.txt").write_text("")
    c = Check(args, SMOKE if args.smoke else FULL, device, read_npz(args.data), out, budget)
    with no_network():
        c.env = environment(device)
        c.log("environment: " + ", ".join(f"{k} {v}" for k, v in c.env.items()))
        c.write_summary(finished=False)
        for part in PARTS:
            left = budget.open(part)
            if part not in args.parts:
                c.parts[part] = {"status": "not asked"}
            elif left < MIN_PART_S:
                c.parts[part] = {"status": "skipped", "reason": f"time budget ({left:.0f} s left)"}
                c.log(f"{part}: skipped, {left:.0f} s left")
            else:
                c.log(f"{part}: start ({left:.0f} s for it)")
                t = time.perf_counter()
                try:
                    status = RUN[part](c) or {"status": "ran"}
                except Exception as e:  # the next parts still run; the traceback is logged
                    status = {"status": "failed", "error": one_line(e)}
                    c.log(f"{part}: FAILED\n{traceback.format_exc()}")
                c.parts[part] = {
                    **status,
                    "seconds": round(time.perf_counter() - t, 1),
                    "files": [f for f in (f"{part}.json", f"{part}.md") if (out / f).is_file()],
                }
                c.log(f"{part}: {c.parts[part]['status']} in {c.parts[part]['seconds']} s")
            c.write_summary(finished=False)
        c.write_summary(finished=True)
    c.log(f"done in {budget.elapsed():.1f} s; results in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

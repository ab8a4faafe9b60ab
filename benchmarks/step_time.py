"""Seconds per training step, images/s and step memory of every registered training method.

    python benchmarks/step_time.py --model preact_resnet18 --batch-size 128 \
        --configs fp32 bf16 channels_last compile --out h100_preact18

One step is what the trainer does per batch: `method(net, batch)` (attacks, Grad-CAM, the
loss) under the config's autocast, `zero_grad`, `backward`, `optimizer.step()` (SGD,
momentum 0.9, weight decay 5e-4), `method.after_step`. (The trainer's optional
`log_clean_acc` forward is not included.) Every method gets its own model, optimizer and a
fixed random batch; after `--warmup` untimed steps, the methods are timed round-robin, one
step each per round, in a rotating order, so that drift in machine load (a shared CPU) hits
all methods alike; the table gives the median of `--reps` rounds, the min-max range, and the
ratio of medians to `pgd_at` in the same config. Methods start at epoch `--epoch` (default
50), so warm-up-gated parts (AWP, class-wise budgets) are active.

Memory: on CUDA, the peak allocated during one step above what was allocated before it
(activations, attack tensors, gradients, temporaries; not the model/optimizer state). On CPU,
with `--cpu-memory`, each method runs in a fresh subprocess (an empty heap): one step at
batch size 1 (lazy library initialisation), then the growth of the peak resident set (VmHWM)
during one full step; otherwise 'n/a'.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dhat.config import TrainConfig  # noqa: E402
from dhat.data import Batch  # noqa: E402
from dhat.methods import RunInfo, create_method, list_methods  # noqa: E402
from dhat.models import create_model  # noqa: E402

CONFIGS = ("fp32", "bf16", "fp16", "channels_last", "compile")


# --- one method's state and step -------------------------------------------------------------
@dataclass
class Runner:
    name: str
    config: str
    model: torch.nn.Module
    net: torch.nn.Module
    method: object
    optimizer: torch.optim.Optimizer
    batch: Batch
    device: torch.device
    times: list
    mem: float | None = None

    def autocast(self):
        opts = set(self.config.split("+"))
        if "bf16" in opts:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if "fp16" in opts:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def step(self) -> None:
        with self.autocast():
            loss, _ = self.method(self.net, self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.method.after_step(self.model)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_round(runners: list[Runner], device: torch.device, rep: int) -> None:
    """One round-robin round: every runner takes one timed step, the order rotated by `rep`
    so that no method always runs first (or after the same neighbour)."""
    k = rep % max(len(runners), 1)
    for r in runners[k:] + runners[:k]:
        sync(device)
        t = time.perf_counter()
        r.step()
        sync(device)
        r.times.append(time.perf_counter() - t)


def split_spec(spec: str) -> tuple[str, dict]:
    """'dhat:batched_forward=true,omega=0.2'
    -> ('dhat', {'batched_forward': True, 'omega': 0.2})."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        try:
            options[k] = json.loads(v)
        except json.JSONDecodeError:
            options[k] = v
    return name, options


def build(name: str, config: str, args, device: torch.device, base_state: dict) -> Runner:
    opts = set(config.split("+"))
    torch.manual_seed(args.seed)
    model = create_model(args.model, num_classes=args.num_classes, **args.model_args)
    model.load_state_dict(base_state)
    model = model.to(device)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g)
    if "channels_last" in opts:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    batch = Batch(x.to(device), y.to(device), torch.arange(args.batch_size, device=device))
    net = torch.compile(model) if "compile" in opts else model
    base_name, options = split_spec(name)
    cfg = TrainConfig(
        method=base_name,
        eps=args.eps,
        step_size=args.step_size,
        steps=args.steps,
        method_args=options,
    )
    method = create_method(base_name, **cfg.method_kwargs())
    method.setup(
        RunInfo(
            num_classes=args.num_classes,
            num_train=args.batch_size,
            epochs=max(args.epoch + 1, 110),
            device=device,
        )
    )
    method.start_epoch(args.epoch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return Runner(name, config, model, net, method, opt, batch, device, [])


# --- memory ----------------------------------------------------------------------------------
def _proc_status(key: str) -> int:
    """A /proc/self/status field in bytes (Linux), e.g. VmRSS or VmHWM."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def cpu_step_memory(runner: Runner) -> float | None:
    """Growth of the peak RSS during one step (MiB), or None where /proc lacks it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
            f.write("5")
        before = _proc_status("VmRSS")
        runner.step()
        return (_proc_status("VmHWM") - before) / 2**20
    except (OSError, KeyError):
        return None


def cuda_step_memory(runner: Runner) -> float:
    sync(runner.device)
    before = torch.cuda.memory_allocated(runner.device)
    torch.cuda.reset_peak_memory_stats(runner.device)
    runner.step()
    sync(runner.device)
    return (torch.cuda.max_memory_allocated(runner.device) - before) / 2**20


def probe_cpu_memory(name: str, config: str, argv: list[str]) -> float | None:
    """Run one cold step of `name` in a fresh process (an empty heap) and read its RSS growth."""
    cmd = [sys.executable, __file__, *argv, "--_probe", f"{name}:{config}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("PROBE "):
            v = json.loads(line[6:])
            return None if v is None else float(v)
    return None


# --- the report ------------------------------------------------------------------------------
def hardware(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = os.cpu_count()
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        return f"{gpu} (CUDA {torch.version.cuda}); host {cpu}, {cores} cores"
    return f"{cpu}, {cores} cores (CPU run)"


def fmt_mem(v) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def table(rows: list[dict], args, device, load: tuple[float, float], wall: float) -> str:
    margs = " " + json.dumps(args.model_args) if args.model_args else ""
    lines = [
        f"# Step time: `{args.model}`{margs}, batch {args.batch_size}, {args.image_size}px",
        "",
        f"- hardware: {hardware(device)}",
        f"- torch {torch.__version__}, python {platform.python_version()}, "
        f"{torch.get_num_threads()} intra-op threads",
        f"- GLIBC_TUNABLES: `{os.environ.get('GLIBC_TUNABLES', '(unset)')}`",
        f"- attack steps {args.steps}, eps {args.eps:.5f}, step {args.step_size:.5f}; "
        f"{args.warmup} warm-up step(s), median of {args.reps} timed steps per method "
        "(round-robin over methods)",
        f"- load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f}; "
        f"benchmark wall time {wall:.0f} s",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += [
        "",
        "| method | config | s/step (median) | min-max | img/s | × pgd_at | "
        f"step mem MiB ({'CUDA peak' if device.type == 'cuda' else 'RSS growth'}) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    ref = {r["config"]: r["median"] for r in rows if r["method"] == "pgd_at" and "median" in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['config']} | failed: {r['error']} | | | | |")
            continue
        ratio = f"{r['median'] / ref[r['config']]:.2f}" if r["config"] in ref else "-"
        lines.append(
            f"| {r['method']} | {r['config']} | {r['median']:.3f} | "
            f"{r['min']:.3f}-{r['max']:.3f} | {args.batch_size / r['median']:.1f} | "
            f"{ratio} | {fmt_mem(r['mem'])} |"
        )
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="preact_resnet18")
    p.add_argument(
        "--model-arg",
        dest="model_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='e.g. width=16 (JSON values: 16, "imagenet")',
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="default: every registered method whose name does not start with '_'; "
        "NAME:KEY=VALUE,... sets method options, e.g. dhat:batched_forward=true",
    )
    p.add_argument(
        "--configs",
        nargs="*",
        default=["fp32"],
        help=f"each one of {', '.join(CONFIGS)} or a '+' combination, e.g. bf16+channels_last",
    )
    p.add_argument("--reps", type=int, default=5, help="timed steps per method (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    p.add_argument("--steps", type=int, default=10, help="attack steps (PGD-K)")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--step-size", type=float, default=2 / 255)
    p.add_argument("--epoch", type=int, default=50, help="epoch index the methods are at")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cpu-memory",
        action="store_true",
        help="on CPU, measure each method's step memory in a fresh subprocess",
    )
    p.add_argument("--out", default=None, help="also write benchmarks/results/<OUT>.md")
    p.add_argument("--note", default="", help="a line added to the report")
    p.add_argument("--_probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    kw = {}
    for item in args.model_args:
        k, _, v = item.partition("=")
        try:
            kw[k] = json.loads(v)
        except json.JSONDecodeError:
            kw[k] = v
    args.model_args = kw
    for c in args.configs:
        if not set(c.split("+")) <= set(CONFIGS):
            p.error(f"unknown config {c!r}; use {', '.join(CONFIGS)} or a '+' combination")
    if args.reps < 1 or args.warmup < 0:
        p.error("--reps must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.manual_seed(args.seed)
    base = create_model(args.model, num_classes=args.num_classes, **args.model_args).state_dict()

    if args._probe:  # one cold step in this fresh process
        name, config = args._probe.split(":", 1)
        small = argparse.Namespace(**{**vars(args), "batch_size": 1})
        build(name, config, small, device, copy.deepcopy(base)).step()  # lazy library init
        runner = build(name, config, args, device, base)
        print("PROBE " + json.dumps(cpu_step_memory(runner)), flush=True)
        return 0

    methods = args.methods or [m for m in list_methods() if not m.startswith("_")]
    if "pgd_at" not in methods:
        print("note: pgd_at not among --methods; no ratios", file=sys.stderr)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    rows, rows_err = [], []
    for config in args.configs:
        runners = []
        for name in methods:
            mem = None
            if device.type == "cpu" and args.cpu_memory:
                mem = probe_cpu_memory(name, config, argv)
            try:
                r = build(name, config, args, device, copy.deepcopy(base))
                for _ in range(args.warmup):
                    r.step()
                if device.type == "cuda":
                    mem = cuda_step_memory(r)
            except Exception as e:  # report it in the table and go on with the others
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]
                rows_err.append(dict(method=name, config=config, error=msg))
                print(f"[{config}] {name}: FAILED {msg}", file=sys.stderr, flush=True)
                continue
            r.mem = mem
            runners.append(r)
            print(f"[{config}] {name}: warmed up", file=sys.stderr, flush=True)
        for rep in range(args.reps):  # round-robin, rotating the order
            timed_round(runners, device, rep)
            print(
                f"[{config}] round {rep + 1}/{args.reps}: "
                + ", ".join(f"{r.name} {r.times[-1]:.2f}s" for r in runners),
                file=sys.stderr,
                flush=True,
            )
        for r in runners:
            rows.append(
                dict(
                    method=r.name,
                    config=config,
                    median=statistics.median(r.times),
                    min=min(r.times),
                    max=max(r.times),
                    mem=r.mem,
                )
            )
        del runners
    report = table(
        rows + rows_err, args, device, (load0, os.getloadavg()[0]), time.perf_counter() - t0
    )
    print(report)
    if args.out:
        out = Path(__file__).resolve().parent / "results" / f"{args.out}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

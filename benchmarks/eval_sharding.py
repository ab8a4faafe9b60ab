"""Standard AutoAttack through `dhat eval`: one process against two sharded processes
(`torchrun --nproc-per-node 2`, gloo), same checkpoint, images, seed and budget, in one run.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184 \\
        python benchmarks/eval_sharding.py --out benchmarks/results/cpu_eval_sharding_aa.md

The checkpoint is a `small_cnn` (width 16) trained for 4 epochs on the built-in `toy_scenes`
data, so AutoAttack has robust images to work on. Each configuration runs `--repeats` times
(alternating); the table gives min and median wall time of the whole command, the ratio of
medians against one process, and whether the two cards' accuracies agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    p.add_argument("--n", type=int, default=64, help="AutoAttack images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16, help="shards split batches: use several")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dhat_bench_"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dhat = [sys.executable, "-m", "dhat.cli"]
    train = [*dhat, "train", "--dataset", "toy_scenes", "--model", "small_cnn"]
    train += ["--model-arg", "width=16", "--method", "pgd_at", "--epochs", "4", "--steps", "3"]
    train += ["--val-steps", "3", "--dataset-arg", "n_train=2000", "--dataset-arg", "n_test=500"]
    train += ["--val-size", "200", "--threads", "1", "--out-dir", str(work / "run"), "--no-eval"]
    subprocess.run([*train, "--no-progress"], env=env, check=True, stdout=subprocess.DEVNULL)
    ck = str(work / "run" / "best.pt")
    common = ["eval", ck, "--attacks", "clean", "aa", "--n-test", str(args.n), "--aa-n"]
    common += [str(args.n), "--gap-train-images", "0", "--no-sanity", "--no-background"]
    common += ["--threads", "1", "--no-progress", "--device", "cpu"]
    common += ["--batch-size", str(args.batch_size)]
    torchrun = shutil.which("torchrun") or "torchrun"
    configs = {
        "1 process": lambda out: [*dhat, *common, "--out", out],
        "2 processes (torchrun, gloo)": lambda out: [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "dhat.cli",
            *common,
            "--out",
            out,
        ],
    }
    times: dict[str, list[float]] = {k: [] for k in configs}
    cards: dict[str, dict] = {}
    for r in range(args.repeats):
        for i, (name, make) in enumerate(configs.items()):
            out = str(work / f"card_{i}_{r}.json")
            times[name].append(run(make(out), env))
            cards[name] = json.loads(Path(out).read_text())
    base = statistics.median(times["1 process"])
    acc = {k: c["accuracy"] for k, c in cards.items()}
    same = len({json.dumps(a, sort_keys=True) for a in acc.values()}) == 1
    lines = [
        f"# Standard AutoAttack, {args.n} images: 1 process vs 2 sharded processes (CPU)",
        "",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, no GPU; "
        f"Python {platform.python_version()}, torch {torch.__version__}, one thread per process",
        "- GLIBC_TUNABLES: " + os.environ.get("GLIBC_TUNABLES", "(not set)"),
        f"- model: small_cnn width 16, PGD-AT 4 epochs on toy_scenes; batch size "
        f"{args.batch_size} (ranks take alternate batches); {args.repeats} repeats, alternating; "
        "wall time of the whole `dhat eval` command (start-up included)",
        f"- the two cards' accuracies are {'identical' if same else 'DIFFERENT'}: {acc}",
        "",
        "| configuration | min (s) | median (s) | ratio of medians to 1 process |",
        "|---|---:|---:|---:|",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {name} | {min(ts):.1f} | {med:.1f} | {med / base:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

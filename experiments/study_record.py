"""What every study script records in its `study.json`: each invocation (commit, argv, seeds,
date, torch, threads), the training config of every run and the evaluation config."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record_invocation(
    out: Path,
    seeds: list[int],
    threads: int,
    configs: dict[str, Any],
    eval_config: Any,
    argv: list[str] | None = None,
) -> None:
    """Append this invocation (`argv`, default the process's) to `out/study.json` and merge in
    its configs (dataclasses)."""
    meta = _read(out)
    meta.setdefault("invocations", []).append(
        {
            "commit": git_commit(),
            "argv": sys.argv if argv is None else argv,
            "seeds": seeds,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "torch": torch.__version__,
            "threads": threads,
        }
    )
    if eval_config is not None:  # a training-only invocation records no evaluation config
        meta["eval_config"] = asdict(eval_config)
    _write(out, meta, configs)


def merge_configs(out: Path, configs: dict[str, Any]) -> None:
    """Merge run configs (dataclasses) into `out/study.json` without recording an invocation
    (a run whose config could only be made once its frozen network existed)."""
    _write(out, _read(out), configs)


def _read(out: Path) -> dict[str, Any]:
    record = out / "study.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def _write(out: Path, meta: dict[str, Any], configs: dict[str, Any]) -> None:
    meta.setdefault("configs", {}).update({k: asdict(v) for k, v in configs.items()})
    (out / "study.json").write_text(json.dumps(meta, indent=2, default=str))

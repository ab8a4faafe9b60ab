"""Training runs for tests/test_distributed.py, as a script torchrun can start.

`python tests/ddp_worker.py JOBS` runs, one after the other in this process, each job of the
JSON list JOBS, `{"out_dir": ..., "overrides": {...}, "params_dir": ... (optional)}`:
`TrainConfig(**BASE, **overrides)` on the "blobs" toy dataset (registered here: torchrun's
processes do not run conftest.py); overrides may hold `"resume": true`. Under
`torchrun --nproc_per_node 2` every process runs them and the first trainer joins the group
(the later ones use it). With params_dir, each rank saves its final parameters there as
rank<R>.pt (to check that DDP kept them equal). A job `{"cli": [ARGS]}` runs
`dhat ARGS` (the command line) instead; with `"aa_budget": {"n_iter", "n_queries"}` its
AutoAttack runs at that reduced budget, and with `"kill_at": N` the process kills itself
(SIGKILL) at AutoAttack's N-th package call (tests of `dhat eval --resume`). Several jobs
share one start of Python and torch per process (seconds each on a small CI box).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import register_blobs  # noqa: E402  (the same toy data as the pytest process)

from dhat.config import TrainConfig  # noqa: E402
from dhat.train import Trainer  # noqa: E402

BASE = dict(
    dataset="blobs",
    model="small_cnn",
    model_args={"width": 4},
    epochs=1,
    batch_size=32,
    val_size=40,
    steps=1,
    val_steps=1,
    lr=0.05,
    milestones=[],
    progress=False,
    device="cpu",
)


def run(out_dir: str, overrides: dict, params_dir: str | None = None) -> Path:
    register_blobs()
    overrides = dict(overrides)
    resume = overrides.pop("resume", False)
    trainer = Trainer(
        TrainConfig(**{**BASE, **overrides, "out_dir": out_dir}),
        resume=resume,
        overwrite=not resume,
    )
    out = trainer.fit()
    if params_dir:
        Path(params_dir).mkdir(parents=True, exist_ok=True)
        torch.save(
            {k: v.detach().cpu() for k, v in trainer.model.named_parameters()},
            Path(params_dir) / f"rank{trainer.dist.rank}.pt",
        )
    return out


def patch_autoattack(budget: dict | None, kill_at: int | None) -> None:
    """Reduce AutoAttack's budget (the unmodified package, fewer iterations/queries), and
    SIGKILL this process at its `kill_at`-th package call."""
    import functools
    import os
    import signal

    from dhat.attacks import autoattack

    if budget:
        autoattack.run_autoattack = functools.partial(autoattack.run_autoattack, **budget)
        autoattack.run_single = functools.partial(autoattack.run_single, **budget)
    if kill_at:
        calls, inner = [0], autoattack._evaluate

        def evaluate(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return inner(*args, **kwargs)

        autoattack._evaluate = evaluate


if __name__ == "__main__":
    torch.set_num_threads(1)
    for job in json.loads(sys.argv[1]):
        if "cli" in job:  # a `dhat` command line, as `torchrun -m dhat.cli ...` runs it
            from dhat.cli import main

            register_blobs()
            patch_autoattack(job.get("aa_budget"), job.get("kill_at"))
            code = main(job["cli"])
            if code:
                sys.exit(code)
            continue
        run(job["out_dir"], job.get("overrides", {}), job.get("params_dir"))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()

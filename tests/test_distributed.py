"""DDP under torchrun: 2 CPU processes (gloo, localhost only) against one process.

Equality needs a step whose result does not depend on how the global batch is split: the
BN-free small CNN (BN batch statistics are per rank under DDP) and `standard` training
(PGD random starts are drawn per rank). Each rank's loss is the mean over its equal slice and
DDP averages the gradients, so the update is the global-batch mean up to float summation
order: weights agree within 1e-6 (observed ~5e-8).
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch

from dhat.checkpoint import read_checkpoint
from dhat.data import BatchLoader
from dhat.train.distributed import Dist, reduce_sums, shard

WORKER = Path(__file__).with_name("ddp_worker.py")
BN_FREE = {"model_args": {"width": 4, "norm": "none"}}


def torchrun(jobs, nproc=2):
    """Run tests/ddp_worker.py's `jobs` under `torchrun --standalone --nproc_per_node nproc`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
        ),
    )
    jobs = [{k: str(v) if isinstance(v, Path) else v for k, v in job.items()} for job in jobs]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(WORKER),
        json.dumps(jobs),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def log_lines(run_dir):
    return [json.loads(ln) for ln in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


STANDARD = {"method": "standard", "epochs": 2, **BN_FREE}


@pytest.fixture(scope="module")
def first_launch(tmp_path_factory):
    """One torchrun (a start of Python and torch per rank is most of a launch's cost) for
    two runs: the first epoch of the standard run that test 1 resumes in a second launch,
    and the 2-step DHAT run of test 2."""
    root = tmp_path_factory.mktemp("ddp")
    torchrun(
        [
            {"out_dir": root / "ddp", "overrides": {**STANDARD, "epochs": 1}},
            {
                "out_dir": root / "dhat",
                "overrides": {"method": "dhat", "val_size": 136, "model_args": {"width": 4}},
                "params_dir": root / "dhat_params",
            },  # 64 training images: 2 global batches
        ]
    )
    return root


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_and_resume(first_launch, tmp_path):
    """2 epochs of 5 global batches (32 = 2 x 16): one process vs DDP run as 1 epoch, then
    --resume (a new launch) to 2 epochs. Same weights (1e-6), same logged metrics, parameters
    equal on ranks."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker; 2 threads on a shared 2-core CI box crawl
    try:
        ddp_worker.run(str(tmp_path / "single"), STANDARD)
    finally:
        torch.set_num_threads(threads)
    ddp = tmp_path / "ddp"
    shutil.copytree(first_launch / "ddp", ddp)
    first = log_lines(ddp)
    assert [r["epoch"] for r in first] == [1]
    torchrun([{"out_dir": ddp, "overrides": {**STANDARD, "resume": True}, "params_dir": tmp_path}])
    a = read_checkpoint(tmp_path / "single" / "last.pt")
    b = read_checkpoint(ddp / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=1e-6, msg=k)
    la, lb = log_lines(tmp_path / "single"), log_lines(ddp)
    assert [r["epoch"] for r in lb] == [1, 2] and lb[0] == first[0]  # rank 0 logs, per epoch
    for ra, rb in zip(la, lb):
        assert rb["images"] == ra["images"] == 160
        for key in ("loss", "acc", "clean_acc", "val_clean_acc"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-5), key
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert set(r0) == set(r1) and r0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"rank parameters differ: {k}"


@pytest.mark.slow
def test_ddp_dhat_two_steps_finishes(first_launch):
    """DHAT (3 DDP forwards before one backward, Grad-CAM hooks and attacks on the unwrapped
    module, BN buffers broadcast between the forwards) under 2-process DDP: 2 steps."""
    run = first_launch / "dhat"
    (rec,) = log_lines(run)
    assert rec["images"] == 64
    for key in ("loss", "ce", "dhlr", "floe", "adv_acc", "val_robust_acc"):
        assert math.isfinite(rec[key]), key
    assert rec["loss"] == pytest.approx(rec["ce"] + rec["dhlr"] + rec["floe"], rel=1e-5)
    files = sorted(p.name for p in run.iterdir())
    assert files == [".dhat-manifest", "best.pt", "config.yaml", "last.pt", "log.jsonl"], files
    state = read_checkpoint(run / "last.pt")
    assert state["epoch"] == 0 and state["config"]["method"] == "dhat"
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    r0 = torch.load(first_launch / "dhat_params" / "rank0.pt")
    r1 = torch.load(first_launch / "dhat_params" / "rank1.pt")
    assert set(r0) == set(r1) and r0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"rank parameters differ: {k}"


def test_rank_slices_partition_each_global_batch():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    y = torch.arange(10)
    single = [
        b.index
        for b in BatchLoader(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    ]
    ranks = [
        [
            b.index
            for b in BatchLoader(
                x,
                y,
                4,
                shuffle=True,
                rank=r,
                world_size=2,
                generator=torch.Generator().manual_seed(0),
            )
        ]
        for r in range(2)
    ]
    for i, full in enumerate(single[:2]):  # full global batches: equal halves
        assert torch.equal(torch.cat([ranks[0][i], ranks[1][i]]), full)
        assert len(ranks[0][i]) == len(ranks[1][i]) == 2


def test_no_rank_gets_an_empty_or_unequal_slice():
    x = torch.zeros(9, 3, 2, 2, dtype=torch.uint8)
    y = torch.arange(9)
    sizes = [[len(b.y) for b in BatchLoader(x, y, 4, rank=r, world_size=2)] for r in range(2)]
    assert sizes[0] == sizes[1] and all(s > 0 for s in sizes[0]), sizes


def test_helpers_are_identities_for_one_process():
    d = Dist()
    assert not d.enabled and d.main
    assert reduce_sums({"a": 1.5}, d, torch.device("cpu")) == {"a": 1.5}
    assert shard(5, d) == slice(0, 5, 1)
    assert list(range(10))[shard(10, Dist(rank=1, world_size=3))] == [1, 4, 7]

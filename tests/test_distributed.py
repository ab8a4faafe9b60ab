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
from dhat.config import PRESETS, build_train_config
from dhat.config.presets import PRESET_WITH_AUX
from dhat.data import BatchLoader
from dhat.distributed import Dist, reduce_sums, shard, split_batch
from dhat.errors import UserError

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
    return proc


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


# --- the global batch under 1, 2, 4 and 8 processes -----------------------------------------
def preset_splits():
    """(preset, batch_size, aux_fraction) of every preset, with --aux-data where it sets an
    aux_fraction then (build_train_config is not used: the presets' datasets are not here)."""
    out = []
    for name, fields in PRESETS.items():
        batch = fields.get("batch_size", 128)
        out.append((name, batch, 0.0))
        if name in PRESET_WITH_AUX:
            out.append((f"{name}+aux", batch, PRESET_WITH_AUX[name]["aux_fraction"]))
    return out


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_every_preset_splits_for_1_2_4_8_processes(world):
    cases = preset_splits()
    assert ("cifar10-dhat-modern+aux", 512, 0.7) in cases  # the case is among them
    for name, batch, frac in cases:
        s = split_batch(batch, frac, world)
        assert s.batch % world == 0 and s.aux % world == 0, name
        assert 0 < s.batch - s.aux and (s.aux > 0) == (frac > 0), name
        assert abs(s.batch - batch) <= world / 2, name  # the nearest multiple
        assert abs(s.aux - round(frac * s.batch)) <= world / 2, name
        if world == 1:  # one process: exactly the recipe, nothing said
            assert (s.batch, s.aux, s.note) == (batch, round(frac * batch), None), name


def test_split_rounds_to_the_nearest_multiple_and_says_so():
    s = split_batch(512, 0.7, 8)  # round(0.7 * 512) = 358 = 8 * 44.75 -> 8 * 45
    assert (s.batch, s.aux) == (512, 360)
    assert s.note == (
        "8 processes: 360 generated images per batch (not 358, aux_fraction 0.703), "
        "so that each divides by 8"
    )
    assert split_batch(512, 0.7, 4).aux == 360  # 358 = 4 * 89.5 -> 4 * 90 (halves up)
    assert split_batch(512, 0.7, 2).aux == 358 and split_batch(512, 0.7, 2).note is None
    s = split_batch(100, 0.0, 8)  # 100 = 8 * 12.5 -> 104
    assert (s.batch, s.aux) == (104, 0) and s.note.startswith("8 processes: batch size 104")
    assert split_batch(101, 0.0, 8).batch == 104 and split_batch(99, 0.0, 8).batch == 96
    assert split_batch(3, 0.0, 8).batch == 8  # at least one image per process
    assert split_batch(16, 0.95, 8).aux == 8  # 15 -> 16 leaves no real image: one per rank
    with pytest.raises(UserError, match="at least 16"):
        split_batch(8, 0.5, 8)


def test_the_modern_preset_builds_with_generated_data(tmp_path):
    """The preset's config is what split_batch receives (batch 512, aux_fraction 0.7)."""
    import numpy as np

    aux = tmp_path / "gen.npz"
    np.savez(aux, image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(4, np.int64))
    cfg = build_train_config(preset="cifar10-dhat-modern", aux_data=str(aux), device="cpu")
    assert (cfg.batch_size, cfg.aux_fraction) == (512, 0.7)
    assert split_batch(cfg.batch_size, cfg.aux_fraction, 8).aux == 360


@pytest.mark.slow
def test_torchrun_cli_rank0_alone_reports_and_evaluates(tmp_path):
    """`dhat train` under 2-process torchrun with a batch of 31: rounded to 32 (said once),
    one "run written to", one quick evaluation and one card (rank 0's)."""
    out = tmp_path / "run"
    args = ["train", "--dataset", "blobs", "--model", "small_cnn", "--model-arg", "width=4"]
    args += ["--method", "standard", "--epochs", "1", "--batch-size", "31", "--val-size", "40"]
    args += ["--steps", "1", "--val-steps", "1", "--milestones", "--device", "cpu"]
    args += ["--no-progress", "--out-dir", str(out)]
    text = torchrun([{"cli": args}]).stdout
    assert text.count("run written to") == 1, text
    assert text.count("2 processes: batch size 32 (not 31)") == 1, text
    assert text.count("quick evaluation") == 1 and text.count("result card (every number)") == 1, (
        text
    )
    cards = sorted(p.name for p in out.glob("eval_*.json"))
    assert cards == ["eval_best_quick.json"], cards
    (rec,) = log_lines(out)
    assert rec["images"] == 200 - 40  # blobs: every training image once

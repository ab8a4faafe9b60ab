"""Evaluation at scale: `dhat eval --resume` after kill -9 inside AutoAttack, and sharded
evaluation under torchrun (2 gloo processes) — each gives the card of one uninterrupted
process. Subprocesses run tests/ddp_worker.py (AutoAttack at a reduced budget)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint

import dhat
from dhat.errors import UserError

pytest.importorskip("pyautoattack")
pytestmark = pytest.mark.usefixtures("one_thread")

WORKER = Path(__file__).with_name("ddp_worker.py")
BUDGET = {"n_iter": 3, "n_queries": 20}
VOLATILE = {"date", "seconds", "records", "path"}


def trained_checkpoint(path: Path, seed: int = 0) -> Path:
    """A dhat checkpoint of a small CNN fitted on the 'blobs' dataset (robust to part of AA)."""
    from conftest import fit

    from dhat.checkpoint import read_checkpoint, save_checkpoint
    from dhat.data import load_dataset

    make_checkpoint(path, num_classes=4, config={"dataset": "blobs"})
    data = load_dataset("blobs")
    torch.manual_seed(seed)
    net = dhat.create_model("small_cnn", num_classes=4, width=4, mean=[0.5] * 3, std=[0.25] * 3)
    fit(net, data.train_x.float() / 255, data.train_y, epochs=8, batch_size=50)
    state = read_checkpoint(path)
    state["model"] = net.state_dict()
    save_checkpoint(path, state)
    return path


def eval_args(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        str(ckpt),
        "--dataset",
        "blobs",
        "--attacks",
        "clean",
        "pgd3",
        "apgd-ce",
        "aa",
        "--n-test",
        "14",
        "--batch-size",
        "4",
        "--gap-train-images",
        "0",
        "--sanity-n",
        "8",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def worker(jobs, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    head = [sys.executable]
    if nproc > 1:
        head += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(
        [*head, str(WORKER), json.dumps(jobs)], env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def stable(card_path: Path) -> tuple[dict, dict]:
    """(the card without its timings, records entry and --out, its per-image records)."""
    from dhat.eval.card import read_card
    from dhat.eval.records import card_records

    card = read_card(card_path)
    records = card_records(card, card_path)
    card = {k: v for k, v in card.items() if k not in VOLATILE}
    card["eval_config"] = {k: v for k, v in card["eval_config"].items() if k != "out"}
    for rec in [card.get("autoattack", {}), *card.get("attack_records", {}).values()]:
        rec.pop("seconds", None)
    return card, records


def same(a: Path, b: Path) -> None:
    (ca, ra), (cb, rb) = stable(a), stable(b)
    assert ca == cb
    assert sorted(ra) == sorted(rb) and all(np.array_equal(ra[k], rb[k]) for k in ra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted single-process card."""
    d = tmp_path_factory.mktemp("ref")
    ckpt = trained_checkpoint(d / "best.pt")
    worker([{"cli": eval_args(ckpt, d / "card.json"), "aa_budget": BUDGET}])
    card = json.loads((d / "card.json").read_text())
    after = card["autoattack"]["robust_accuracy_after"]
    assert after["apgd-t"] > 0  # the cascade reaches its later attacks
    assert not (d / "card.eval-state.pt").exists()  # removed once the card is written
    return ckpt, d / "card.json"


def test_kill_9_inside_autoattack_then_resume_gives_the_same_card(reference, tmp_path):
    ckpt, ref = reference
    out = tmp_path / "card.json"
    state = tmp_path / "card.eval-state.pt"
    # calls: apgd-ce alone (4 batches), then the cascade's apgd-ce (<= 4), apgd-t, ...
    killed = worker(
        [{"cli": eval_args(ckpt, out), "aa_budget": BUDGET, "kill_at": 10}], check=False
    )
    assert killed.returncode == -9 and state.exists() and not out.exists()
    saved = torch.load(state, weights_only=True)["done"]
    assert len(saved["apgd-ce"]) == 4 and 0 < sum(len(v) for k, v in saved.items() if "/" in k)
    # the state of this evaluation is refused for another checkpoint, with one line
    other = trained_checkpoint(tmp_path / "other.pt", seed=1)
    from dhat.cli import main

    assert main(eval_args(other, out, "--resume")) == 2
    resumed = worker([{"cli": eval_args(ckpt, out, "--resume"), "aa_budget": BUDGET}])
    assert "resuming:" in resumed.stdout
    same(ref, out)
    assert not state.exists()


def test_a_state_of_another_evaluation_is_refused(tmp_path):
    from dhat.eval.runner import Resumable

    ident = {"checkpoint_sha256": "a", "attacks": ["aa"], "seed": 0}
    r = Resumable(tmp_path / "s.pt", ident, resume=False)
    assert r("k", 2, lambda i: torch.tensor([i])) == [torch.tensor([0]), torch.tensor([1])]
    again = Resumable(tmp_path / "s.pt", ident, resume=True)
    assert again.resumed == 2 and again("k", 3, lambda i: torch.tensor([10 + i]))[2].item() == 12
    for key, v in (("checkpoint_sha256", "b"), ("attacks", ["aa", "pgd10"]), ("seed", 1)):
        with pytest.raises(UserError, match=f"another evaluation \\(its {key} differs\\)"):
            Resumable(tmp_path / "s.pt", {**ident, key: v}, resume=True)


def test_two_gloo_processes_write_the_card_of_one(reference, tmp_path):
    ckpt, ref = reference
    out = tmp_path / "card.json"
    proc = worker([{"cli": eval_args(ckpt, out), "aa_budget": BUDGET}], nproc=2)
    assert proc.stdout.count("sharded: 2 processes") == 1  # rank 0 alone prints
    assert proc.stdout.count("result written to") == 1
    same(ref, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "card.records.npz"]

"""The run directory under interruption, planted links, foreign files and a full disk
(issue #26): best.pt stays in step with last.pt and the log, a resume that saves nothing
changes nothing, --overwrite deletes only the run's own files, no write goes through a
planted link, a full disk is one line, and an evaluation never writes into a swapped run.

Trainings run in-process through `dhat.cli.main` on the tiny `blobs` dataset (conftest);
faults are injected by wrapping the functions the trainer calls.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import digest, one_line
from conftest import train_fast as train

import dhat.io
import dhat.train.trainer as trainer_mod
from dhat import rundir
from dhat.checkpoint import read_checkpoint
from dhat.errors import UserError
from dhat.methods import register_method
from dhat.methods.standard import Standard
from dhat.rundir import (
    MANIFEST,
    RunLock,
    RunSwapped,
    old_dir,
    pin_folder,
    staging_dir,
    swap_in,
)


def log_records(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]


def same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def no_lock_left(out: Path) -> None:
    assert not RunLock(out).path.exists(), "the run left its lock file in the parent folder"


# epoch 2 improves on epoch 1's validation accuracy (25% -> 50%): a new best.pt at epoch 2
BEST_TWICE = ["--select-metric", "clean", "--lr", "0.1", "--milestones", "5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch run whose epoch 2 is its best."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert train(out, *BEST_TWICE) == 0
    records = log_records(out)
    assert [r["best"] for r in records] == [True, True], records  # the test needs a new best
    return out


def fail_on(monkeypatch, name: str, epoch: int, exc: BaseException) -> list:
    """Make the trainer's save_checkpoint raise `exc` instead of writing `name` at 0-based
    `epoch` (after the writes before it in the epoch)."""
    real, hits = trainer_mod.save_checkpoint, []

    def save(path, state):
        if Path(path).name == name and state["epoch"] == epoch and not hits:
            hits.append(path)
            raise exc
        return real(path, state)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save)
    return hits


# --- 1. best.pt under interruption -------------------------------------------------------
@pytest.mark.parametrize("between", ["last.pt", "best.pt"])
def test_interrupt_between_the_checkpoint_writes_then_resume_gives_the_uninterrupted_best(
    tmp_path, reference, monkeypatch, capsys, between
):
    """Ctrl-C as epoch 2 writes `between` (best.pt: after last.pt recorded the new best);
    kill -9 leftovers planted; --resume must end with the uninterrupted run's best.pt."""
    out = tmp_path / "run"
    hits = fail_on(monkeypatch, between, 1, KeyboardInterrupt())
    assert train(out, *BEST_TWICE) == 130
    assert hits and "interrupted" in one_line(capsys.readouterr().err)
    if between == "best.pt":  # the state the fix must repair: last.pt names epoch 2 as best
        last = read_checkpoint(out / "last.pt")
        assert last["epoch"] == last["best_epoch"] == 1
        assert read_checkpoint(out / "best.pt")["epoch"] == 0
    leftovers = [".best.pt.k9x2ab.tmp", ".last.pt.zz81qq.tmp", ".config.yaml.u1a2b3.tmp"]
    for name in leftovers:
        (out / name).write_bytes(b"partial")
    monkeypatch.undo()
    assert train(out, *BEST_TWICE, "--resume") == 0
    ref_best, best = read_checkpoint(reference / "best.pt"), read_checkpoint(out / "best.pt")
    assert best["epoch"] == ref_best["epoch"] == 1
    same_tensors(best["model"], ref_best["model"])
    same_tensors(read_checkpoint(out / "last.pt")["model"], best["model"])
    assert [r["best"] for r in log_records(out)] == [True, True]
    assert not [n for n in leftovers if (out / n).exists()]
    assert [p.name for p in out.glob(".*")] == [MANIFEST]
    no_lock_left(out)


# --- 2. a resume changes config.yaml / events.jsonl only with its first save -----------
@register_method("_nan_in_epoch_2")
@dataclass
class NanInEpoch2(Standard):
    def objective(self, model, batch, inputs):
        loss, metrics = super().objective(model, batch, inputs)
        return (loss * float("nan") if self.epoch >= 1 else loss), metrics


def test_a_resume_that_diverges_before_saving_leaves_config_and_events_as_they_were(
    tmp_path, capsys
):
    out = tmp_path / "run"
    assert train(out, "--epochs", "1", method="_nan_in_epoch_2") == 0
    before = digest(out)
    assert "events.jsonl" not in before
    flags = ["--resume", "--epochs", "2", "--allow-change", "lr", "--lr", "0.01"]
    assert train(out, *flags, method="_nan_in_epoch_2") == 2
    assert "diverged" in one_line(capsys.readouterr().err)
    assert digest(out) == before  # config.yaml still says lr 0.05, as last.pt does
    last = read_checkpoint(out / "last.pt")
    assert (out / "config.yaml").read_text() == last["config_yaml"]
    assert "lr: 0.05\n" in last["config_yaml"]


def test_a_resume_writes_config_and_events_with_its_checkpoint_and_a_later_resume_repairs_them(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    assert train(out, "--epochs", "1") == 0
    real = dhat.io.write_text

    def killed_after_last_pt(path, text):  # Ctrl-C after last.pt, before config.yaml
        if Path(path).name == "config.yaml":
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(dhat.io, "write_text", killed_after_last_pt)
    flags = ["--resume", "--epochs", "2", "--allow-change", "lr", "--lr", "0.01"]
    assert train(out, *flags) == 130
    last = read_checkpoint(out / "last.pt")
    assert last["epoch"] == 1 and "lr: 0.01\n" in last["config_yaml"]
    assert "lr: 0.05\n" in (out / "config.yaml").read_text()  # the window the resume repairs
    assert not (out / "events.jsonl").exists()
    monkeypatch.undo()
    capsys.readouterr()
    # nothing left to train: the resume only repairs
    assert train(out, "--resume", "--epochs", "2", "--lr", "0.01") == 0
    assert (out / "config.yaml").read_text() == last["config_yaml"]
    events = [json.loads(ln) for ln in (out / "events.jsonl").read_text().splitlines()]
    assert events == last["events"] and len(events) == 1
    assert events[0]["changed"] == {"lr": {"from": 0.05, "to": 0.01}}
    assert events[0]["from_epoch"] == 1


# --- 3. --overwrite removes only the run's files -----------------------------------------
def test_overwrite_of_the_current_folder_refuses_foreign_files_and_deletes_nothing(
    tmp_path, monkeypatch, capsys
):
    here = tmp_path / "work"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    (here / "data").mkdir()
    (here / "data" / "x.bin").write_bytes(b"\0\1")
    monkeypatch.chdir(here)
    assert train(Path("."), "--epochs", "1") == 0  # a new run beside other files: allowed
    capsys.readouterr()
    before = digest(here)
    assert train(Path("."), "--epochs", "1", "--overwrite", "--seed", "1") == 2
    line = one_line(capsys.readouterr().err)
    assert "'data'" in line and "1 more" in line and "not a file of a dhat run" in line, line
    assert digest(here) == before
    no_lock_left(here)
    shutil.rmtree(here / "data")
    (here / "notes.txt").unlink()
    assert train(here, "--epochs", "1", "--overwrite", "--seed", "1") == 0
    assert read_checkpoint(here / "last.pt")["config"]["seed"] == 1


def test_a_new_run_never_replaces_a_foreign_file_of_a_run_name(tmp_path, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "config.yaml").write_text("my own config\n")
    assert train(out, "--epochs", "1") == 2
    line = one_line(capsys.readouterr().err)
    assert "'config.yaml'" in line, line
    assert (out / "config.yaml").read_text() == "my own config\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_a_run_without_manifest_owns_its_dhat_files_and_a_card_written_under_a_pin(
    tmp_path, capsys
):
    """A run saved before manifests owns the names dhat gives its files; a card written under
    `pin_folder` joins the manifest, an unpinned file does not."""
    out = tmp_path / "run"
    assert train(out, "--epochs", "1") == 0
    (out / MANIFEST).unlink()  # as written before manifests existed
    (out / "eval_best.json").write_text("{}")
    assert train(out, "--epochs", "1", "--overwrite") == 0
    assert not (out / "eval_best.json").exists()
    pin = pin_folder(out / "eval_last.json")
    with pin.write(out / "eval_last.json"):
        (out / "eval_last.json").write_text("{}")
    assert "eval_last.json" in (out / MANIFEST).read_text().split()
    (out / "eval_other.json").write_text("{}")  # not written under a pin
    capsys.readouterr()
    assert train(out, "--epochs", "1", "--overwrite") == 2
    assert "'eval_other.json'" in one_line(capsys.readouterr().err)
    (out / "eval_other.json").unlink()
    assert train(out, "--epochs", "1", "--overwrite") == 0
    assert not (out / "eval_last.json").exists()


def test_a_file_that_appears_during_an_overwrite_is_kept(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(out, "--epochs", "1") == 0

    def swap(o, staging):
        (out / "notes.txt").write_text("written while the overwrite trained")
        return swap_in(o, staging)

    monkeypatch.setattr(trainer_mod, "swap_in", swap)
    assert train(out, "--epochs", "1", "--overwrite", "--seed", "1") == 0
    assert (out / "notes.txt").read_text() == "written while the overwrite trained"
    assert read_checkpoint(out / "last.pt")["config"]["seed"] == 1
    assert not old_dir(out).exists() and not staging_dir(out).exists()


# --- 4. symlinks -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert train(out, "--epochs", "1") == 0
    return out


@pytest.mark.parametrize(
    "planted", ["lock", "staging", "old", "log.jsonl", "events.jsonl", MANIFEST, "last.pt"]
)
def test_a_planted_symlink_is_refused_in_one_line_and_its_target_left_untouched(
    tmp_path, one_epoch, capsys, planted
):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    victim = tmp_path / "victim"
    if planted in ("staging", "old"):
        victim.mkdir()
        (victim / "precious.txt").write_text("keep me")
    else:
        victim.write_text("keep me\n")
    link = {
        "lock": RunLock(out).path,
        "staging": staging_dir(out),
        "old": old_dir(out),
    }.get(planted, out / planted)
    if planted == "last.pt":
        (out / "last.pt").rename(victim)  # a run whose last.pt points elsewhere
        victim_before = victim.read_bytes()
    else:
        link.unlink(missing_ok=True)
        victim_before = digest(victim) if victim.is_dir() else victim.read_bytes()
    link.symlink_to(victim)
    before = digest(out)
    flag = "--overwrite" if planted in ("staging", "old") else "--resume"
    assert train(out, flag, "--epochs", "2") == 2
    line = one_line(capsys.readouterr().err)
    assert "symbolic link" in line and link.name in line, line
    assert (digest(victim) if victim.is_dir() else victim.read_bytes()) == victim_before
    assert digest(out) == before and link.is_symlink()
    if planted != "lock":
        no_lock_left(out)


def test_a_hard_linked_lock_file_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    os.link(victim, RunLock(out).path)
    assert train(out, "--epochs", "1") == 2
    assert "hard-linked" in one_line(capsys.readouterr().err)
    assert victim.read_text() == "keep me\n" and not out.exists()


@pytest.mark.parametrize("outcome", ["done", "refused", "diverged", "interrupted"])
def test_no_lock_file_is_left_in_the_parent_folder(tmp_path, one_epoch, outcome):
    out = tmp_path / "run"
    if outcome == "refused":
        shutil.copytree(one_epoch, out)
    method = {"diverged": "_nan_in_epoch_2", "interrupted": "_interrupted"}.get(outcome, "standard")
    rc = train(out, method=method)
    assert rc == {"done": 0, "refused": 2, "diverged": 2, "interrupted": 130}[outcome]
    no_lock_left(out)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@register_method("_interrupted")
@dataclass
class Interrupted(Standard):
    def objective(self, model, batch, inputs):
        raise KeyboardInterrupt


def test_a_lock_taken_on_a_removed_lock_file_is_taken_again(tmp_path, monkeypatch):
    """A writer that opened the lock file just before its holder removed it, then locked the
    removed file, must not believe it holds the lock: it sees the new file is held."""
    out = tmp_path / "run"
    path = RunLock(out).path
    real_flock, holder, done = rundir.fcntl.flock, [], []

    def flock(fd, how):
        if not done:  # between our open and our flock: the holder finishes, another starts
            done.append(True)
            os.unlink(path)
            holder.append(RunLock(out).acquire())
        return real_flock(fd, how)

    monkeypatch.setattr(rundir.fcntl, "flock", flock)
    try:
        with pytest.raises(UserError, match=f"in use by another training \\(PID {os.getpid()} "):
            RunLock(out).acquire()
    finally:
        monkeypatch.undo()
        holder[0].release()
    assert not path.exists()


# --- 5. a full disk ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
    ],
    ids=["oserror", "torch_zip_writer"],
)
def test_a_full_disk_while_saving_keeps_the_last_good_checkpoint_and_is_one_line(
    tmp_path, monkeypatch, capsys, error
):
    out = tmp_path / "run"
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if obj["epoch"] == 1:
            Path(f).write_bytes(b"half a checkpoint")
            raise error
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    assert train(out) == 2
    line = one_line(capsys.readouterr().err)
    assert "saving epoch 2 failed" in line and "last.pt" in line and "epoch 1" in line, line
    assert "No space left on device" in line or "is the disk full?" in line, line
    assert read_checkpoint(out / "last.pt")["epoch"] == 0
    assert [p.name for p in out.glob(".*")] == [MANIFEST]  # no partial file left
    no_lock_left(out)
    monkeypatch.undo()
    assert train(out, "--resume") == 0  # space freed: the run continues
    assert [r["epoch"] for r in log_records(out)] == [1, 2]


def test_a_full_disk_during_an_overwrite_keeps_the_old_run(
    tmp_path, one_epoch, monkeypatch, capsys
):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    before = digest(out)

    def save(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)
    assert train(out, "--overwrite", "--epochs", "1") == 2
    line = one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "still holds the old run" in line, line
    assert digest(out) == before


# --- 6. --allow-change of what a resume cannot change ------------------------------------
def write_aux(path: Path) -> Path:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(path, image=image, label=np.arange(40) % 4)
    return path


@pytest.mark.parametrize(
    "field, flags",
    [
        ("model", ["--model", "resnet18", "--model-arg", "width=4"]),
        ("model_args", ["--model-arg", "width=8"]),
        ("ema_decay", ["--ema-decay", "0.9"]),
        ("aux_data", ["--aux-fraction", "0.25"]),
    ],
)
def test_resume_refuses_changes_last_pt_cannot_follow_even_when_allowed(
    tmp_path, one_epoch, capsys, field, flags
):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    before = digest(out)
    if field == "aux_data":
        flags = ["--aux-data", str(write_aux(tmp_path / "g.npz")), *flags]
    allow = field if field != "aux_data" else "aux_data,aux_fraction"
    assert train(out, "--resume", "--epochs", "2", "--allow-change", allow, *flags) == 2
    line = one_line(capsys.readouterr().err)
    assert f"cannot change {field}" in line and "new run" in line, line
    assert digest(out) == before
    no_lock_left(out)


# --- 7. an evaluation's card and a concurrent overwrite -----------------------------------
def test_a_card_pinned_before_an_overwrite_swapped_the_run_is_refused(tmp_path, one_epoch):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    card = out / "eval_best.json"
    pin = pin_folder(card)  # the evaluation read best.pt here ...
    assert train(out, "--overwrite", "--epochs", "1", "--seed", "1") == 0  # ... then a swap
    with pytest.raises(RunSwapped, match="replaced by `dhat train --overwrite`"):
        with pin.write(card):
            card.write_text("{}")
    assert not card.exists()


def test_a_card_is_refused_while_an_overwrite_of_its_run_is_running(tmp_path, one_epoch):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    card = out / "eval_best.json"
    pin = pin_folder(card)
    staging_dir(out).mkdir()  # a dead overwrite's staging (no lock held): no obstacle
    with pin.write(card):
        card.write_text("{}")
    lock = RunLock(out).acquire()  # now a live overwrite
    try:
        with pytest.raises(RunSwapped, match="being replaced"):
            with pin.write(out / "eval_last.json"):
                (out / "eval_last.json").write_text("{}")
    finally:
        lock.release()
    assert not (out / "eval_last.json").exists() and card.read_text() == "{}"


def test_the_swap_waits_for_a_card_being_written(tmp_path, one_epoch):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    staging = staging_dir(out)
    shutil.copytree(one_epoch, staging)
    (staging / "new.txt").write_text("new run")
    card = out / "eval_best.json"
    swapper = threading.Thread(target=swap_in, args=(out, staging))
    with pin_folder(card).write(card):
        swapper.start()
        time.sleep(0.5)
        assert staging.is_dir() and not (out / "new.txt").exists()  # the swap waits
        card.write_text("{}")
    swapper.join(timeout=30)
    assert not swapper.is_alive() and (out / "new.txt").exists() and not staging.exists()
    assert not card.exists()  # a registered card of the old run went with it

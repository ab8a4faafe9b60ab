"""The run directory's guarantees (issue #17): one writer at a time, an overwrite that loses
nothing when killed, no non-finite checkpoint, resumes that work from any path, evaluation
output that is checked before the attack and never lost after it, torn logs, the umask.

Trainings run in-process through `dhat.cli.main` on the tiny `blobs` dataset (conftest);
the tests that need a second process or `kill -9` start `python WORKER train ...`, a script
written to tmp_path that registers `blobs` and `_gated` (standard training that, at its
first step, writes `<gate>.<pid>` and waits until the file `<gate>` exists), so that what
runs when is decided by the test, not by timing.

Folders are made read-only with the `readonly` fixture, which denies writes under them
inside this process (so it works as root, where chmod does not bind); a chmod variant runs
where chmod does bind.
"""

from __future__ import annotations

import builtins
import fcntl
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import FAST, digest, make_checkpoint, one_line
from conftest import train_fast as train

import dhat.eval.evaluate as evaluate_mod
from dhat.checkpoint import read_checkpoint
from dhat.cli import main
from dhat.errors import UserError
from dhat.eval.card import SCHEMA, read_card, save_card
from dhat.methods import register_method
from dhat.methods.standard import Standard
from dhat.rundir import MANIFEST, RunLock, old_dir, staging_dir
from dhat.train.schedule import piecewise_lr

TESTS = Path(__file__).resolve().parent
# TINY on 64 training images (2 steps per epoch) and 16 validation images
EVAL = [
    "--attacks",
    "clean",
    "pgd1",
    "--n-test",
    "8",
    "--gap-train-images",
    "0",
    "--no-sanity",
    "--no-background",
    "--no-progress",
    "--device",
    "cpu",
]


# --- helpers ---------------------------------------------------------------------------
def log_records(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]


def finite(state) -> bool:
    return all(
        bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point()
    )


def assert_consistent(run: Path, epochs: int) -> None:
    """One log line per epoch 1..E, last.pt of epoch E, a readable best.pt, nothing left over."""
    assert [r["epoch"] for r in log_records(run)] == list(range(1, epochs + 1))
    last = read_checkpoint(run / "last.pt")
    assert last["epoch"] == epochs - 1 and finite(last)
    assert read_checkpoint(run / "best.pt")["epoch"] <= epochs - 1
    assert [p.name for p in run.glob(".*")] == [MANIFEST], "temporary files left in the run"
    assert not staging_dir(run).exists() and not old_dir(run).exists()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 2-epoch run (FAST, standard): copy it, never change it."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert train(out) == 0
    return out


@pytest.fixture
def eval_ckpt(tmp_path):
    return make_checkpoint(
        tmp_path / "ckpt" / "best.pt",
        num_classes=4,
        config={"dataset": "blobs", "dataset_args": {}},
    )


@pytest.fixture
def readonly(monkeypatch):
    """`readonly(folder)`: from now on nothing can be created, written, renamed or removed
    under `folder` by this process, and os.access reports it unwritable."""
    denied: list[Path] = []

    def under(p) -> bool:
        if isinstance(p, int):
            return False
        p = Path(os.path.abspath(os.fsdecode(p)))
        return any(p == d or d in p.parents for d in denied)

    def deny(p):
        raise PermissionError(13, "Permission denied (test: read-only folder)", str(p))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    real_access, real_rename, real_replace = os.access, os.rename, os.replace
    real_unlink, real_rmdir = os.unlink, os.rmdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def fake_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and under(file):
            deny(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if flags & writing and under(path):
            deny(path)
        return real_os_open(path, flags, *a, **k)

    def guard(real, n_paths=1):
        def fake(*a, **k):
            if any(under(p) for p in a[:n_paths]):
                deny(a[0])
            return real(*a, **k)

        return fake

    def fake_access(path, mode, *a, **k):
        if mode & os.W_OK and under(path):
            return False
        return real_access(path, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)  # pathlib's write_text, open
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", guard(real_mkdir))
    monkeypatch.setattr(os, "rename", guard(real_rename, 2))
    monkeypatch.setattr(os, "replace", guard(real_replace, 2))
    monkeypatch.setattr(os, "unlink", guard(real_unlink))
    monkeypatch.setattr(os, "rmdir", guard(real_rmdir))
    monkeypatch.setattr(os, "access", fake_access)
    return lambda folder: denied.append(Path(os.path.abspath(folder)))


def chmod_readonly(folder: Path) -> None:
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder.chmod(0o755)
        pytest.skip("chmod does not make a folder read-only here (running as root)")


def count_calls(monkeypatch, target: str) -> list:
    """Record the calls of `module.attr` (the real function still runs)."""
    module, attr = target.rsplit(".", 1)
    import importlib

    mod = importlib.import_module(module)
    real, calls = getattr(mod, attr), []

    def wrapper(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(mod, attr, wrapper)
    return calls


# --- subprocesses ----------------------------------------------------------------------
WORKER = """
import os, sys, time
from dataclasses import dataclass
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import register_blobs
register_blobs()
from dhat.methods import register_method
from dhat.methods.standard import Standard


@register_method("_gated")
@dataclass
class Gated(Standard):
    def objective(self, model, batch, inputs):
        if not getattr(self, "_through", False):
            gate = Path(os.environ["DHAT_TEST_GATE"])
            Path(f"{{gate}}.{{os.getpid()}}").write_text("in epoch %d" % (self.epoch + 1))
            end = time.monotonic() + 120
            while not gate.exists() and time.monotonic() < end:
                time.sleep(0.02)
            self._through = True
        return super().objective(model, batch, inputs)


from dhat.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Worker:
    """`python WORKER ARGS` with stdout/stderr in files; `gate` as in the module docstring."""

    def __init__(self, tmp_path: Path, args: list[str], gate: Path, name: str):
        script = tmp_path / "worker.py"
        if not script.exists():
            script.write_text(WORKER.format(tests=str(TESTS)))
        env = {
            **os.environ,
            "DHAT_TEST_GATE": str(gate),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
        }
        self.gate = gate
        self.stdout, self.stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.stdout, "w") as o, open(self.stderr, "w") as e:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), *args], stdout=o, stderr=e, env=env, cwd=tmp_path
            )
        self.pid = self.proc.pid

    @property
    def waiting(self) -> Path:
        return Path(f"{self.gate}.{self.pid}")

    def err(self) -> str:
        return self.stderr.read_text()

    def wait_until_waiting(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not self.waiting.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited {self.proc.returncode} before training: {self.err()}")
            if time.monotonic() > end:
                pytest.fail("worker never reached its first training step")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# --- one writer at a time --------------------------------------------------------------
@pytest.mark.slow
def test_two_concurrent_trainings_one_runs_the_other_names_the_holder(tmp_path):
    out = tmp_path / "run"
    gate = tmp_path / "gate"
    args = ["train", *FAST, "--method", "_gated", "--out-dir", str(out), "--no-eval"]
    workers = [Worker(tmp_path, args, gate, f"w{i}") for i in range(2)]
    try:
        end = time.monotonic() + 120
        while all(w.proc.poll() is None for w in workers):
            assert not all(w.waiting.exists() for w in workers), "both trainings are training"
            assert time.monotonic() < end, "neither training was refused"
            time.sleep(0.05)
        loser = next(w for w in workers if w.proc.poll() is not None)
        winner = next(w for w in workers if w is not loser)
        assert loser.proc.returncode == 2, loser.err()
        line = one_line(loser.err())
        assert f"PID {winner.pid}" in line and "in use" in line, line
        winner.wait_until_waiting()  # the winner was (and is) training meanwhile
        assert not loser.waiting.exists()  # the loser never trained a step
        gate.write_text("open")
        assert winner.proc.wait(timeout=120) == 0, winner.err()
    finally:
        for w in workers:
            w.kill()
    assert_consistent(out, 2)
    assert read_checkpoint(out / "last.pt")["config"]["method"] == "_gated"


HOLDER = """
import fcntl, os, socket, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.seek(0); f.truncate(); f.write(f"PID {os.getpid()} on {socket.gethostname()}\\n"); f.flush()
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_of_a_live_holder_refuses_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    lock = RunLock(out).path
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train(out, "--epochs", "1") == 2
        line = one_line(capsys.readouterr().err)
        assert f"PID {holder.pid}" in line, line
        assert not (out / "last.pt").exists()
    finally:
        holder.kill()  # kill -9: the lock file stays, naming a dead process
        holder.wait()
        holder.stdout.close()
    assert f"PID {holder.pid}" in lock.read_text()
    assert train(out, "--epochs", "1") == 0
    assert_consistent(out, 1)
    assert not lock.exists()  # the training removed it when it was done


@pytest.mark.parametrize("content", ["", "stale"])
def test_refusal_names_the_live_holder_while_it_is_writing_its_name(tmp_path, content):
    """The holder takes the lock, then writes its name: a refusal in between must neither
    say 'another process' nor name the dead previous holder."""
    out = tmp_path / "run"
    path = RunLock(out).path
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(f"PID {dead.pid} on {socket.gethostname()}\n" if content else "")
    f = open(path, "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write_name():
        f.seek(0)
        f.truncate()
        f.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        f.flush()

    timer = threading.Timer(0.3, write_name)
    timer.start()
    try:
        with pytest.raises(UserError) as e:
            RunLock(out).acquire()
        assert f"PID {os.getpid()} " in str(e.value) and f"PID {dead.pid} " not in str(e.value)
    finally:
        timer.join()
        f.close()


def test_a_symlinked_path_to_a_locked_run_is_refused_and_overwrite_keeps_the_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    lock = RunLock(real).acquire()
    try:
        with pytest.raises(UserError, match=f"PID {os.getpid()} "):
            RunLock(link).acquire()
    finally:
        lock.release()
    assert train(link, "--epochs", "1") == 0
    first = digest(real)
    assert train(link, "--epochs", "1", "--overwrite", "--seed", "1") == 0
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert digest(real) != first and read_checkpoint(real / "last.pt")["config"]["seed"] == 1
    assert_consistent(real, 1)


def test_a_run_finished_while_waiting_for_the_lock_is_not_clobbered(
    tmp_path, base_run, monkeypatch
):
    out = tmp_path / "run"
    real_acquire = RunLock.acquire

    def other_training_finished_first(self):
        if not out.exists():
            shutil.copytree(base_run, out)
        return real_acquire(self)

    monkeypatch.setattr(RunLock, "acquire", other_training_finished_first)
    rc = train(out, "--epochs", "1")
    assert digest(out) == digest(base_run)
    assert rc == 2


# --- overwrite -------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_during_overwrite_keeps_the_old_run_and_a_later_start_recovers(tmp_path, base_run):
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    before = digest(out)
    assert {"last.pt", "best.pt", "log.jsonl", "config.yaml"} <= set(before)
    w = Worker(
        tmp_path,
        ["train", *FAST, "--method", "_gated", "--overwrite", "--out-dir", str(out), "--no-eval"],
        tmp_path / "gate",
        "overwrite",
    )
    try:
        w.wait_until_waiting()
        assert w.waiting.read_text() == "in epoch 1"
        assert (staging_dir(out) / "config.yaml").is_file()  # it was really overwriting
    finally:
        w.kill()
    assert w.proc.returncode == -signal.SIGKILL
    assert digest(out) == before
    assert read_checkpoint(out / "last.pt")["epoch"] == 1
    assert read_checkpoint(out / "best.pt")["config"]["method"] == "standard"
    assert train(out, "--resume", "--epochs", "3") == 0  # a later start
    assert not staging_dir(out).exists()
    assert_consistent(out, 3)


@pytest.mark.parametrize(
    "flags, rc",
    [(["--resume", "--epochs", "3"], 0), ([], 2), (["--overwrite", "--epochs", "1"], 0)],
)
def test_a_swap_interrupted_between_its_renames_puts_the_old_run_back(
    tmp_path, base_run, capsys, flags, rc
):
    out = tmp_path / "run"
    shutil.copytree(base_run, old_dir(out))  # killed after `out -> .out.old`
    shutil.copytree(base_run, staging_dir(out))  # ... before `.out.staging -> out`
    before = digest(old_dir(out))
    assert train(out, *flags) == rc
    err = capsys.readouterr().err
    if flags[:1] == ["--resume"]:
        assert_consistent(out, 3)
        assert log_records(out)[:2] == log_records(base_run)
    elif rc == 2:
        assert "already holds a run" in one_line(err)
        assert digest(out if out.exists() else old_dir(out)) == before
    else:
        assert_consistent(out, 1)


# --- no non-finite checkpoint ----------------------------------------------------------
class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient: the SGD step makes the weights non-finite while
    the loss it reports is finite."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("inf"))


@dataclass
class _Blowup(Standard):
    armed = True  # class-wide switch: a "corrected" rerun turns it off
    blow_epoch = 0  # 0-based

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        self.step = 0

    def objective(self, model, batch, inputs):
        loss, metrics = super().objective(model, batch, inputs)
        self.step += 1
        if self.epoch == 0:
            self.steps_per_epoch = self.step
        if type(self).armed and self.epoch == self.blow_epoch and self.at_blow_step():
            loss = _InfGrad.apply(loss)
        return loss, metrics


@register_method("_blowup_epoch1")
@dataclass
class BlowupEpoch1(_Blowup):
    """Weights non-finite after the first step of epoch 1 (the later steps' loss shows it)."""

    blow_epoch = 0

    def at_blow_step(self):
        return self.step == 1


@register_method("_blowup_epoch2")
@dataclass
class BlowupEpoch2(_Blowup):
    """Weights non-finite after the LAST step of epoch 2: every loss it reports is finite,
    so only the check of the checkpoint itself can see it."""

    blow_epoch = 1

    def at_blow_step(self):
        return self.step == getattr(self, "steps_per_epoch", -1)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """(a run whose weights went non-finite at the end of epoch 2, its exit status, stderr)."""
    import contextlib

    out = tmp_path_factory.mktemp("diverged") / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train(out, method="_blowup_epoch2")
    return out, rc, err.getvalue()


def test_weights_blown_up_in_epoch_2_are_never_saved_and_the_message_names_a_real_file(diverged):
    out, rc, err = diverged
    assert rc == 2
    err = one_line(err)
    assert "diverged after epoch 2" in err and "not finite" in err, err
    named = [Path(p) for p in re.findall(r"(\S+\.pt)\b", err)]
    assert named and all(p.is_file() for p in named), err
    for p in named:
        state = read_checkpoint(p)
        assert state["epoch"] == 0 and finite(state)
    for p in out.glob("*.pt"):
        assert read_checkpoint(p)["epoch"] == 0 and finite(read_checkpoint(p))
    assert [r["epoch"] for r in log_records(out)] == [1]
    assert [p.name for p in out.glob(".*")] == [MANIFEST]


def test_weights_blown_up_in_epoch_1_save_nothing_and_a_corrected_rerun_is_accepted(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert train(out, method="_blowup_epoch1") == 2
    err = one_line(capsys.readouterr().err)
    assert "in epoch 1" in err and "no good checkpoint exists" in err, err
    assert ".pt" not in err
    assert not [p for p in out.rglob("*") if ".pt" in p.name]
    assert not (out / "log.jsonl").exists() or log_records(out) == []
    monkeypatch.setattr(_Blowup, "armed", False)
    assert train(out, "--epochs", "1", method="_blowup_epoch1") == 0  # no --overwrite needed
    assert_consistent(out, 1)


def test_an_overwrite_that_diverges_before_its_first_checkpoint_keeps_the_old_run(
    tmp_path, base_run, capsys
):
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    before = digest(out)
    assert train(out, "--overwrite", method="_blowup_epoch1") == 2
    err = one_line(capsys.readouterr().err)
    assert "still holds the old run" in err and "--overwrite" in err, err
    assert digest(out) == before


def test_resume_after_divergence_needs_allow_change_and_continues_from_the_last_good(
    diverged, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert diverged[1] == 2
    shutil.copytree(diverged[0], out)
    good = digest(out)
    first = log_records(out)
    monkeypatch.setattr(_Blowup, "armed", False)
    assert train(out, "--resume", "--lr", "0.005", method="_blowup_epoch2") == 2
    err = one_line(capsys.readouterr().err)
    assert "--allow-change lr" in err and "0.05 -> 0.005" in err, err
    assert digest(out) == good
    assert (
        train(out, "--resume", "--allow-change", "lr", "--lr", "0.005", method="_blowup_epoch2")
        == 0
    )
    assert_consistent(out, 2)
    records = log_records(out)
    assert records[0] == first[0]  # epoch 1 was not retrained
    cfg = read_checkpoint(out / "last.pt")["config"]
    assert cfg["lr"] == 0.005
    assert records[1]["lr"] == pytest.approx(
        piecewise_lr(0.005, 1, cfg["milestones"], cfg["lr_gamma"])
    )
    events = [json.loads(ln) for ln in (out / "events.jsonl").read_text().splitlines()]
    assert len(events) == 1 and events[0]["event"] == "resume"
    assert events[0]["from_epoch"] == 1
    assert events[0]["changed"] == {"lr": {"from": 0.05, "to": 0.005}}


# --- evaluation output -----------------------------------------------------------------
def test_eval_into_a_read_only_folder_fails_before_attacking(
    eval_ckpt, tmp_path, capsys, monkeypatch, readonly
):
    cwd = tmp_path / "cwd"  # where a fallback card would go (never the repository)
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    attacks = count_calls(monkeypatch, "dhat.eval.evaluate.evaluate_model")
    loads = count_calls(monkeypatch, "dhat.eval.evaluate.load_dataset")
    readonly(eval_ckpt.parent)  # the card goes beside the checkpoint
    t = time.perf_counter()
    assert main(["eval", str(eval_ckpt), *EVAL]) == 2
    line = one_line(capsys.readouterr().err)
    assert "not writable" in line and "--out" in line, line
    assert attacks == [] and loads == []
    assert time.perf_counter() - t < 30
    assert sorted(p.name for p in eval_ckpt.parent.iterdir()) == ["best.pt"]
    assert not list(cwd.iterdir())  # and no fallback card


def test_eval_into_a_chmod_read_only_folder_fails_before_attacking(
    eval_ckpt, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # where a fallback card would go (never the repository)
    attacks = count_calls(monkeypatch, "dhat.eval.evaluate.evaluate_model")
    ro = tmp_path / "ro"
    ro.mkdir()
    chmod_readonly(ro)
    try:
        assert main(["eval", str(eval_ckpt), *EVAL, "--out", str(ro / "card.json")]) == 2
    finally:
        ro.chmod(0o755)
    assert "not writable" in one_line(capsys.readouterr().err)
    assert attacks == [] and not list(ro.iterdir())


def test_eval_write_failure_after_attacking_prints_numbers_and_names_the_fallback(
    eval_ckpt, tmp_path, capsys, monkeypatch, readonly
):
    cards = tmp_path / "cards"
    cards.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    real = evaluate_mod.evaluate_model

    def attack_then_lose_the_folder(*a, **k):
        result = real(*a, **k)
        readonly(cards)  # e.g. the disk went read-only during the attack
        return result

    monkeypatch.setattr(evaluate_mod, "evaluate_model", attack_then_lose_the_folder)
    assert main(["eval", str(eval_ckpt), *EVAL, "--out", str(cards / "card.json")]) == 0
    out, err = capsys.readouterr()
    m = re.search(r"the result card is at (\S+)", err)
    assert m and "could not write" in err, err
    alt = Path(m[1])
    assert alt.is_file() and not (cards / "card.json").exists()
    assert f"result written to {alt}" in out
    card = read_card(alt)
    table = out.split("result written to")[0]
    for name, value in card["accuracy"].items():
        assert re.search(rf"{name}\s+{100 * value:.2f}", table), (name, table)
    assert set(card["accuracy"]) == {"clean", "pgd1"}


def _card(acc: float) -> dict:
    return {
        "schema": SCHEMA,
        "accuracy": {"clean": acc},
        "attack_settings": {"clean": "clean"},
        "eval_config": {"attacks": ["clean"]},
        "n_test": 10,
        "sanity": [],
        "sanity_failed": [],
        "unreliable": False,
    }


def test_fallback_cards_never_overwrite_each_other_and_no_fallback_is_one_line(
    tmp_path, monkeypatch, readonly
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    targets = [tmp_path / exp / "run" / "eval_best.json" for exp in ("a", "b")]
    written = []
    for i, target in enumerate(targets):
        target.parent.mkdir(parents=True)
        readonly(target.parent)
        with pytest.warns(UserWarning, match="the result card is at"):
            written.append(save_card(_card(i / 10), target))
    assert len(set(written)) == 2
    assert [read_card(p)["accuracy"]["clean"] for p in written] == [0.0, 0.1]
    readonly(cwd)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    readonly(tmp)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with pytest.raises(UserError) as e:
        save_card(_card(0.2), targets[0])
    assert len(str(e.value).splitlines()) == 1 and str(targets[0]) in str(e.value)


# --- unusable out-dir ------------------------------------------------------------------
@pytest.mark.parametrize("case", ["file", "under_a_file", "readonly", "chmod"])
def test_unusable_out_dir_is_one_line_before_any_data_is_loaded(
    tmp_path, capsys, monkeypatch, readonly, case
):
    loads = []
    monkeypatch.setattr(
        "dhat.train.assembly.load_dataset",
        lambda *a, **k: loads.append(a) or pytest.fail("data was loaded"),
    )
    if case == "file":
        out = tmp_path / "run"
        out.write_text("not a folder")
    elif case == "under_a_file":
        (tmp_path / "f").write_text("not a folder")
        out = tmp_path / "f" / "run"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        if case == "chmod":
            chmod_readonly(ro)
        else:
            readonly(ro)
        out = ro / "run"
    try:
        assert train(out) == 2
    finally:
        if case == "chmod":
            ro.chmod(0o755)
    line = one_line(capsys.readouterr().err)
    assert "--out-dir" in line, line
    assert loads == []
    assert not RunLock(out).path.exists() and not out.is_dir()


# --- resume from anywhere --------------------------------------------------------------
def test_resume_by_relative_and_absolute_path_and_after_a_move(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train(Path("a"), "--epochs", "1") == 0  # relative
    first = log_records(tmp_path / "a")
    assert train(tmp_path / "a", "--resume", "--epochs", "2") == 0  # absolute
    shutil.move(tmp_path / "a", tmp_path / "moved")
    assert train(Path("moved"), "--resume", "--epochs", "3") == 0  # moved, relative
    assert_consistent(tmp_path / "moved", 3)
    assert log_records(tmp_path / "moved")[0] == first[0]  # really continued, never restarted


def test_torn_last_log_line_is_dropped_with_a_warning_on_resume(tmp_path, base_run, capsys):
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    good = log_records(out)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"epoch": 3, "loss": 0.6')  # killed while writing epoch 3's line
    assert train(out, "--resume", "--epochs", "3") == 0  # the CLI prints warnings as one line
    assert "torn last line" in one_line(capsys.readouterr().err)
    assert_consistent(out, 3)
    assert log_records(out)[:2] == good
    # a damaged line that is not the last one is an error, not silently dropped
    lines = (out / "log.jsonl").read_text().splitlines()
    (out / "log.jsonl").write_text("\n".join([lines[0], '{"epoch": 2, "lo', *lines[2:]]) + "\n")
    capsys.readouterr()
    assert train(out, "--resume", "--epochs", "4") == 2
    assert "line 2 is not JSON" in one_line(capsys.readouterr().err)


def test_resume_of_a_missing_directory_is_one_line(tmp_path, capsys):
    out = tmp_path / "missing" / "run"
    assert train(out, "--resume") == 2
    line = one_line(capsys.readouterr().err)
    assert "does not exist" in line and str(out) in line
    assert not (tmp_path / "missing").exists()


# --- Ctrl-C ----------------------------------------------------------------------------
def test_ctrl_c_in_eval_does_not_mention_resume(eval_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_mod, "evaluate_model", interrupted)
    assert main(["eval", str(eval_ckpt), *EVAL]) == 130
    line = one_line(capsys.readouterr().err)
    assert "interrupted" in line and "resume" not in line, line


@register_method("_interrupt_first_epoch")
@dataclass
class InterruptFirstEpoch(Standard):
    def objective(self, model, batch, inputs):
        raise KeyboardInterrupt


@pytest.mark.parametrize("overwrite", [False, True])
def test_ctrl_c_before_the_first_checkpoint_does_not_suggest_resume(
    tmp_path, base_run, capsys, overwrite
):
    out = tmp_path / "run"
    if overwrite:
        shutil.copytree(base_run, out)
    flags = ["--overwrite"] if overwrite else []
    assert train(out, *flags, method="_interrupt_first_epoch") == 130
    line = one_line(capsys.readouterr().err)
    assert "interrupted" in line and "--resume" not in line, line


# --- file modes ------------------------------------------------------------------------
def test_files_follow_the_umask(tmp_path, capsys):
    out, exp = tmp_path / "run", tmp_path / "exp"
    old = os.umask(0o027)
    try:
        assert train(out, "--epochs", "1") == 0
        assert train(out, "--epochs", "1", "--overwrite") == 0  # a staged swap
        assert train(out, "--resume", "--epochs", "2", "--allow-change", "lr", "--lr", "0.01") == 0
        assert main(["eval", str(out / "best.pt"), *EVAL]) == 0
        assert main(["export", str(out / "best.pt"), "--out", str(exp / "m.safetensors")]) == 0
    finally:
        os.umask(old)
    files = [
        out / n
        for n in (
            "last.pt",
            "best.pt",
            "config.yaml",
            "log.jsonl",
            "events.jsonl",
            "eval_best_clean-pgd1.json",
            "eval_best_clean-pgd1.records.npz",
        )
    ]
    files += [exp / "m.safetensors", exp / "m.json"]
    assert [f for f in files if not f.exists()] == []
    modes = {str(f.relative_to(tmp_path)): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert modes == {k: "0o640" for k in modes}
    dirs = {str(d.relative_to(tmp_path)): oct(stat.S_IMODE(d.stat().st_mode)) for d in (out, exp)}
    assert dirs == {k: "0o750" for k in dirs}

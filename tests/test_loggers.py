"""Experiment trackers (`--loggers`): every number of log.jsonl per epoch, the training
metrics every `--log-every` steps; TensorBoard read back with its own event-file reader."""

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from dhat.cli import main
from dhat.config import TrainConfig
from dhat.errors import UserError
from dhat.train.loggers import Loggers, check_loggers, scalars

RUN = ["train", "--dataset", "blobs", "--model", "small_cnn", "--model-arg", "width=4"]
RUN += ["--method", "pgd_at", "--epochs", "2", "--batch-size", "32", "--val-size", "40"]
RUN += ["--steps", "1", "--val-steps", "1", "--milestones", "--device", "cpu", "--no-progress"]
RUN += ["--no-eval", "--threads", "1"]
STEPS_PER_EPOCH = 5  # blobs: 200 - 40 = 160 training images in batches of 32


def records(run: Path):
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    pytest.importorskip("tensorboard")
    run = tmp_path_factory.mktemp("tb") / "run"
    argv = [*RUN, "--out-dir", str(run), "--loggers", "jsonl", "tensorboard", "--log-every", "2"]
    assert main(argv) == 0
    return run


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_every_number_of_log_jsonl(tensorboard_run):
    events = read_events(tensorboard_run / "tensorboard")
    recs = records(tensorboard_run)
    assert [r["epoch"] for r in recs] == [1, 2]
    for r in recs:
        step = r["epoch"] * STEPS_PER_EPOCH
        numbers = {k: v for k, v in r.items() if isinstance(v, (int, float))}
        assert {"loss", "val_robust_acc", "lr", "best", "images"} <= set(numbers)
        for k, v in numbers.items():
            got = dict(events[f"epoch/{k}"])[step]
            assert got == pytest.approx(float(v), rel=1e-6, abs=1e-7), k  # float32 in TB
    manifest = (tensorboard_run / ".dhat-manifest").read_text().split()
    assert "tensorboard" in manifest  # the run's own: --overwrite may replace it


def test_tensorboard_per_step_means_add_up_to_the_epoch_means(tensorboard_run):
    """--log-every 2 over 5 steps of 32 images: points at steps 2, 4 and 5 of each epoch,
    means over 64, 64 and 32 images, whose weighted mean is log.jsonl's epoch mean."""
    events = read_events(tensorboard_run / "tensorboard")
    assert [s for s, _ in events["train/loss"]] == [2, 4, 5, 7, 9, 10]
    for r, first in zip(records(tensorboard_run), (0, 3)):
        for key in ("loss", "adv_acc", "clean_acc"):
            means = [v for _, v in events[f"train/{key}"][first : first + 3]]
            weighted = (64 * means[0] + 64 * means[1] + 32 * means[2]) / 160
            assert weighted == pytest.approx(r[key], rel=1e-5, abs=1e-6), key


def test_unknown_or_missing_logger_is_one_line(tmp_path):
    with pytest.raises(UserError, match="tensorbord.*tensorboard"):
        TrainConfig(dataset="blobs", model="small_cnn", loggers=["tensorbord"])
    for name in ("wandb", "mlflow", "tensorboard"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(UserError, match=rf"pip install 'dhat\[{name}\]'"):
                check_loggers([name])
    assert main([*RUN, "--out-dir", str(tmp_path / "r"), "--loggers", "nosuch"]) == 2
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_scalars_keep_finite_numbers_only():
    rec = {"epoch": 3, "loss": 0.5, "best": True, "name": "x", "bad": float("nan"), "n": None}
    assert scalars(rec, "epoch") == {"epoch/epoch": 3.0, "epoch/loss": 0.5, "epoch/best": 1.0}


def test_trackers_are_imported_only_when_asked(tmp_path, monkeypatch):
    for name in ("wandb", "mlflow", "tensorboard", "torch.utils.tensorboard"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # put back after the test
    Loggers(["jsonl"], tmp_path, "run", {}).close()
    assert not {"wandb", "mlflow", "tensorboard"} & set(sys.modules)


@pytest.mark.slow
def test_mlflow_file_store_gets_the_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")  # MLflow 3 keeps new runs in a database, not files
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tmp_path / "run"
    assert main([*RUN, "--out-dir", str(run), "--loggers", "mlflow", "--log-every", "2"]) == 0
    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name("dhat")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_name == "run"
    hist = client.get_metric_history(found.info.run_id, "epoch/val_robust_acc")
    assert [(m.step, m.value) for m in hist] == [
        (r["epoch"] * STEPS_PER_EPOCH, pytest.approx(r["val_robust_acc"])) for r in records(run)
    ]
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [
        2,
        4,
        5,
        7,
        9,
        10,
    ]


@pytest.mark.slow
def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main([*RUN, "--out-dir", str(run), "--loggers", "wandb", "--log-every", "2"]) == 0
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    (history,) = offline.glob("run-*.wandb")
    assert history.stat().st_size > 0


def test_wandb_and_mlflow_adapters_send_what_they_are_given(tmp_path, monkeypatch):
    """The adapters' calls, against recording stand-ins of the two packages' documented
    entry points (wandb.init(...).log(values, step=), mlflow.log_metrics(values, step=)),
    so the plumbing is checked where the packages are not installed."""
    calls: list[tuple] = []
    run = types.SimpleNamespace(
        log=lambda values, step: calls.append(("wandb.log", values, step)),
        finish=lambda: calls.append(("wandb.finish",)),
    )
    wandb = types.SimpleNamespace(init=lambda **kw: calls.append(("wandb.init", kw)) or run)
    mlflow = types.SimpleNamespace(
        set_experiment=lambda name: calls.append(("mlflow.exp", name)),
        start_run=lambda run_name: calls.append(("mlflow.start", run_name)),
        log_params=lambda p: calls.append(("mlflow.params", p)),
        log_metrics=lambda v, step: calls.append(("mlflow.log", v, step)),
        end_run=lambda: calls.append(("mlflow.end",)),
    )
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.setattr("dhat.train.loggers.check_loggers", lambda names, flag="": list(names))
    lg = Loggers(["wandb", "mlflow"], tmp_path, "myrun", {"lr": 0.1})
    lg.epoch({"epoch": 1, "loss": 0.25, "best": False}, 5)
    lg.step({"loss": 0.5}, 2)
    lg.close()
    values = {"epoch/epoch": 1.0, "epoch/loss": 0.25, "epoch/best": 0.0}
    assert calls == [
        ("wandb.init", {"project": "dhat", "name": "myrun", "config": {"lr": 0.1}}),
        ("mlflow.exp", "dhat"),
        ("mlflow.start", "myrun"),
        ("mlflow.params", {"lr": "0.1"}),
        ("wandb.log", values, 5),
        ("mlflow.log", values, 5),
        ("wandb.log", {"train/loss": 0.5}, 2),
        ("mlflow.log", {"train/loss": 0.5}, 2),
        ("wandb.finish",),
        ("mlflow.end",),
    ]


def test_overwrite_replaces_the_runs_tensorboard_folder(tensorboard_run, tmp_path):
    """The folder is the run's own (in its manifest): --overwrite replaces it with the new
    run's, whose events are written while it is staged and kept through the swap."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tensorboard_run, run)
    argv = [*RUN, "--out-dir", str(run), "--overwrite", "--loggers", "tensorboard"]
    assert main([*argv, "--epochs", "1", "--log-every", "0"]) == 0
    events = read_events(run / "tensorboard")
    assert [s for s, _ in events["epoch/loss"]] == [STEPS_PER_EPOCH]  # the new run's only
    assert "train/loss" not in events  # --log-every 0: no per-step points
    (rec,) = records(run)
    assert dict(events["epoch/loss"])[STEPS_PER_EPOCH] == pytest.approx(rec["loss"], rel=1e-6)

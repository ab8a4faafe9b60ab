import json
import math
import shutil
from dataclasses import dataclass

import pytest
import torch
from conftest import TINY

from dhat.checkpoint import read_checkpoint
from dhat.cli import main
from dhat.errors import UserError
from dhat.methods import register_method
from dhat.methods.standard import Standard
from dhat.rundir import MANIFEST
from dhat.train.schedule import piecewise_lr


def run(tmp_path, *extra, name="run"):
    return main(["train", *TINY, "--out-dir", str(tmp_path / name), "--no-eval", *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """`full_run(method)`: the uninterrupted TINY run (2 epochs) of `method`, trained once
    for the module (the resume test's reference and the run the other tests inspect);
    copy it before writing into it."""
    runs = {}

    def get(method):
        if method not in runs:
            root = tmp_path_factory.mktemp(f"full_{method}")
            assert run(root, "--method", method) == 0
            runs[method] = root / "run"
        return runs[method]

    return get


def test_piecewise_schedule_does_not_compound():
    lrs = [piecewise_lr(0.1, e, [100, 105]) for e in range(110)]
    assert lrs[99] == 0.1 and lrs[100] == pytest.approx(0.01) and lrs[104] == pytest.approx(0.01)
    assert lrs[105] == pytest.approx(0.001) and lrs[109] == pytest.approx(0.001)


@pytest.mark.parametrize("method", ["dhat", "pgd_at"])
def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path, full_run, method):
    assert run(tmp_path, "--method", method, "--epochs", "1", name="cut") == 0
    assert run(tmp_path, "--method", method, "--resume", name="cut") == 0
    a = read_checkpoint(full_run(method) / "last.pt")
    b = read_checkpoint(tmp_path / "cut" / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    lines = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2]


def test_run_writes_config_log_and_checkpoints(full_run):
    out = full_run("dhat")
    assert {"config.yaml", "log.jsonl", "last.pt", "best.pt"} <= {p.name for p in out.iterdir()}
    rec = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    for key in (
        "loss",
        "ce",
        "dhlr",
        "floe",
        "adv_acc",
        "clean_acc",
        "lr",
        "seconds",
        "images_per_s",
        "val_robust_acc",
        "val_clean_acc",
    ):
        assert key in rec, key
    assert not list(out.glob("*.tmp")) and [p.name for p in out.glob(".*")] == [MANIFEST]
    state = read_checkpoint(out / "last.pt")
    assert state["config"]["method"] == "dhat" and "optimizer" in state and "rng" in state


def test_existing_run_is_refused(tmp_path, capsys):
    assert run(tmp_path, "--epochs", "1") == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    capsys.readouterr()
    assert run(tmp_path, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "run" / "last.pt").read_bytes() == before  # the refused run wrote nothing
    assert run(tmp_path, "--epochs", "1", "--overwrite", "--seed", "1") == 0
    assert read_checkpoint(tmp_path / "run" / "last.pt")["config"]["seed"] == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "preact_resnet_18"], "preact_resnet18"),
        (["--method", "dhta"], "dhat"),
        (["--eps", "9"], "(0, 1]"),
        (["--eps", "0"], "(0, 1]"),
        (["--dataset", "cifar10", "--data-root", "/nonexistent/dir"], "cifar-10-batches-py"),
        (["--method", "pgd_at", "--dhlr", "paper"], "no option --dhlr"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, needle):
    assert run(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


@register_method("_nan_after_first_epoch")
@dataclass
class NanLater(Standard):
    def objective(self, model, batch, inputs):
        loss, metrics = super().objective(model, batch, inputs)
        if getattr(self, "epoch", 0) >= 1:
            bad = loss * float("nan")
            return bad, {**metrics, "blowup": bad.item()}
        return loss, metrics


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    assert run(tmp_path, "--method", "_nan_after_first_epoch") == 2
    err = capsys.readouterr().err
    assert "blowup" in err and "epoch 2" in err
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_eval_rejects_corrupt_and_foreign_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", str(bad)]) == 2
    assert "not a readable dhat checkpoint" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert main(["eval", str(foreign)]) == 2
    assert "not a dhat checkpoint" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2


def test_train_then_eval_writes_result_json(tmp_path, full_run, capsys):
    shutil.copytree(full_run("pgd_at"), tmp_path / "run")
    ckpt = tmp_path / "run" / "best.pt"
    assert (
        main(
            [
                "eval",
                str(ckpt),
                "--attacks",
                "clean",
                "pgd10",
                "cw",
                "--gap-train-images",
                "50",
                "--eps",
                "8/255",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "pgd10" in out and "robust gap" in out
    card = json.loads((tmp_path / "run" / "eval_best_clean-pgd10-cw_eps8.json").read_text())
    assert card["n_test"] == 64 and card["robust_gap"]["n_train"] == 50
    acc = card["accuracy"]
    assert 0 <= acc["pgd10"] <= acc["clean"] <= 1 and math.isclose(card["eps"], 8 / 255)
    g = card["robust_gap"]
    assert g["gap"] == pytest.approx(g["train"] - g["test"]) and g["test"] == acc["pgd10"]


def _public_methods():
    from dhat.methods import list_methods

    return [m for m in list_methods() if not m.startswith("_")]


@pytest.mark.parametrize("method", _public_methods())
def test_cli_trains_every_method(tmp_path, method):
    # 64 training images (2 steps), 16 validation images
    extra = ["--epochs", "1", "--train-subset", "80", "--val-size", "16"]
    assert run(tmp_path, "--method", method, *extra) == 0
    (rec,) = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert math.isfinite(rec["loss"]) and rec["images"] == 64 and rec["epoch"] == 1
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state["config"]["method"] == method and state["epoch"] == 0


def test_every_preset_is_a_valid_config():
    from dhat.config import PRESETS, build_train_config
    from dhat.data import list_datasets
    from dhat.methods import list_methods
    from dhat.models import list_models

    for name in PRESETS:
        if name == "cifar10-dhat-official":  # needs its frozen CAM network on disk first
            with pytest.raises(UserError, match="dhat train --preset cifar10-standard"):
                build_train_config(preset=name)
            continue
        cfg = build_train_config(preset=name)
        assert cfg.model in list_models() and cfg.method in list_methods(), name
        assert cfg.dataset in list_datasets(), name


def test_a_bare_resume_starts_from_the_runs_saved_config(tmp_path, full_run):
    """`dhat train --out-dir DIR --resume` (the README's line): no --config, no method or
    dataset flags; the run's own config.yaml is the start, flags on top are the changes."""
    assert run(tmp_path, "--method", "pgd_at", "--epochs", "1", name="cut") == 0
    argv = ["train", "--out-dir", str(tmp_path / "cut"), "--resume", "--epochs", "2"]
    assert main([*argv, "--no-eval"]) == 0
    a = read_checkpoint(full_run("pgd_at") / "last.pt")
    b = read_checkpoint(tmp_path / "cut" / "last.pt")
    assert b["config"]["method"] == "pgd_at" and b["config"]["dataset"] == a["config"]["dataset"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k

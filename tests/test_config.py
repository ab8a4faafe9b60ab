"""One typed configuration: flags, YAML and Python give the same object; every bad value is
one line and exit 2 before any data is read; ε has one source."""

import json
from dataclasses import FrozenInstanceError, asdict, replace

import pytest
import torch
import yaml
from conftest import TINY, make_checkpoint

from dhat.cli import main
from dhat.config import TrainConfig, build_train_config
from dhat.errors import UserError
from dhat.schema import parse_budget, parse_number


def test_flags_yaml_and_python_resolve_to_identical_configs(tmp_path):
    flags = [
        "--dataset",
        "blobs",
        "--method",
        "dhat",
        "--omega",
        "1/10",
        "--eps-inv",
        "4/255",
        "--eps",
        "8/255",
        "--lr",
        "1e-2",
        "--milestones",
        "3",
        "5",
        "--model",
        "small_cnn",
        "--model-arg",
        "width=4",
        "--no-augment",
        "--out-dir",
        str(tmp_path / "r"),
    ]
    from dhat.cli import build_parser
    from dhat.cli.train import train_config_from_args

    ns = build_parser(["train", *flags]).parse_args(["train", *flags])
    from_flags = train_config_from_args(ns)
    doc = {
        "dataset": "blobs",
        "method": "dhat",
        "method_args": {"omega": "1/10", "eps_inv": "4/255"},
        "eps": "8/255",
        "lr": "1e-2",
        "milestones": [3, 5],
        "model": "small_cnn",
        "model_args": {"width": 4},
        "augment": False,
        "out_dir": str(tmp_path / "r"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    from_yaml = build_train_config(str(tmp_path / "c.yaml"))
    from_python = TrainConfig(
        dataset="blobs",
        method="dhat",
        method_args={"omega": "1/10", "eps_inv": 4 / 255},
        eps=8 / 255,
        lr=0.01,
        milestones=[3, 5],
        model="small_cnn",
        model_args={"width": "4"},
        augment=False,
        out_dir=str(tmp_path / "r"),
    )
    assert asdict(from_flags) == asdict(from_yaml) == asdict(from_python)
    assert from_flags == from_yaml == from_python  # the frozen objects themselves
    assert from_yaml.method_args == {"omega": 0.1, "eps_inv": 4 / 255}
    assert isinstance(from_yaml.model_args["width"], int)
    for cfg in (from_flags, from_yaml, from_python):
        with pytest.raises(FrozenInstanceError):
            cfg.epochs = 3  # type: ignore[misc]  # the point: a resolved config is immutable
    assert replace(from_python, seed=3).seed == 3  # a changed copy is checked again
    with pytest.raises(UserError, match="seed"):
        replace(from_python, seed=-1)


def test_the_config_file_is_read_once_and_a_method_option_coerced_once(tmp_path, monkeypatch):
    """`dhat train --config c.yaml --omega 1/10`: the YAML file is read once (the parser
    chooses the method's flags from it, the config reuses it), and ω is coerced once, from
    the flag to the method the run trains."""
    import dhat.cli.train as cli_train
    import dhat.config.train as config_train
    import dhat.methods.registry as registry
    from dhat.cli import build_parser
    from dhat.cli.train import train_config_from_args
    from dhat.methods import build_method

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"dataset": "blobs", "method": "dhat"}))
    reads, coerced = [], []
    read_yaml, coerce = config_train.read_yaml, registry.coerce
    for module in (config_train, cli_train):  # every module that may read it
        monkeypatch.setattr(module, "read_yaml", lambda p: reads.append(p) or read_yaml(p))

    def counting(spec, value, where):
        coerced.append(spec.name)
        return coerce(spec, value, where)

    monkeypatch.setattr(registry, "coerce", counting)
    argv = ["train", "--config", str(tmp_path / "c.yaml"), "--omega", "1/10"]
    cfg = train_config_from_args(build_parser(argv).parse_args(argv))
    method = build_method(cfg.method, cfg.method_kwargs())
    assert reads == [str(tmp_path / "c.yaml")]
    assert coerced.count("omega") == 1 and method.omega == 0.1
    assert method.eps == cfg.eps == cfg.threat.eps  # the run's threat model, not an option


def test_one_number_parser():
    assert parse_number("8/255") == parse_number(8 / 255) == 8 / 255
    assert parse_number("1e-3") == 0.001 and parse_number(" 0.5 ") == 0.5
    assert parse_budget("4/255") == 4 / 255
    for bad in ("8/255x", "abc", "", True, "1/0"):
        with pytest.raises(UserError):
            parse_number(bad)
    with pytest.raises(UserError, match="8/255"):
        parse_budget("8")  # the same meaning everywhere: not silently 8/255


def train(tmp_path, *args):
    return main(["train", *TINY, "--out-dir", str(tmp_path / "run"), "--no-eval", *args])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--eps-inv", "8"], "--eps-inv must lie in (0, 1]"),
        (["--omega", "5"], "--omega must lie in [0, 1]"),
        (["--lambda1", "-1"], "--lambda1 must be >= 0"),
        (["--steps", "0"], "--steps must lie in [1, 10000], got 0"),
        (["--eps", "8/255x"], "--eps: not a number"),
        (["--lr", "-0.1"], "--lr must be > 0"),
        (["--model-arg", "widht=8"], "Did you mean 'width'"),
        (["--dataset-arg", "rh0=0.5"], "takes no arguments, got --dataset-arg rh0"),
        (["--train-subset", "30"], "--train-subset 30 leaves nothing"),
        (["--val-size", "0"], "--val-size must be >= 1"),
        (["--epochs", "1.5"], "--epochs: expected an integer"),
        (["--method", "pgd_at", "--beta", "6"], "it is an option of"),
        (["--omgea", "0.2"], "Did you mean '--omega'"),
        (
            ["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"],
            "--device",
        ),
    ],
)
def test_bad_flags_are_one_line_exit_2_before_any_data(tmp_path, capsys, no_data, args, needle):
    assert train(tmp_path, "--method", "dhat", *args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"method_args": {"omega": "abc"}}, "omega (in "),
        ({"method_args": {"omgea": 0.1}}, "Did you mean 'omega"),
        ({"method_args": {"eps": 0.1}}, "threat model"),
        ({"augment": "no"}, "expected true or false"),
        ({"epochs": "ten"}, "expected an integer"),
        ({"milestones": 5}, "expected a list"),
        ({"seed": "abc"}, "expected an integer"),
        ({"eps_inv": 0.1}, "unknown TrainConfig field"),
    ],
)
def test_bad_yaml_is_one_line_exit_2_before_any_data(tmp_path, capsys, no_data, doc, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"method": "dhat", "dataset": "blobs", **doc}))
    assert (
        main(["train", "--config", str(cfg), "--out-dir", str(tmp_path / "run"), "--no-eval"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and str(cfg) in err + str(cfg), err
    assert not (tmp_path / "run").exists()


def test_yaml_booleans_and_flag_booleans(tmp_path):
    (tmp_path / "y.yaml").write_text("augment: no\nmethod: pgd_at\ndataset: blobs\n")
    assert build_train_config(str(tmp_path / "y.yaml")).augment is False
    with pytest.raises(UserError):
        TrainConfig(augment="yes")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--n-test", "-5"], "--n-test must be >= 0"),
        (["--model", "resnet18"], "--model describes a --weights-file"),
        (["--num-classes", "100"], "--num-classes describes a --weights-file"),
        (["--eps", "8"], "8/255"),
        (["--attacks", "clean", "pgdx"], "unknown attack 'pgdx'"),
    ],
)
def test_bad_eval_flags_are_one_line(tmp_path, capsys, args, needle):
    ckpt = make_checkpoint(tmp_path / "best.pt")
    assert main(["eval", str(ckpt), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_eps_overridden_once_is_seen_everywhere(tmp_path, capsys, monkeypatch):
    import dhat.attacks.spec as spec

    seen = []
    real = spec.AttackSpec.from_threat
    monkeypatch.setattr(
        spec.AttackSpec,
        "from_threat",
        lambda threat, **kw: seen.append(threat.eps) or real(threat, **kw),
    )
    assert train(tmp_path, "--method", "pgd_at", "--eps", "4/255") == 0
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert state["method_options"]["eps"] == 4 / 255  # training attacks
    assert seen and set(seen) == {4 / 255}  # validation
    assert (
        main(
            [
                "eval",
                str(tmp_path / "run" / "best.pt"),
                "--attacks",
                "clean",
                "pgd10",
                "--gap-train-images",
                "0",
                "--no-sanity",
                "--no-progress",
            ]
        )
        == 0
    )
    card = json.loads((tmp_path / "run" / "eval_best_clean-pgd10.json").read_text())
    assert card["eps"] == 4 / 255 and "eps 4/255" in card["attack_settings"]["pgd10"]
    assert (
        main(
            ["export", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "m.safetensors")]
        )
        == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["eps"] == 4 / 255


def test_help_groups_options_by_method(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--method", "dhat", "--help"])
    out = capsys.readouterr().out
    assert "options of method 'dhat'" in out and "--omega" in out and "default 0.1" in out
    assert "--beta" not in out and "{official,paper}" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for method in ("trades:", "uiat:", "dhat:", "mart:"):
        assert method in out
    assert "{dhat," in out or "dhat_awp" in out  # --method shows its choices


def test_attention_and_eval_name_the_checkpoints_dataset(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "best.pt")
    assert (
        main(
            [
                "eval",
                str(ckpt),
                "--attacks",
                "clean",
                "--gap-train-images",
                "0",
                "--no-sanity",
                "--no-progress",
                "--n-test",
                "20",
            ]
        )
        == 0
    )
    assert "dataset: shapes (the checkpoint's)" in capsys.readouterr().out


def test_version_prints_the_package_version(capsys):
    import dhat
    from dhat.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"dhat {dhat.__version__}"

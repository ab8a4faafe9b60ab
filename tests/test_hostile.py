"""Hostile input (issue 26): no code runs from data files, every number is finite and
bounded, outputs never overwrite inputs, an AutoAttack-only evaluation keeps its card, and
every bad input is one line with exit status 2 (never a traceback)."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, make_checkpoint, one_line

import dhat
from dhat.cli import main
from dhat.config import TrainConfig, build_train_config
from dhat.data.cifar import data_folder, load_cifar, safe_load
from dhat.errors import UserError, excerpt
from dhat.schema import NONNEG, SEED, Range, max_threads, parse_number

EVAL = [
    "--attacks",
    "clean",
    "--n-test",
    "4",
    "--gap-train-images",
    "0",
    "--no-sanity",
    "--no-background",
    "--no-progress",
    "--device",
    "cpu",
    "--records",
    "off",
]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train(tmp_path, *args):
    return main(["train", *TINY, "--out-dir", str(tmp_path / "run"), "--no-eval", *args])


# ----------------------------------------------------------------------------- CIFAR pickles
class Payload:
    """Unpickling this runs `fn(*args)`: here, creating a marker file."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def official_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "batch_label": "training batch",
        "labels": [int(v) for v in rng.integers(0, 10, n)],
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def write_cifar(root: Path, protocol: int = 2, **replace: bytes) -> tuple[Path, dict]:
    """An official-layout CIFAR-10 folder (4 images a batch) under root; `replace` maps a file
    name to the raw bytes to write instead. Returns (folder, {file: batch dict})."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batches[name] = official_batch(4, i)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=protocol))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    for name, raw in replace.items():
        (folder / name).write_bytes(raw)
    return folder, batches


def marker_payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that create `marker` when unpickled, as a batch's 'data' or as the whole file."""
    calls = {
        "open": Payload(open, str(marker), "w"),
        "os.system": Payload(os.system, f"touch {marker}"),
        "subprocess": Payload(subprocess.call, ["touch", str(marker)]),
    }
    out = {}
    for name, p in calls.items():
        out[f"{name}-in-data-p2"] = pickle.dumps({"data": p, "labels": [0]}, protocol=2)
        out[f"{name}-whole-p5"] = pickle.dumps(p, protocol=5)
    return out


def test_the_payloads_are_live_under_plain_pickle(tmp_path):
    """The oracle for the tests below: each crafted file does create its marker when read
    with plain pickle.load (as dhat did before)."""
    for name, raw in marker_payloads(tmp_path / "m").items():
        (tmp_path / "m").unlink(missing_ok=True)
        try:
            pickle.loads(raw, encoding="latin1")
        except Exception:
            pass  # the marker exists already: the unpickling itself ran the call
        assert (tmp_path / "m").exists(), name


@pytest.mark.parametrize("target", ["data_batch_1", "test_batch", "batches.meta"])
def test_crafted_cifar_files_never_run_their_payload(tmp_path, target):
    marker = tmp_path / "marker"
    for name, raw in marker_payloads(marker).items():
        root = tmp_path / name
        write_cifar(root, **{target: raw})
        with pytest.raises(UserError) as e:
            load_cifar(root, "cifar10", train=target == "data_batch_1")
            load_cifar(root, "cifar10", train=False)
        msg = str(e.value)
        assert target in msg and "nothing in it was run" in msg and "\n" not in msg, msg
        assert not marker.exists(), name


def test_official_layouts_load_exactly(tmp_path):
    for protocol in (2, 4, 5):  # the Python 2 era originals, and files re-saved since
        folder, batches = write_cifar(tmp_path / f"p{protocol}", protocol=protocol)
        x, y, names = load_cifar(folder.parent, "cifar10", train=True)
        want = np.concatenate([batches[f"data_batch_{k}"]["data"] for k in range(1, 6)])
        assert np.array_equal(x.numpy().reshape(len(want), -1), want)
        labels = sum((batches[f"data_batch_{k}"]["labels"] for k in range(1, 6)), [])
        assert y.tolist() == labels and names == [f"class{i}" for i in range(10)]


def test_real_cifar_reads_as_plain_pickle_does(cifar_root):
    folder = data_folder("cifar10", cifar_root)
    with open(folder / "test_batch", "rb") as f:
        trusted = pickle.load(f, encoding="latin1")  # the real file: plain pickle is the oracle
    mine = safe_load(folder / "test_batch")
    assert np.array_equal(mine["data"], trusted["data"]) and mine["labels"] == trusted["labels"]
    assert safe_load(folder / "batches.meta") == pickle.load(
        open(folder / "batches.meta", "rb"), encoding="latin1"
    )


def test_truncated_garbage_and_misshapen_cifar_files_are_one_line(tmp_path):
    good = pickle.dumps(official_batch(4, 0), protocol=2)
    bad = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\x80\x02garbage" + bytes(range(256)),
        "empty": b"",
        "not a dict": pickle.dumps([1, 2, 3], protocol=2),
        "wrong shape": pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}),
        "few labels": pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0]}),
        "float data": pickle.dumps({"data": np.zeros((4, 3072)), "labels": [0] * 4}),
        "bad label": pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 99]}),
    }
    for what, raw in bad.items():
        root = tmp_path / what.replace(" ", "_")
        write_cifar(root, data_batch_1=raw)
        with pytest.raises(UserError) as e:
            load_cifar(root, "cifar10")
        assert "\n" not in str(e.value) and len(str(e.value)) < 400, (what, str(e.value))
    root = tmp_path / "meta"
    write_cifar(root, **{"batches.meta": pickle.dumps({"label_names": [1, 2]})})
    with pytest.raises(UserError, match="batches.meta"):
        load_cifar(root, "cifar10", train=False)


@pytest.mark.parametrize("relative", [False, True])
def test_a_checkpoint_whose_data_root_is_crafted_never_runs_it(
    tmp_path, monkeypatch, capsys, relative
):
    """`dhat eval ck.pt` reads the run's data_root: a shared checkpoint pointing at a crafted
    folder (absolute, or relative to where eval runs) is refused, its payload never run."""
    marker = tmp_path / "marker"
    monkeypatch.chdir(tmp_path)
    raw = marker_payloads(marker)["os.system-in-data-p2"]
    write_cifar(tmp_path / "crafted", data_batch_1=raw)
    root = "crafted" if relative else str(tmp_path / "crafted")
    ck = make_checkpoint(
        tmp_path / "ck" / "best.pt",
        config={"dataset": "cifar10", "data_root": root, "dataset_args": {}},
    )
    assert main(["eval", str(ck), *EVAL]) == 2
    line = one_line(capsys.readouterr().err)
    assert "data_batch_1" in line and "nothing in it was run" in line, line
    assert not marker.exists()
    write_cifar(tmp_path / "crafted_meta", **{"batches.meta": raw})
    ck2 = make_checkpoint(
        tmp_path / "ck2" / "best.pt",
        config={
            "dataset": "cifar10",
            "data_root": str(tmp_path / "crafted_meta"),
            "dataset_args": {},
        },
    )
    assert main(["eval", str(ck2), *EVAL]) == 2
    assert "batches.meta" in one_line(capsys.readouterr().err) and not marker.exists()


def test_data_folder_names_what_eval_reads(tmp_path):
    folder, _ = write_cifar(tmp_path / "d")
    assert data_folder("cifar10", tmp_path / "d") == folder.resolve()
    assert data_folder("cifar10", folder) == folder.resolve()
    assert data_folder("cifar10", tmp_path / "none") is None


# ----------------------------------------------------------------------------- numbers
def test_range_refuses_nan_and_inf_and_prints_integers_exactly():
    nan, inf = float("nan"), float("inf")
    assert nan not in Range(0, 1) and nan not in Range() and inf not in NONNEG
    assert -inf not in Range(high=0) and 0.5 in Range(0, 1) and 0 in NONNEG
    assert str(SEED) == f"[0, {2**63 - 2}]"
    for bad in ("nan", "inf", "-inf", "1/0", 10**400, float("nan")):
        with pytest.raises(UserError):
            parse_number(bad)
    assert parse_number("8/255") == 8 / 255


NAN_FLAGS = [
    ["--omega", "nan"],
    ["--label-smoothing", "nan"],
    ["--lr", "nan"],
    ["--momentum", "nan"],
    ["--lr-gamma", "nan"],
    ["--ema-decay", "nan"],
    ["--weight-decay", "inf"],
    ["--lr", "inf"],
    ["--lr=-inf"],  # argparse reads a bare -inf as an option
    ["--eps", "nan"],
    ["--step-size", "inf"],
    ["--lambda1", "inf"],
    ["--lr-warmup", "nan"],
    ["--aux-fraction", "nan"],
    ["--eps-inv", "nan"],
]


@pytest.mark.parametrize("args", NAN_FLAGS, ids=lambda a: " ".join(a))
def test_nan_and_inf_flags_are_refused_before_any_data(tmp_path, capsys, no_data, args):
    assert train(tmp_path, "--method", "dhat", *args) == 2
    line = one_line(capsys.readouterr().err)
    assert args[0].split("=")[0] in line and "finite" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("lr: .nan\n", "lr"),
        ("lr: .inf\n", "lr"),
        ("momentum: -.inf\n", "momentum"),
        ("method: dhat\nmethod_args: {omega: .nan}\n", "omega"),
        ("dataset: shapes\ndataset_args: {rho: .nan}\n", "rho"),
        ("epochs: 1.0e+20\n", "epochs"),
    ],
)
def test_nan_inf_and_huge_values_in_yaml_are_refused(tmp_path, no_data, capsys, text, needle):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError, match=needle):
        build_train_config(str(tmp_path / "c.yaml"))
    run = str(tmp_path / "run")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out-dir", run]) == 2
    assert needle in one_line(capsys.readouterr().err)
    with pytest.raises(UserError):
        TrainConfig(lr=float("nan"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--threads", "100000"], f"[0, {max_threads()}]"),
        (["--threads", str(max_threads() + 1)], f"[0, {max_threads()}]"),
        (["--seed", "99999999999999999999"], "64-bit"),
        (["--seed", str(2**63 - 1)], str(2**63 - 2)),
        (["--epochs", "1e20"], "--epochs"),
        (["--epochs", "10001"], "[1, 10000]"),
        (["--steps", "1000000000"], "[1, 10000]"),
        (["--val-steps", "20000"], "[1, 10000]"),
        (["--dataset", "shapes", "--dataset-arg", "n_train=100000000"], "[0, 5000000]"),
        (["--dataset", "shapes", "--dataset-arg", "n_test=-1"], "[0, 5000000]"),
        (["--milestones", "99999999999999999999"], "64-bit"),
    ],
)
def test_threads_seeds_sizes_epochs_steps_are_bounded(tmp_path, capsys, no_data, args, needle):
    assert train(tmp_path, *args) == 2
    assert needle in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_the_bounds_admit_their_end_points():
    top = 2**63 - 2
    cfg = TrainConfig(dataset="blobs", model="small_cnn", model_args={"width": 4}, seed=top)
    torch.Generator().manual_seed(cfg.seed + 1)  # the trainer's aux seed: torch accepts it
    assert TrainConfig(dataset="blobs", threads=max_threads(), epochs=10_000).threads > 0


def test_eval_refuses_huge_threads_and_nan_budgets(tmp_path, capsys):
    ck = make_checkpoint(tmp_path / "best.pt", num_classes=4, config={"dataset": "blobs"})
    for args in (["--threads", "100000"], ["--step-size", "nan"], ["--eps", "inf"]):
        assert main(["eval", str(ck), *EVAL, *args]) == 2
        assert args[0] in one_line(capsys.readouterr().err)
    assert torch.get_num_threads() < 100000


def yaml_bomb(levels: int = 8) -> str:
    """~300 bytes that expand to 9**levels strings once the anchors are walked."""
    rows = ["&a [x,x,x,x,x,x,x,x,x]"]
    for i in range(1, levels):
        a, b = chr(ord("a") + i - 1), chr(ord("a") + i)
        rows.append(f"&{b} [" + ",".join([f"*{a}"] * 9) + "]")
    return "seed: [" + ", ".join(rows) + "]\n"


def test_a_yaml_anchor_bomb_is_refused_within_1s_and_100mb(tmp_path, capsys):
    text = yaml_bomb()
    assert len(text) < 400
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(UserError, match="expands to more than") as e:
            build_train_config(str(path))
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 1 and peak < 100e6 and len(str(e.value)) < 300, (seconds, peak)
    assert main(["train", "--config", str(path), "--out-dir", str(tmp_path / "r")]) == 2
    assert len(one_line(capsys.readouterr().err)) < 300
    value = yaml.safe_load(text)["seed"]  # the loaded value shares its lists: cheap to hold
    t = time.perf_counter()
    assert len(excerpt(value)) <= 60 and time.perf_counter() - t < 0.1


# ----------------------------------------------------------------------------- no tracebacks
def _train_yaml(content: bytes):
    def case(tmp_path):
        (tmp_path / "c.yaml").write_bytes(content)
        return ["train", "--config", str(tmp_path / "c.yaml"), "--out-dir", str(tmp_path / "r")]

    return case


def _train_flags(*flags):
    return lambda tmp_path: ["train", *TINY, "--out-dir", str(tmp_path / "r"), *flags]


def _eval_cifar(raw: bytes):
    def case(tmp_path):
        write_cifar(tmp_path / "d", data_batch_1=raw)
        ck = make_checkpoint(
            tmp_path / "best.pt",
            config={"dataset": "cifar10", "data_root": str(tmp_path / "d"), "dataset_args": {}},
        )
        return ["eval", str(ck), *EVAL]

    return case


def _eval_changed_checkpoint(change):
    def case(tmp_path):
        from dhat.checkpoint import read_checkpoint, save_checkpoint

        ck = make_checkpoint(tmp_path / "best.pt", num_classes=4, config={"dataset": "blobs"})
        state = read_checkpoint(ck)
        change(state)
        save_checkpoint(ck, state)
        return ["eval", str(ck), *EVAL]

    return case


def _binary_sidecar(tmp_path):
    net = dhat.create_model("small_cnn", num_classes=4, width=4)
    torch.save(net.state_dict(), tmp_path / "m.pt")
    (tmp_path / "m.json").write_bytes(b"\xff\xfe\x00garbage\x80")
    args = ["--weights-file", str(tmp_path / "m.pt"), "--model", "small_cnn"]
    return ["eval", *args, "--model-arg", "width=4", "--dataset", "blobs", *EVAL]


def _attention(extra, setup=None):
    def case(tmp_path):
        ck = make_checkpoint(tmp_path / "best.pt")
        if setup:
            setup(tmp_path)
        return ["attention", str(ck), "--device", "cpu", "--n", "4", *extra(tmp_path)]

    return case


def _report(content: bytes):
    def case(tmp_path):
        (tmp_path / "x.json").write_bytes(content)
        return ["report", str(tmp_path / "x.json")]

    return case


TRACEBACKS_BEFORE = {
    "yaml binary garbage": _train_yaml(b"\x00\xff\xfe\x01garbage\x80"),
    "yaml preset list": _train_yaml(b"preset: [1,2]\n"),
    "yaml method list": _train_yaml(b"method: [1,2]\n"),
    "yaml integer key": _train_yaml(b"5: 1\n"),
    "yaml deep nesting": _train_yaml(b"lr: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    "seed 1e20": _train_flags("--seed", "99999999999999999999"),
    "width=0": _train_flags("--model-arg", "width=0"),
    "width=-3": _train_flags("--model-arg", "width=-3"),
    "norm=nosuch": _train_flags("--model-arg", "norm=nosuch"),
    "cam-layer nosuch": _train_flags("--method", "dhat", "--cam-layer", "nosuch"),
    "cifar truncated": _eval_cifar(pickle.dumps(official_batch(4, 0), protocol=2)[:500]),
    "cifar garbage": _eval_cifar(b"\x80\x02" + bytes(range(200))),
    "checkpoint without model_spec": _eval_changed_checkpoint(lambda s: s.pop("model_spec")),
    "weights unlike their spec": _eval_changed_checkpoint(
        lambda s: s["model_spec"]["kwargs"].update(width=8)
    ),
    "binary sidecar": _binary_sidecar,  # may also be ignored (exit 0): see the test
    "attention out under a file": _attention(
        lambda t: ["--out", str(t / "f.txt" / "a.json")],
        setup=lambda t: (t / "f.txt").write_text("x"),
    ),
    "attention overlay under a file": _attention(
        lambda t: ["--overlay", str(t / "f.txt" / "o.png")],
        setup=lambda t: (t / "f.txt").write_text("x"),
    ),
    "attention boxes binary json": _attention(
        lambda t: ["--boxes", str(t / "b.json")],
        setup=lambda t: (t / "b.json").write_bytes(b"\xff\xfe\x80"),
    ),
    "attention boxes garbage pt": _attention(
        lambda t: ["--boxes", str(t / "b.pt")],
        setup=lambda t: (t / "b.pt").write_bytes(b"\x80\x02garbage"),
    ),
    "report binary file": _report(b"\xff\xfe\x00\x80garbage"),
    "report json list": _report(b"[1, 2, 3]"),
    "report card without fields": _report(b'{"accuracy": {"clean": "high"}}'),
}


@pytest.mark.parametrize("case", list(TRACEBACKS_BEFORE))
def test_every_former_traceback_is_one_line_exit_2(tmp_path, capsys, case):
    argv = TRACEBACKS_BEFORE[case](tmp_path)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    if case == "binary sidecar" and rc == 0:  # a sidecar dhat export did not write is ignored
        assert "Traceback" not in err and "result written" in out, err
        return
    assert rc == 2
    line = one_line(err)
    assert line.startswith(f"dhat {argv[0]}: error: ") and len(line) < 600, line


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import dhat.cli.report as report

    def boom(ns):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(report, "run", boom)
    monkeypatch.setattr(report, "add_parser", _with_run(report.add_parser, boom))
    assert main(["report", "x.json"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "unexpected RuntimeError: boom second line" in line and "--debug" in line, line
    assert main(["report", "x.json", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("dhat report: error")


def _with_run(add_parser, run):
    """report.add_parser, but its subcommand runs `run`."""

    def wrapped(sub, argv):
        p = add_parser(sub, argv)
        p.set_defaults(run=run)
        return p

    return wrapped


def test_the_method_is_chosen_inside_the_handler(monkeypatch, capsys):
    import dhat.cli.train as cli_train

    def broken(argv, source=None):
        raise RuntimeError("cannot choose")

    monkeypatch.setattr(cli_train, "chosen_method", broken)
    assert main(["train", "--epochs", "1"]) == 2
    assert "cannot choose" in one_line(capsys.readouterr().err)


def test_warnings_print_as_one_line(monkeypatch, capsys):
    import dhat.cli.report as report

    def warn(ns):
        warnings.warn("first\nsecond", stacklevel=1)

    monkeypatch.setattr(report, "add_parser", _with_run(report.add_parser, warn))
    assert main(["report", "x.json"]) == 0
    assert one_line(capsys.readouterr().err) == "dhat report: warning: first second"


def test_sigterm_is_an_interrupt_with_a_true_message(monkeypatch, capsys):
    import dhat.cli.report as report

    before = signal.getsignal(signal.SIGTERM)

    def terminate(ns):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this
        raise AssertionError("SIGTERM did not interrupt the command")

    monkeypatch.setattr(report, "add_parser", _with_run(report.add_parser, terminate))
    t = time.perf_counter()
    assert main(["report", "x.json"]) == 128 + signal.SIGTERM
    assert one_line(capsys.readouterr().err) == "dhat report: terminated (SIGTERM)"
    assert time.perf_counter() - t < 5 and signal.getsignal(signal.SIGTERM) == before


class BrokenStdout:
    """A stdout whose reader has gone (`| head`): every write raises BrokenPipeError."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_broken_pipe_is_silent_and_the_card_is_still_written(tmp_path, monkeypatch, capsys):
    ck = make_checkpoint(tmp_path / "ck" / "best.pt", num_classes=4, config={"dataset": "blobs"})
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", BrokenStdout())
    assert main(["eval", str(ck), *EVAL]) == 0
    monkeypatch.undo()
    assert capsys.readouterr().err == ""
    assert len(list((tmp_path / "ck").glob("eval_best*.json"))) == 1  # the card was written


def test_output_into_a_closed_pipe_exits_silently():
    """A real process writing into a pipe whose reader is gone: no traceback, no 'Exception
    ignored' at shutdown."""
    r, w = os.pipe()
    os.close(r)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dhat.cli", "train", "--help"],
        stdout=w,
        stderr=subprocess.PIPE,
        env=env,
        timeout=120,
    )
    os.close(w)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()


# ----------------------------------------------------------------------------- output paths
def test_model_arguments_are_checked_in_python_too():
    with pytest.raises(ValueError, match="width") as e:
        dhat.create_model("small_cnn", width=0)
    assert isinstance(e.value, UserError)
    with pytest.raises(UserError, match="depth"):
        dhat.create_model("wide_resnet", depth=11)
    with pytest.raises(UserError, match="std"):
        dhat.create_model("small_cnn", mean=[0.5] * 3, std=[0.0, 1.0, 1.0])


def test_eval_never_writes_onto_its_inputs(tmp_path, capsys):
    ck = make_checkpoint(tmp_path / "ck" / "a.pt", num_classes=4, config={"dataset": "blobs"})
    before = sha(ck)
    (tmp_path / "link.json").symlink_to(ck)
    os.link(ck, tmp_path / "hard.npz")
    cases = [
        ["--out", str(ck)],
        ["--out", str(tmp_path / "link.json")],
        ["--out", str(tmp_path / "card.txt")],
        ["--records", str(ck)],
        ["--records", str(tmp_path / "hard.npz")],
        ["--out", str(tmp_path / "c.json"), "--records", str(tmp_path / "c.json")],
    ]
    for extra in cases:
        argv = ["eval", str(ck), *EVAL[:-2], *extra]
        assert main(argv) == 2, extra
        assert "--" in one_line(capsys.readouterr().err)
        assert sha(ck) == before
    assert sorted(p.name for p in ck.parent.iterdir()) == ["a.pt"]


def test_attention_checks_its_outputs_before_any_grad_cam(tmp_path, monkeypatch, capsys):
    import dhat.analysis.attention as analysis

    def never(cfg):
        raise AssertionError("computed before the outputs were checked")

    monkeypatch.setattr(analysis, "analyse_checkpoint", never)
    ck = make_checkpoint(tmp_path / "best.pt")
    boxes = tmp_path / "boxes.json"
    boxes.write_text("[[0, 0, 16, 16]]")
    (tmp_path / "link.png").symlink_to(ck)
    inputs = {ck: sha(ck), boxes: sha(boxes)}
    for extra in (
        ["--out", str(ck)],
        ["--overlay", str(ck)],
        ["--overlay", str(tmp_path / "link.png")],
        ["--overlay", str(tmp_path / "o.json")],
        ["--boxes", str(boxes), "--out", str(boxes)],
        ["--out", str(tmp_path / "a.json"), "--overlay", str(tmp_path / "a.json")],
    ):
        assert main(["attention", str(ck), *extra]) == 2, extra
        one_line(capsys.readouterr().err)
        assert {p: sha(p) for p in inputs} == inputs


def test_report_never_writes_onto_a_card(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    card = run / "eval_best.json"
    card.write_text('{"not": "read"}')
    before = sha(card)
    for extra in (
        ["--plot", str(card)],
        ["--plot", str(tmp_path / "fig.jpg")],
        ["--out", str(card)],
        ["--out", str(tmp_path / "t.md"), "--plot", str(tmp_path / "t.md")],
        ["--out", str(tmp_path / "t.png")],
    ):
        assert main(["report", str(run), *extra]) == 2, extra
        one_line(capsys.readouterr().err)
        assert sha(card) == before


# ----------------------------------------------------------------------------- AutoAttack only
def test_aa_vs_pgd_runs_its_own_pgd_when_none_was_requested(trained_tiny):
    from dhat.eval.sanity import run_sanity_checks

    model, x, y = trained_tiny
    x, y = x[:32], y[:32]
    kw = dict(eps=2 / 255, n=32, batch_size=32, warn=False)
    fooled = {
        c["check"]: c
        for c in run_sanity_checks(model, x, y, aa_robust=torch.zeros(32, dtype=torch.bool), **kw)
    }
    robust = {
        c["check"]: c
        for c in run_sanity_checks(model, x, y, aa_robust=torch.ones(32, dtype=torch.bool), **kw)
    }
    # trained_tiny keeps ~100% under PGD at 2/255: AutoAttack at 0% is far below it, at 100% level
    assert fooled["aa_vs_pgd"]["status"] == "warn" and robust["aa_vs_pgd"]["status"] == "ok"
    d = fooled["aa_vs_pgd"]["details"]
    assert d["attacks"] == ["pgd10", "pgd50"] and d["n"] == 32 and d["ours"] > 0.9


def test_autoattack_only_evaluation_writes_a_valid_card(tmp_path, capsys, one_thread):
    from dhat.attacks.autoattack import import_autoattack
    from dhat.eval.card import read_card

    try:
        import_autoattack()
    except UserError:
        pytest.skip("AutoAttack is not installed")
    ck = make_checkpoint(tmp_path / "ck" / "best.pt", num_classes=4, config={"dataset": "blobs"})
    argv = ["eval", str(ck), "--attacks", "clean", "aa", "--n-test", "8", "--sanity-n", "8"]
    argv += ["--gap-train-images", "0", "--no-background", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    (path,) = (tmp_path / "ck").glob("eval_best*.json")
    card = read_card(path)  # validated on read
    checks = {c["check"]: c for c in card["sanity"]}
    assert checks["aa_vs_pgd"]["status"] != "skipped"
    assert checks["aa_vs_pgd"]["details"]["attacks"] == ["pgd10", "pgd50"]
    assert checks["aa_vs_pgd"]["details"]["autoattack"] == pytest.approx(card["accuracy"]["aa"])


def test_sigterm_stops_training_like_ctrl_c(tmp_path):
    """A real `dhat train` killed with SIGTERM after its first checkpoint: exit 143, one true
    line that offers --resume, and a readable last.pt."""
    from dhat.checkpoint import read_checkpoint

    run = tmp_path / "run"
    argv = [sys.executable, "-m", "dhat.cli", "train", "--dataset", "shapes"]
    argv += ["--dataset-arg", "n_train=300", "--dataset-arg", "n_test=50", "--val-size", "50"]
    argv += ["--model", "small_cnn", "--model-arg", "width=4", "--method", "pgd_at"]
    argv += ["--steps", "1", "--val-steps", "1", "--epochs", "500", "--batch-size", "64"]
    argv += ["--no-progress", "--threads", "1", "--no-eval", "--out-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").is_file() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    line = one_line(err.decode())
    assert line == "dhat train: terminated (SIGTERM); continue it with --resume", line
    assert read_checkpoint(run / "last.pt")["epoch"] >= 0

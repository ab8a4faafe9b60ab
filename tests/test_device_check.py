"""benchmarks/device_check.py (--smoke, on the CPU) and benchmarks/pack_cifar_subset.py."""

import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dhat
from dhat.attacks.autoattack import autoattack_available
from dhat.data import Batch
from dhat.methods import list_methods

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


sys.path.insert(0, str(BENCH))
import device_check as dc  # noqa: E402
import pack_cifar_subset as pack  # noqa: E402


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    """The official pickle layout with random images: 5 x 10 training, 30 test images."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 10) for i in range(1, 6)), ("test_batch", 30)]:
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": (np.arange(n) * 7 % 10).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    return root


@pytest.fixture(scope="module")
def tiny_npz(fake_cifar, tmp_path_factory):
    return pack.pack(
        fake_cifar, tmp_path_factory.mktemp("npz") / "tiny.npz", train_per_class=4, test_per_class=2
    )


# --- the packer --------------------------------------------------------------------------------
def test_packer_writes_a_balanced_uint8_subset(fake_cifar, tmp_path, capsys):
    out = tmp_path / "sub.npz"
    assert (
        pack.main(
            [
                "--root",
                str(fake_cifar),
                "--out",
                str(out),
                "--train-per-class",
                "3",
                "--test-per-class",
                "2",
            ]
        )
        == 0
    )
    assert "MiB" in capsys.readouterr().out
    with np.load(out) as z:
        assert z["train_x"].shape == (30, 3, 32, 32) and z["train_x"].dtype == np.uint8
        assert z["test_x"].shape == (20, 3, 32, 32)
        assert np.bincount(z["train_y"]).tolist() == [3] * 10
        assert np.bincount(z["test_y"]).tolist() == [2] * 10
        assert list(z["class_names"])[:2] == ["class0", "class1"]
    x, y, _ = dhat.data.load_cifar(fake_cifar, "cifar10", train=True)
    keep = pack.balanced(y, 3, 0)
    assert torch.equal(keep, keep.sort().values)  # the official order
    with np.load(out) as z:
        assert np.array_equal(z["train_x"], x[keep].numpy())


def test_packer_refuses_an_oversized_file_and_a_short_class(fake_cifar, tmp_path, capsys):
    out = tmp_path / "big.npz"
    assert (
        pack.main(
            [
                "--root",
                str(fake_cifar),
                "--out",
                str(out),
                "--train-per-class",
                "5",
                "--test-per-class",
                "3",
                "--max-mib",
                "0.01",
            ]
        )
        == 2
    )
    assert "over --max-mib" in capsys.readouterr().err and not out.exists()
    assert pack.main(["--root", str(fake_cifar), "--out", str(out), "--train-per-class", "6"]) == 2
    assert "fewer than 6" in capsys.readouterr().err


def test_packer_on_real_cifar(cifar_root, tmp_path):
    out = pack.pack(cifar_root, tmp_path / "real.npz", train_per_class=5, test_per_class=3)
    with np.load(out) as z:
        assert np.bincount(z["train_y"]).tolist() == [5] * 10
        assert z["test_x"].shape == (30, 3, 32, 32)


# --- tolerances and comparisons ---------------------------------------------------------------
def test_tolerance_logic():
    tol = dc.TOLERANCES["loss"]
    assert tol.allows(1.0, 1.0 + tol.rtol + tol.atol - 1e-9)
    assert not tol.allows(1.0, 1.0 + tol.rtol + tol.atol + 1e-6)
    assert not tol.allows(1.0, math.nan)
    res = dc.compare_values(
        {"ce": 2.0, "adv_acc": 0.5}, {"ce": 2.5, "adv_acc": 0.52}, dc.metric_kind
    )
    assert res["adv_acc"]["tolerance"] == "batch_accuracy" and res["adv_acc"]["ok"]
    assert res["ce"]["tolerance"] == "loss" and not res["ce"]["ok"]
    assert res["ce"]["rel_diff"] == pytest.approx(0.25)
    assert not dc.compare_values({"kl": 1.0}, {}, dc.metric_kind)["kl"]["ok"]  # a lost metric
    ref = torch.tensor([True] * 50 + [False] * 50)
    low = ref.clone()
    low[:3] = False
    c = dc.compare_correct(ref, low)
    assert c["diff"] == pytest.approx(-0.03) and c["flips"] == pytest.approx(0.03)
    assert not c["ok"] and dc.compare_correct(ref, ref)["ok"]
    cam = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert dc.compare_cams(cam, cam)["ok"] and dc.compare_cams(cam, cam)["mask_agreement"] == 1
    assert not dc.compare_cams(cam, (cam + 0.1).clamp(max=1))["ok"]


def test_amp_comparison_with_float64_as_reference_and_float32_as_low(one_thread):
    """The CPU stand-in for bf16 vs fp32: everything agrees within the tolerances."""
    torch.manual_seed(0)
    model = dhat.create_model("small_cnn", num_classes=10, width=4).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    batch = Batch(x.float() / 255, y, torch.arange(4))
    # SGLR's soft-label table is float32 (its `setup`), so a float64 step cannot store its rows;
    # under bf16 autocast its softmax rows are float32, as the table is.
    methods = [m for m in list_methods() if not m.startswith("_") and m != "sglr"]
    res = dc.amp_compare(
        model,
        x,
        y,
        batch,
        dc.Precision("fp64", torch.float64),
        dc.FP32,
        torch.device("cpu"),
        methods=methods,
        steps=1,
        eval_batch=4,
        log=lambda _: None,
    )
    assert res["ok"], res["failures"]
    assert set(res["methods"]) == set(methods)
    assert set(res["accuracy"]) == {"clean", "pgd10", "cw20"}
    assert "adv_acc" in res["methods"]["dhat"]["objective"]
    assert res["methods"]["dhat"]["objective"]["floe"]["rel_diff"] < 1e-4
    assert res["grad_cam"]["mean_abs_diff"] < 1e-4


# --- the whole check ---------------------------------------------------------------------------
PART_FIELDS = {
    "amp": {"reference", "low", "accuracy", "methods", "grad_cam", "tolerances", "ok", "failures"},
    "syncs": {"available", "methods", "loader", "trainer", "ok"},
    "step_time": {"rows", "batch", "attack_steps", "memory"},
    "eval_speed": {"model", "batch_size", "attacks"},
    "training": {"model", "runs"},
}


@pytest.mark.slow
def test_smoke_run_writes_every_file(tiny_npz, tmp_path, one_thread):
    out = tmp_path / "check"
    assert dc.main(["--smoke", "--data", str(tiny_npz), "--out", str(out), "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["failed"] == [] and summary["skipped_for_time"] == []
    assert summary["ran"] == ["amp", "step_time", "eval_speed", "training"]
    assert summary["not_applicable"] == ["syncs"]  # no CUDA here
    assert summary["environment"]["gpu"] == "none" and summary["environment"]["cuda"] == "cpu"
    for part, fields in PART_FIELDS.items():
        result = json.loads((out / f"{part}.json").read_text())
        assert fields <= set(result), part
        assert (out / f"{part}.md").read_text().startswith("# ")
    assert "amp: ran" in (out / "log.txt").read_text()
    methods = [m for m in list_methods() if not m.startswith("_")]
    amp = json.loads((out / "amp.json").read_text())
    assert set(amp["methods"]) == set(methods)
    assert not any("error" in m for m in amp["methods"].values())
    assert {"ref", "low", "abs_diff", "ok"} <= set(amp["methods"]["dhat"]["step"]["ce"])
    rows = json.loads((out / "step_time.json").read_text())["rows"]
    assert not any("error" in r or "skipped" in r for r in rows)
    timed = [r for r in rows if "median" in r]
    assert len(timed) == 2 * len(dc.SMOKE.configs) * len(methods)
    assert all(r["ratio_pgd_at"] > 0 for r in timed)
    speed = json.loads((out / "eval_speed.json").read_text())["attacks"]
    if autoattack_available():
        assert set(speed) == {"clean", "pgd20", "autoattack"}
    else:  # the optional package is missing: its row alone is skipped (see the test below)
        assert set(speed) == {"clean", "pgd20"}
    assert all(v["images_per_s"] > 0 for v in speed.values())
    runs = json.loads((out / "training.json").read_text())["runs"]
    assert set(runs) == {"dhat", "pgd_at"}
    assert all(
        len(r["log"]) == r["epochs"] and 0 <= r["test_clean_acc"] <= 1 for r in runs.values()
    )


def test_eval_speed_skips_only_autoattack_when_it_is_not_installed(
    tiny_npz, tmp_path, monkeypatch, one_thread
):
    """Neither `autoattack` nor `pyautoattack` importable: eval_speed still measures clean
    and PGD-20 and says why the AutoAttack row is missing; the check does not fail."""
    for name in ("autoattack", "pyautoattack"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    assert not autoattack_available()
    out = tmp_path / "no_aa"
    args = ["--smoke", "--data", str(tiny_npz), "--out", str(out), "--threads", "1"]
    assert dc.main([*args, "--parts", "eval_speed"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ran"] == ["eval_speed"] and summary["failed"] == []
    assert "AutoAttack is not installed" in summary["environment"]["autoattack"]
    res = json.loads((out / "eval_speed.json").read_text())
    assert set(res["attacks"]) == {"clean", "pgd20"}
    assert all(v["images_per_s"] > 0 for v in res["attacks"].values())
    assert "pip install" in res["autoattack_skipped"]
    assert "AutoAttack: skipped (" in (out / "eval_speed.md").read_text()


def test_syncs_part_logic_with_cuda_stubbed(tiny_npz, tmp_path, monkeypatch, one_thread):
    """On CUDA the part counts sync-debug warnings; here a stub reports one sync per call of
    the first method's step, so every path of the part runs and its verdict is exercised."""
    calls = []

    def fake_synchronising(fn, *args, **kwargs):
        fn(*args, **kwargs)
        calls.append(1)
        return ["dhat/x.py:1"] if len(calls) == 1 else []

    monkeypatch.setattr(dc, "sync_debug_available", lambda device: True)
    monkeypatch.setattr(dc, "synchronising", fake_synchronising)
    out = tmp_path / "syncs"
    assert dc.main(["--smoke", "--data", str(tiny_npz), "--out", str(out), "--parts", "syncs"]) == 0
    res = json.loads((out / "syncs.json").read_text())
    methods = [m for m in list_methods() if not m.startswith("_")]
    assert list(res["methods"]) == dc.methods_in_order() and set(res["methods"]) == set(methods)
    assert res["methods"]["pgd_at"] == {"syncs_per_step": 0.5, "where": ["dhat/x.py:1"]}
    assert res["loader"][0]["batches"] == 2 < res["loader"][1]["batches"]
    assert [v["steps"] for v in res["trainer"]] == [2, 6] and res["ok"] is False
    assert json.loads((out / "summary.json").read_text())["ran"] == ["syncs"]


def test_too_little_time_skips_parts_and_still_writes_the_summary(tiny_npz, tmp_path):
    out = tmp_path / "short"
    assert (
        dc.main(["--smoke", "--data", str(tiny_npz), "--out", str(out), "--minutes", "0.001"]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["skipped_for_time"] == list(dc.PARTS)
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "summary.json"]


def test_missing_data_is_one_line(tmp_path, capsys):
    assert dc.main(["--data", str(tmp_path / "none.npz"), "--out", str(tmp_path)]) == 2
    assert "pack_cifar_subset.py" in capsys.readouterr().err

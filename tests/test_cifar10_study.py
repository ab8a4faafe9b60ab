"""experiments/cifar10_study.py: its training subset, the frozen-CAM refusal, the sharing of
runs between processes, and a tiny end-to-end run (train, eval, report) on real CIFAR-10."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dhat.eval.records import card_records
from dhat.train.state import config_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import cifar10_study as study  # noqa: E402  (a script module, found through sys.path)


def test_training_subset_is_class_balanced_and_deterministic_by_seed(cifar_root):
    from dhat.data import load_dataset

    data = load_dataset("cifar10", str(cifar_root))
    a0 = study.training_subset(data.train_y, 300, seed=0)
    assert torch.equal(a0, study.training_subset(data.train_y, 300, seed=0))
    a1 = study.training_subset(data.train_y, 300, seed=1)
    assert not torch.equal(a0, a1)
    for idx in (a0, a1):
        assert len(set(idx.tolist())) == 300
        assert np.bincount(data.train_y[idx].numpy(), minlength=10).tolist() == [30] * 10
    # what the trainer keeps for `train_subset=300, seed=1` is exactly these images
    x = data.train_x[a1]
    assert torch.equal(data.subset_train(300, seed=1).train_x, x)
    args = study.parser().parse_args(
        ["train", "--data-root", str(cifar_root), "--n-train", "300", "--val-size", "50"]
    )
    cfg = study.train_config(args, "pgd_at", 1)
    assert (cfg.train_subset, cfg.seed, cfg.dataset) == (300, 1, "cifar10")


def test_dhat_frozen_refuses_without_its_cam_network_and_names_the_command(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["train", "--seeds", "2", "--runs", str(runs), "--out", str(tmp_path / "out")]
    for name in ("dhat_frozen", "dhat_awp"):
        assert study.main([*argv, "--variants", name]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"{runs}/standard_s2/best.pt" in err
        assert (
            f"python experiments/cifar10_study.py train --seeds 2 --variants standard --runs {runs}"
            in err
        )
    # a best.pt of an unfinished standard run (1 of 40 epochs) is not a frozen network yet
    (runs / "standard_s2").mkdir(parents=True)
    setup = config_dict(study.train_config(study.parser().parse_args(argv), "standard", 2))
    torch.save({"epoch": 0, "config": setup}, runs / "standard_s2" / "last.pt")
    torch.save({"epoch": 0}, runs / "standard_s2" / "best.pt")
    assert study.main([*argv, "--variants", "dhat_frozen"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs the finished standard run of seed 2" in err and "--variants standard" in err
    assert not (runs / "dhat_frozen_s2").exists()


def test_share_splits_the_plan_into_balanced_disjoint_lists_with_standard_first():
    jobs = study.plan([0, 1, 2], list(study.variants()))
    assert len(jobs) == 21 and jobs[:3] == [("standard", s) for s in (0, 1, 2)]

    def cost(job):
        return study.variants()[job[0]].cost

    parts = [study.share(jobs, cost, (k, 2)) for k in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(jobs) and not set(parts[0]) & set(parts[1])
    loads = [sum(cost(j) for j in p) for p in parts]
    assert abs(loads[0] - loads[1]) <= max(cost(j) for j in jobs)
    for p in parts:  # each keeps the plan's order: its standard runs before the rest
        assert p == [j for j in jobs if j in p]
    assert study.share(jobs, cost, (0, 1)) == jobs


def test_tiny_study_trains_evaluates_and_reports(cifar_root, tmp_path, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    common = [
        "--seeds", "0", "--variants", "standard", "pgd_at", "--out", str(out), "--runs",
        str(runs), "--data-root", str(cifar_root),
    ]  # fmt: skip
    train = ["--n-train", "60", "--val-size", "20", "--epochs", "2", "--milestones", "1",
             "--width", "4", "--train-steps", "1", "--batch-size", "20"]  # fmt: skip
    assert study.main(["train", *common, *train]) == 0
    for name in ("standard", "pgd_at"):
        assert torch.load(runs / f"{name}_s0" / "last.pt", weights_only=True)["epoch"] == 1
    evaluate = ["--n-test", "30", "--gap-train-images", "20", "--aa-on"]
    assert study.main(["eval", *common, *train, *evaluate]) == 0
    for name in ("standard", "pgd_at"):
        log = (runs / f"{name}_s0" / "log.jsonl").read_text()
        assert (out / "logs" / f"{name}_s0.jsonl").read_text() == log
        for which in ("best", "last"):
            path = out / "cards" / f"{name}_s0_{which}.json"
            card = json.loads(path.read_text())
            meta = json.loads(path.with_suffix(".meta.json").read_text())
            assert meta == {
                "variant": name,
                "seed": 0,
                "checkpoint": which,
                "epochs": 2,
                "train_seconds": meta["train_seconds"],
                "config": meta["config"],  # the run's, so a reused card is known to be this study's
            }
            assert meta["config"]["train_subset"] == 60 and meta["config"]["method"] == name
            assert card["checkpoint"] == str(runs / f"{name}_s0" / f"{which}.pt")
            assert card["n_test"] == 30 and card["robust_gap"]["n_train"] == 20
            assert sorted(card["accuracy"]) == ["clean", "cw", "pgd10", "pgd20"]
            assert card["eval_config"]["n_test"] == 30
            # the per-image records beside the card account for its numbers
            assert card["records"]["file"] == f"{name}_s0_{which}.records.npz"
            rec = card_records(card, path)
            for k, v in card["accuracy"].items():
                assert rec[f"test|{k}"].mean() == pytest.approx(v)
            gap = rec["gap|train"].mean() - rec["gap|test"].mean()
            assert gap == pytest.approx(card["robust_gap"]["gap"])
    # a run folder of another setup never passes as finished for this one
    other = [*train[:1], "70", *train[2:]]
    assert study.main(["train", *common, *other]) == 2
    stamp = (out / "cards" / "pgd_at_s0_last.json").stat().st_mtime_ns
    assert study.main(["eval", *common, *train, *evaluate]) == 0  # finished cards are reused
    assert (out / "cards" / "pgd_at_s0_last.json").stat().st_mtime_ns == stamp
    record = json.loads((out / "study.json").read_text())
    assert len(record["invocations"]) == 3
    assert set(record["configs"]) == {"standard_s0", "pgd_at_s0"}
    assert record["configs"]["pgd_at_s0"]["train_subset"] == 60
    # with its checkpoints gone, a card of another setup is still never reused for this one
    shutil.rmtree(runs / "pgd_at_s0")
    alone = [a if a != "standard" else "pgd_at" for a in common]  # pgd_at only
    later = [*train[:5], "3", *train[6:]]  # --epochs 3
    assert study.main(["eval", *alone, *later, *evaluate]) == 2
    err = capsys.readouterr().err
    assert "pgd_at_s0_best.json holds a run of another setup (epochs 2 -> 3)" in err
    assert len(json.loads((out / "study.json").read_text())["invocations"]) == 3  # not recorded
    assert study.main(["eval", *alone, *train, *evaluate]) == 0  # its own setup: reused
    assert (out / "cards" / "pgd_at_s0_last.json").stat().st_mtime_ns == stamp
    assert study.main(["report", "--out", str(out)]) == 0
    text = (out / "results.md").read_text()
    last = json.loads((out / "cards" / "pgd_at_s0_last.json").read_text())
    row = next(ln for ln in text.splitlines() if ln.startswith("| pgd_at | 1 |"))
    assert row.startswith("| pgd_at | 1 | 2 |")  # last.pt is epoch 2 of 2 (cards count from 1)
    run_row = next(ln for ln in text.splitlines() if ln.startswith("| pgd_at | 0 | last |"))
    assert run_row.startswith("| pgd_at | 0 | last | 2 |")
    assert f"| {100 * last['accuracy']['clean']:.2f} |" in row
    assert f"| {100 * last['robust_gap']['gap']:.2f} |" in row
    assert (out / "learning_curves.png").stat().st_size > 0
    import cifar10_report as report

    cards = report.load(out)
    for key in ("clean", "pgd10", "cw", "gap"):  # a method against itself: exactly 0
        d = report.paired(cards, "pgd_at", "pgd_at", key)
        assert d is not None and d["value"] == 0 and d["ci"] == [0, 0]
    # against another model: the mean of the per-image differences, from the cards alone
    std = json.loads((out / "cards" / "standard_s0_last.json").read_text())
    d = report.paired(cards, "pgd_at", "standard", "gap")
    expected = last["robust_gap"]["gap"] - std["robust_gap"]["gap"]
    assert d is not None and d["value"] == pytest.approx(100 * expected, abs=1e-4)
    assert report.paired(cards, "pgd_at", "standard", "aa") is None  # AutoAttack not run


def test_run_phase_trains_and_evaluates_each_run_in_two_processes_shares(
    cifar_root, tmp_path, capsys
):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = [
        "run", "--seeds", "0", "--variants", "standard", "pgd_at", "--out", str(out), "--runs",
        str(runs), "--data-root", str(cifar_root), "--n-train", "60", "--val-size", "20",
        "--epochs", "1", "--milestones", "--width", "4", "--train-steps", "1",
        "--batch-size", "20", "--n-test", "20", "--gap-train-images", "10", "--aa-on",
    ]  # fmt: skip
    assert study.main([*argv, "--worker", "0/2"]) == 0
    first = sorted(p.name for p in (out / "cards").glob("*_s0_*.json"))
    assert len(first) == 4  # one run: its two cards and their meta files
    assert study.main([*argv, "--worker", "1/2"]) == 0
    cards = sorted(p.name for p in (out / "cards").glob("*_s0_*[tl].json"))
    assert cards == [f"{n}_s0_{w}.json" for n in ("pgd_at", "standard") for w in ("best", "last")]
    record = json.loads((out / "study.json").read_text())
    assert [i["argv"][1] for i in record["invocations"]] == ["run", "run"]
    assert record["eval_config"]["n_test"] == 20 and set(record["configs"]) == {
        "standard_s0",
        "pgd_at_s0",
    }
    # a stale run of another setup is refused in one line that names the fix
    bad = [a if a != "60" else "80" for a in argv]
    assert study.main([*bad, "--worker", "0/1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train_subset 60 -> 80" in err[0] and "--runs" in err[0]

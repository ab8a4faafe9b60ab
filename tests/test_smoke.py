"""The first five minutes: the smoke preset, its plain-words summary, and `smoke-compare`."""

import copy
import json

import pytest

from dhat.analysis.smoke import comparison_configs, run_comparison, smoke_summary
from dhat.config import PRESETS, build_train_config
from dhat.config.presets import COMPARISONS
from dhat.errors import UserError
from dhat.methods import list_methods

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = (
    "validation, epoch 5",
    "like training",
    "random background",
    "object alone",
    "background alone",
    "BG-gap",
    "attention on the object",
    "PGD-10, like training",
    "PGD-10, random background",
    "robust gap",
)


def cell(v, lo=None, hi=None):
    return {"value": v, "ci": [v if lo is None else lo, v if hi is None else hi]}


def hand_card(dataset="toy_scenes", background=True):
    acc = {"test": 0.886, "mixed_same": 0.912, "mixed_rand": 0.624, "only_fg": 0.722}
    acc["only_bg"] = 0.446
    card = {
        "model": "small_cnn",
        "method": "dhat",
        "dataset": dataset,
        "n_test": 1000,
        "num_classes": 10,
        "eps_255": 8.0,
        "epoch": 5,  # counts from 1, as log.jsonl does
        "checkpoint": "runs/smoke/best.pt",
        "weights": "model",
        "accuracy": {"clean": 0.886, "pgd10": 0.700},
        "robust_gap": {
            "attack": "pgd10",
            "train": 0.707,
            "test": 0.700,
            "gap": 0.007,
            "n_train": 1000,
            "ci": [-0.040, 0.059],
        },
    }
    if background:
        card["background"] = {
            "n": 1000,
            "accuracy": {k: {"clean": cell(v), "pgd10": cell(v / 2)} for k, v in acc.items()},
            "bg_gap": {"clean": cell(0.288, 0.246, 0.330), "pgd10": cell(0.312)},
            "attention": {
                "mixed_rand": {
                    "natural": {
                        "object_share": cell(0.384),
                        "object_share_null": cell(0.221),
                        "object_share_minus_null": cell(0.163),
                    }
                }
            },
        }
    return card


LOG = [
    {"epoch": e, "val_clean_acc": v, "val_robust_acc": v / 2}
    for e, v in enumerate([0.4, 0.5, 0.6, 0.7, 0.88], 1)
]


def rows_of(text):
    """{label: the rest of its line} for the summary's labelled lines (before "Next:")."""
    body = text.split("\nNext:")[0].splitlines()[1:]
    out = {}
    for line in body:
        label, _, rest = line.strip().partition("  ")
        out[label] = rest.strip()
    return out


def test_summary_has_every_labelled_line_with_its_numbers_and_what_it_measures():
    text = smoke_summary(hand_card(), LOG)
    rows = rows_of(text)
    assert list(rows) == list(LABELS)
    for label, rest in rows.items():
        value, _, clause = rest.partition("  ")
        assert len(clause.strip().split()) >= 4, (label, rest)  # a clause saying what it is
    assert rows["validation, epoch 5"].startswith("88.0 %")  # the log row of the checkpoint
    assert "(under PGD: 44.0 %)" in rows["validation, epoch 5"]
    assert rows["like training"].startswith("88.6 %")
    assert rows["random background"].startswith("62.4 %") and "(mixed_rand)" in text
    assert rows["object alone"].startswith("72.2 %") and "(only_fg)" in text
    assert rows["BG-gap"].startswith("+28.8 pts [+24.6, +33.0]")
    assert "leans on" in rows["BG-gap"]
    assert rows["attention on the object"].startswith("0.38 (null 0.22)")
    assert rows["PGD-10, like training"].startswith("70.0 %")
    assert rows["PGD-10, random background"].startswith("31.2 %")  # 0.624 / 2
    gap = rows["robust gap"]
    assert gap.startswith("+0.7 pts [-4.0, +5.9]")
    assert "(70.7 %)" in gap and "drawn like them (70.0 %)" in gap
    assert "chance 10 %" in text.splitlines()[0]
    nxt = text.split("\nNext:\n")[1]
    assert "dhat eval runs/smoke/best.pt  " in nxt
    assert "dhat attention runs/smoke/best.pt --overlay runs/smoke/attention.png" in nxt
    assert "dhat train --preset smoke-compare" in nxt


def test_no_robust_gap_against_a_shifted_test_split():
    text = smoke_summary(hand_card(dataset="shapes"), LOG)
    rows = rows_of(text)
    assert "robust gap" not in rows and "like training" not in rows
    assert "PGD-10, like training" not in rows
    assert rows["shifted test"].startswith("88.6 %")
    assert rows["train − shifted test"].startswith("+0.7 pts")
    assert "NOT a robust gap" in rows["train − shifted test"]
    for line in text.lower().splitlines():  # "robust gap" only ever as a denial
        assert "robust gap" not in line or "not a robust gap" in line, line
    assert "smoke-compare" not in text  # offered after a toy_scenes run only


def test_summary_without_background_measures():
    text = smoke_summary(hand_card(dataset="cifar10", background=False), [])
    rows = rows_of(text)
    assert list(rows) == ["like training", "PGD-10, like training", "robust gap"]
    assert "per split" not in text and "dhat attention" not in text
    assert "dhat eval runs/smoke/best.pt" in text


def test_presets():
    cfg = build_train_config(preset="smoke")
    assert (cfg.dataset, cfg.method, cfg.model) == ("toy_scenes", "dhat", "small_cnn")
    assert "smoke-compare" not in PRESETS  # a comparison is not one run
    spec = COMPARISONS["smoke-compare"]
    assert spec["preset"] in PRESETS and set(spec["methods"]) <= set(list_methods())
    cfgs = comparison_configs("smoke-compare", {"out_dir": "x", "epochs": 2})
    assert [c.method for c in cfgs] == ["pgd_at", "uiat", "dhat"]
    assert [c.out_dir for c in cfgs] == ["x/pgd_at", "x/uiat", "x/dhat"]
    assert all(c.epochs == 2 and c.dataset == "toy_scenes" for c in cfgs)
    for flags, needle in (
        ({"method": "trades"}, "--method"),
        ({"method_args": {"beta": 1}}, "method options"),
    ):
        with pytest.raises(UserError, match=needle) as e:
            comparison_configs("smoke-compare", flags)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="smoke-compare"):
        comparison_configs("smoke-compar")


def test_smoke_compare_at_a_tiny_size_writes_three_cards_a_table_and_a_png(tmp_path):
    flags = dict(
        out_dir=str(tmp_path / "cmp"),
        dataset_args={"n_train": 260, "n_test": 40},
        val_size=60,
        epochs=1,
        milestones=[],
        steps=1,
        val_steps=1,
        threads=1,
        progress=False,
    )
    lines = []
    out = run_comparison("smoke-compare", flags, progress=False, log=lines.append)
    cards = [json.loads(p.read_text()) for p in out["cards"]]
    assert [c["method"] for c in cards] == ["pgd_at", "uiat", "dhat"]
    assert [p.parent.name for p in out["cards"]] == ["pgd_at", "uiat", "dhat"]
    assert all(c["dataset"] == "toy_scenes" and c["n_test"] == 40 for c in cards)
    assert all(c["background"]["n"] == 40 and "bg_gap" in c["background"] for c in cards)
    md = out["table"].read_text()
    assert md == out["markdown"] and out["table"] == tmp_path / "cmp" / "report.md"
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table[1:]] == ["pgd_at", "uiat", "dhat"]
    for head in (
        "Clean",
        "PGD-10",
        "Robust Gap",
        "mixed_rand",
        "only_fg",
        "BG-gap",
        "object share",
    ):
        assert head in table[0]
    assert out["png"].read_bytes()[:8] == PNG_SIGNATURE
    assert len(lines) == 6 and lines[0].startswith("[1/3] pgd_at")
    # a real card's summary has every labelled line (the log is the run's)
    from dhat.rundir import read_log

    card = cards[2]
    log = read_log(out["cards"][2].parent / "log.jsonl")
    rows = rows_of(smoke_summary(copy.deepcopy(card), log))
    assert list(rows) == [LABELS[0].replace("5", "1"), *LABELS[1:]]


def test_the_cli_smoke_run_ends_on_the_plain_words_summary(tmp_path, capsys):
    from dhat.cli import main

    tiny = ["--dataset-arg", "n_train=260", "--dataset-arg", "n_test=40", "--val-size", "60"]
    tiny += ["--epochs", "1", "--steps", "1", "--val-steps", "1", "--threads", "1"]
    argv = ["train", "--preset", "smoke", "--out-dir", str(tmp_path / "s"), *tiny]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    for label in ("like training", "random background", "object alone", "BG-gap", "PGD-10"):
        assert label in out, label
    assert "result card (every number)" in out and "dhat eval" in out
    cmp = ["train", "--preset", "smoke-compare", "--out-dir", str(tmp_path / "c"), "--resume"]
    assert main(cmp) == 2
    assert "trains and evaluates several runs" in capsys.readouterr().err

"""`dhat eval` result cards (with curves and sanity checks) and `dhat report` tables."""

import json

import pytest
import torch

import dhat
from dhat.analysis.report import load_cards, markdown_table
from dhat.checkpoint import save_checkpoint
from dhat.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def card(method, clean, pgd10, cw, aa=None, gap=None, n_aa=200, **extra):
    """A valid result card (validate_card accepts it), as `dhat eval` writes them."""
    from dhat.eval.evaluate import attack_settings

    acc = {"clean": clean, "pgd10": pgd10, "cw": cw}
    c = {
        "schema": "dhat-result-v1",
        "method": method,
        "model": "resnet18",
        "dataset": "cifar10",
        "eps_255": 8.0,
        "n_test": 1000,
        "accuracy": acc,
        "sanity": [],
        "sanity_failed": [],
        "unreliable": False,
        **extra,
    }
    if aa is not None:
        acc["aa"] = aa
        c["n_aa"] = n_aa
        c["autoattack"] = {
            "package": "pyautoattack",
            "version": "standard",
            "n": n_aa,
            "robust_accuracy": aa,
        }
    if gap is not None:
        c["robust_gap"] = {"gap": gap, "train": pgd10 + gap, "test": pgd10, "n_train": 500}
    c["attack_settings"] = attack_settings(list(acc), 8 / 255, 2 / 255)
    c["eval_config"] = {"attacks": list(acc)}
    return c


def test_report_renders_two_cards(tmp_path, capsys):
    d1, d2 = tmp_path / "runs" / "dhat_s0", tmp_path / "runs" / "pgd_at_s0"
    d1.mkdir(parents=True)
    d2.mkdir(parents=True)
    (d1 / "eval_best.json").write_text(
        json.dumps(
            card(
                "dhat",
                0.8412,
                0.5531,
                0.5012,
                aa=0.4887,
                gap=0.1234,
                checkpoint=str(d1 / "best.pt"),
            )
        )
    )
    (d2 / "eval_best.json").write_text(
        json.dumps(card("pgd_at", 0.8201, 0.5105, 0.4923, checkpoint=str(d2 / "best.pt")))
    )
    out = tmp_path / "table.md"
    assert main(["report", str(d1), str(d2 / "eval_best.json"), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[:4] == [  # each column says how many images its numbers come from
        "| Method | Clean (n=1000) | PGD-10 (n=1000) | CW (n=1000) | AA (n=200) | "
        "Robust Gap (n=500) |",
        "|---|---:|---:|---:|---:|---:|",
        "| dhat (dhat_s0) | 84.12 | 55.31 | 50.12 | 48.87 | 12.34 |",
        "| pgd_at (pgd_at_s0) | 82.01 | 51.05 | 49.23 | – | – |",
    ]
    assert lines[4] == "" and "8/255" in out.read_text()
    capsys.readouterr()
    # stdout, bold best, custom columns and labels
    assert (
        main(
            [
                "report",
                str(d1),
                str(d2),
                "--bold-best",
                "--no-notes",
                "--columns",
                "clean,cw",
                "--labels",
                "DHAT",
                "PGD-AT",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines() == [
        "| Method | Clean (n=1000) | CW (n=1000) |",
        "|---|---:|---:|",
        "| DHAT | **84.12** | **50.12** |",
        "| PGD-AT | 82.01 | 49.23 |",
    ]
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_failed_sanity_marks_the_row():
    c = card(
        "uiat",
        0.8,
        0.7,
        0.6,
        sanity_failed=["large_eps"],
        unreliable=True,
        sanity=[{"check": "large_eps", "status": "warn"}],
    )
    text = markdown_table([("uiat (r)", c)], ["clean"])
    assert "| uiat (r) † | 80.00 |" in text and "large_eps" in text


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    x = torch.rand(8, 3, 32, 32)
    model = dhat.create_model("small_cnn", num_classes=4, width=4, mean=(0.5,) * 3, std=(0.25,) * 3)
    model(x)  # one train-mode pass: non-trivial BN statistics
    spec = {
        "name": "small_cnn",
        "num_classes": 4,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "kwargs": {"width": 4},
    }
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "model_spec": spec,
            "epoch": 1,
            "method": "pgd_at",
            "config": {"dataset": "blobs", "eps": 8 / 255, "val_size": 20, "seed": seed},
        },
    )


@pytest.mark.slow
def test_eval_card_curves_and_report_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = [tmp_path / f"run{i}" for i in range(2)]
    for i, r in enumerate(runs):
        _checkpoint(r / "best.pt", i)
        args = [
            "eval",
            str(r / "best.pt"),
            "--attacks",
            "clean",
            "pgd10",
            "pgd50",
            "cw",
            "--n-test",
            "16",
            "--gap-train-images",
            "16",
            "--sanity-n",
            "16",
            "--no-progress",
        ]
        if i == 0:
            args += ["--curves", "--curves-n", "8"]
        assert main(args) == 0
    out = capsys.readouterr().out
    assert "sanity" in out and "result written to" in out and "curves plotted to" in out
    c = json.loads((runs[0] / "eval_best_clean-pgd10-pgd50-cw_curves.json").read_text())
    for key in (
        "schema",
        "dataset",
        "threat_model",
        "eps",
        "n_test",
        "accuracy",
        "robust_gap",
        "model",
        "method",
        "config_hash",
        "dhat",
        "torch",
        "hardware",
        "date",
        "attack_settings",
        "checkpoint_sha256",
        "sanity",
        "unreliable",
        "eval_config",
    ):
        assert key in c, key
    assert c["threat_model"] == "Linf" and c["dataset"] == "blobs" and c["n_test"] == 16
    assert set(c["curves"]) >= {"n", "clean", "eps", "steps", "png"}
    assert c["curves"]["eps"]["eps_255"] == [0, 2, 4, 6, 8, 10, 12, 16]
    assert (runs[0] / "eval_best_clean-pgd10-pgd50-cw_curves.png").stat().st_size > 0
    assert [s["check"] for s in c["sanity"]] == [
        "train_mode",
        "deterministic",
        "probabilities",
        "zero_gradients",
        "large_eps",
        "more_steps",
        "aa_vs_pgd",
        "aa_flags",
        "curves",
    ]
    assert c["sanity"][5]["details"]["n"] == 16  # PGD-10/50 of the evaluation were reused
    plot = tmp_path / "cmp.png"
    assert main(["report", str(runs[0]), str(runs[1]), "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 0
    rows = [label for label, _ in load_cards(runs)]
    assert rows == ["pgd_at (run0)", "pgd_at (run1)"]
    plot2 = tmp_path / "bars.png"  # no curves in run1: bars of the table
    assert main(["report", str(runs[1]), "--plot", str(plot2)]) == 0 and plot2.stat().st_size > 0


def test_cards_that_contradict_themselves_cannot_be_written_or_read(tmp_path):
    from dhat.eval.card import CardError, read_card, save_card, validate_card

    good = card("dhat", 0.5, 0.3, 0.25, aa=0.2, gap=0.05)
    validate_card(good)
    broken = {
        "AA without its image count": {**good, "n_aa": None},
        "AA not requested": {**good, "eval_config": {"attacks": ["clean", "pgd10", "cw"]}},
        "AA without settings": {
            **good,
            "attack_settings": {k: v for k, v in good["attack_settings"].items() if k != "aa"},
        },
        "AA record disagrees": {**good, "autoattack": {**good["autoattack"], "n": 1000}},
        "AA sanity skipped": {
            **good,
            "sanity": [
                {"check": "aa_vs_pgd", "status": "skipped"},
                {"check": "aa_flags", "status": "ok"},
            ],
        },
        "unreliable hides a failure": {
            **good,
            "sanity": [{"check": "large_eps", "status": "warn"}],
            "sanity_failed": ["large_eps"],
            "unreliable": False,
        },
        "gap arithmetic": {**good, "robust_gap": {**good["robust_gap"], "gap": 0.5}},
    }
    for why, c in broken.items():
        with pytest.raises(CardError):
            validate_card(c)
        with pytest.raises(CardError):
            save_card(c, tmp_path / "c.json")
        assert not (tmp_path / "c.json").exists(), why
        (tmp_path / "bad.json").write_text(json.dumps(c))
        with pytest.raises(CardError):
            read_card(tmp_path / "bad.json")
    assert save_card(good, tmp_path / "c.json") == tmp_path / "c.json"
    assert read_card(tmp_path / "c.json")["accuracy"] == good["accuracy"]


def test_two_evaluations_with_other_attacks_keep_both_cards(tmp_path):
    from dhat.config import EvalConfig
    from dhat.eval.evaluate import checkpoint_cards, default_card_path

    ck = tmp_path / "run" / "best.pt"
    _checkpoint(ck, 0)
    base = ["eval", str(ck), "--n-test", "8", "--gap-train-images", "0", "--no-sanity"]
    assert main([*base, "--attacks", "clean", "pgd10", "--no-progress"]) == 0
    assert main([*base, "--attacks", "clean", "cw", "--no-progress"]) == 0
    a, b = ck.parent / "eval_best_clean-pgd10.json", ck.parent / "eval_best_clean-cw.json"
    assert set(json.loads(a.read_text())["accuracy"]) == {"clean", "pgd10"}
    assert set(json.loads(b.read_text())["accuracy"]) == {"clean", "cw"}
    assert set(checkpoint_cards(ck)) == {a, b}
    # the default attack set keeps the plain name; ε, weights and curves are named too
    assert default_card_path(EvalConfig(checkpoint=str(ck)), str(ck)).name == "eval_best.json"
    cfg = EvalConfig(checkpoint=str(ck), weights="ema", eps=4 / 255, curves=True)
    assert default_card_path(cfg, str(ck)).name == "eval_best_ema_eps4_curves.json"


def _interval_cards(tmp_path):
    """Two cards with exact fractions (k/n), a stored robust-gap interval and background
    measures with their stored intervals."""
    bg = {
        "n": 400,
        "n_boot": 1000,
        "accuracy": {},
        "bg_gap": {
            "clean": {"value": 0.125, "ci": [0.09, 0.16]},
            "pgd10": {"value": 0.05, "ci": [0.01, 0.08]},
        },
        "attention": {
            "mixed_rand": {
                "natural": {
                    "object_share": {"value": 0.4, "ci": [0.38, 0.42]},
                    "fg_iou": {"value": 0.3, "ci": [0.28, 0.33]},
                }
            }
        },
    }
    a = card("dhat", 0.841, 0.553, 0.501, aa=0.49, gap=0.12, checkpoint=str(tmp_path / "a/best.pt"))
    a["robust_gap"]["ci"] = [0.08, 0.16]
    a["background"] = bg
    b = card("pgd_at", 0.82, 0.511, 0.492, checkpoint=str(tmp_path / "b_run/best.pt"))
    paths = []
    for name, c in (("a", a), ("b_run", b)):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "eval_best.json")
        paths[-1].write_text(json.dumps(c))
    return paths


def test_report_intervals_in_markdown_csv_and_latex(tmp_path, capsys):
    import csv
    import io

    from scipy.stats import binomtest

    def wilson(p, n):  # scipy's Wilson score interval, in %
        ci = binomtest(round(p * n), n).proportion_ci(0.95, method="wilson")
        return 100 * ci.low, 100 * ci.high

    a, b = _interval_cards(tmp_path)
    cols = "clean,pgd10,aa,gap,bg_gap,share,fg_iou"
    assert main(["report", str(a), str(b), "--columns", cols, "--no-notes"]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert plain[2] == "| dhat (a) | 84.10 | 55.30 | 49.00 | 12.00 | 12.50 | 0.400 | 0.300 |"

    assert main(["report", str(a), str(b), "--columns", cols, "--intervals"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == plain[0]  # the same header: the counts are not repeated
    lo, hi = wilson(0.841, 1000)
    alo, ahi = wilson(0.49, 200)
    assert lines[2] == (
        f"| dhat (a) | 84.10 [{lo:.2f}, {hi:.2f}] | 55.30 [{wilson(0.553, 1000)[0]:.2f}, "
        f"{wilson(0.553, 1000)[1]:.2f}] | 49.00 [{alo:.2f}, {ahi:.2f}] | 12.00 [8.00, 16.00] | "
        "12.50 [9.00, 16.00] | 0.400 [0.380, 0.420] | 0.300 [0.280, 0.330] |"
    )
    assert lines[3].startswith("| pgd_at (b_run) | 82.00 [") and lines[3].endswith("| – | – | – |")
    assert any(line.startswith("[lo, hi]: 95 % interval (Wilson") for line in lines)

    out = tmp_path / "table.csv"
    args = ["report", str(a), str(b), "--columns", cols]
    assert main([*args, "--format", "csv", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"table written to {out}\n"
    got = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["method"] for r in got] == ["dhat (a)", "pgd_at (b_run)"]
    r = got[0]
    assert float(r["clean"]) == pytest.approx(84.1) and r["clean_n"] == "1000"
    assert (float(r["clean_lo"]), float(r["clean_hi"])) == pytest.approx(wilson(0.841, 1000))
    assert (float(r["aa_lo"]), float(r["aa_hi"])) == pytest.approx((alo, ahi))
    assert r["aa_n"] == "200" and r["gap_n"] == "500" and r["bg_gap_n"] == "400"
    assert (float(r["gap_lo"]), float(r["gap_hi"])) == pytest.approx((8, 16))
    assert (float(r["fg_iou_lo"]), float(r["fg_iou_hi"])) == pytest.approx((0.28, 0.33))
    assert got[1]["aa"] == got[1]["aa_lo"] == got[1]["aa_n"] == "" and got[1]["sanity_failed"] == ""

    assert main([*args, "--format", "latex", "--intervals", "--bold-best"]) == 0
    tex = capsys.readouterr().out.splitlines()
    assert tex[:2] == ["\\begin{tabular}{lrrrrrrr}", "\\toprule"]
    assert tex[2].startswith("Method & Clean ($n$=1000) & PGD-10 ($n$=1000) & AA ($n$=200) & ")
    assert tex[4].startswith(
        f"dhat (a) & \\textbf{{84.10}} {{\\scriptsize [{lo:.2f}, {hi:.2f}]}} & \\textbf{{55.30}}"
    )
    assert tex[5].startswith("pgd\\_at (b\\_run) & 82.00 ") and tex[5].endswith(" & -- & -- \\\\")
    assert tex[6:8] == ["\\bottomrule", "\\end{tabular}"] and tex[8].startswith("% Accuracy")
    # a wrong suffix for the format, and --reference (Markdown only), are one line each
    assert main([*args, "--format", "csv", "--out", str(tmp_path / "t.md")]) == 2
    assert main([*args, "--format", "latex", "--reference", "dhat (a)"]) == 2
    assert "--format md" in capsys.readouterr().err


def test_latex_escape():
    from dhat.analysis.report import latex_escape

    assert latex_escape("a_b & 50% #1 share − null (x̌) †") == (
        "a\\_b \\& 50\\% \\#1 share $-$ null ($\\check{x}$) $^\\dagger$"
    )


def test_scene_map_interval_is_a_bootstrap_of_its_records(tmp_path):
    """scene_map (a difference the card stores no interval for) gets the bootstrap interval of
    its per-image differences, with the card's n_boot and seed; no records: no interval."""
    import numpy as np

    from dhat.analysis.report import interval, value
    from dhat.eval.background import bootstrap_indices
    from dhat.eval.card import read_card
    from dhat.eval.records import write_records

    rng = np.random.default_rng(0)
    share, null = rng.uniform(0, 1, 60), rng.uniform(0, 0.5, 60)
    nat = "att|mixed_rand|natural"
    rec = tmp_path / "eval_best.records.npz"
    sha = write_records(rec, {f"{nat}|scene_bg_share": share, f"{nat}|scene_bg_share_null": null})
    c = card("dhat", 0.5, 0.25, 0.25, seed=3)
    m = {"value": float(share.astype(np.float32).mean()), "ci": [0, 1]}
    m0 = {"value": float(null.astype(np.float32).mean()), "ci": [0, 1]}
    c["background"] = {
        "n": 60,
        "n_boot": 500,
        "accuracy": {},
        "attention": {"mixed_rand": {"natural": {"scene_bg_share": m, "scene_bg_share_null": m0}}},
    }
    (tmp_path / "eval_best.json").write_text(json.dumps(c))
    assert interval(read_card(tmp_path / "eval_best.json"), "scene_map") is None  # no records
    c["records"] = {"file": rec.name, "sha256": sha, "names": []}
    (tmp_path / "eval_best.json").write_text(json.dumps(c))
    got = read_card(tmp_path / "eval_best.json")
    diff = share.astype(np.float32).astype(np.float64) - null.astype(np.float32)
    idx = bootstrap_indices(60, 500, 3).numpy()
    want = np.quantile(diff[idx].mean(1), [0.025, 0.975])
    lo, hi = interval(got, "scene_map")
    assert (lo, hi) == pytest.approx(tuple(want), abs=1e-9)
    assert lo < value(got, "scene_map") < hi


def _curves(n, acc):
    return {
        "n": n,
        "clean": acc,
        "eps": {"eps_255": [0, 8], "pgd20": [acc, acc / 2], "cw": [acc, acc / 3]},
        "steps": {"steps": [1, 10], "pgd": [acc / 2, acc / 3], "eps_255": 8.0},
    }


def test_curves_state_their_image_count(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import dhat.eval.curves as curves

    figs = []
    make = curves.figure
    monkeypatch.setattr(curves, "figure", lambda *a, **k: figs.append(make(*a, **k)) or figs[-1])
    curves.plot_curves([("a", _curves(50, 0.8)), ("b", _curves(50, 0.6))], tmp_path / "same.png")
    titles = [ax.get_title() for ax in figs[-1].axes]
    assert titles == [
        "accuracy under attack vs budget (n=50 images)",
        "accuracy vs PGD steps (n=50 images)",
    ]
    curves.plot_curves([("a", _curves(50, 0.8)), ("b", _curves(100, 0.6))], tmp_path / "mix.png")
    ax_e = figs[-1].axes[0]
    assert "n=" not in ax_e.get_title()
    legend = [t.get_text() for t in ax_e.get_legend().get_texts()]
    assert legend == ["a, n=50 PGD-20", "a, n=50 CW", "b, n=100 PGD-20", "b, n=100 CW"]
    # the report's notes say how many images each card's curves used
    a = card("dhat", 0.5, 0.25, 0.25, curves=_curves(50, 0.5))
    text = markdown_table([("dhat (r)", a), ("pgd_at (r)", card("pgd_at", 0.5, 0.2, 0.2))])
    assert "Robustness curves (--plot): dhat (r) on n=50 images." in text.splitlines()

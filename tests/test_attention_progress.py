"""`dhat attention` shows a progress bar per split, and none with --no-progress."""

from conftest import make_checkpoint

from dhat.cli import main


def test_attention_progress_bars_and_no_progress(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    base = ["attention", str(ckpt), "--n", "8", "--batch-size", "4", "--device", "cpu"]
    assert main(base) == 0
    assert "attention test" in capsys.readouterr().err
    assert main([*base, "--no-progress", "--out", str(tmp_path / "quiet.json")]) == 0
    captured = capsys.readouterr()
    assert "attention test" not in captured.err and "attention IoU" in captured.out

"""Epochs a user reads count from 1, as log.jsonl does: the result card's and the export
sidecar's "epoch" (a checkpoint keeps its 0-based epoch, which resume relies on; the trainer's
rule log epoch = checkpoint epoch + 1 is tested in test_rundir.py)."""

import json

import torch
from conftest import make_checkpoint

from dhat.checkpoint import read_checkpoint, save_checkpoint
from dhat.config import EvalConfig
from dhat.eval.evaluate import load_for_eval
from dhat.export import export_checkpoint


def test_card_and_export_show_the_log_epoch(tmp_path):
    ck = make_checkpoint(tmp_path / "run" / "best.pt")
    state = read_checkpoint(ck)
    state["epoch"] = 4  # the fifth epoch: log.jsonl's line {"epoch": 5, ...}
    save_checkpoint(ck, state)
    _, info = load_for_eval(EvalConfig(checkpoint=str(ck)), torch.device("cpu"))
    assert info["epoch"] == 5
    assert read_checkpoint(ck)["epoch"] == 4  # the checkpoint itself is unchanged
    out, side = export_checkpoint(ck, tmp_path / "m.safetensors")
    assert json.loads(side.read_text())["epoch"] == 5
    _, info = load_for_eval(EvalConfig(weights_file=str(out)), torch.device("cpu"))
    assert info["epoch"] == 5  # a card of the exported weights says the same

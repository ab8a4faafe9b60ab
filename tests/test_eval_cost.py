"""The duration estimate said before a long evaluation (`dhat.eval.cost`): its passes per part,
and that measuring it leaves the model as it was (train/eval mode, `requires_grad`)."""

import types

import pytest
import torch

import dhat
from dhat.config import EvalConfig
from dhat.data import DataBundle
from dhat.eval import cost

pytestmark = pytest.mark.usefixtures("one_thread")


def bundle(n: int) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 4, (n,), generator=g)
    return DataBundle("toy", x, y, x, y, 4, (0.5,) * 3, (0.25,) * 3)


def mixed_mode_model() -> torch.nn.Module:
    """A model in train mode with one child in eval mode and one frozen parameter."""
    torch.manual_seed(0)
    model = dhat.create_model("small_cnn", num_classes=4, width=4).train()
    next(iter(model.children())).eval()
    next(iter(model.parameters())).requires_grad_(False)
    return model


def flags(model: torch.nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def test_estimate_restores_the_models_mode_and_grad_flags():
    model = mixed_mode_model()
    before = flags(model)
    assert any(before[0]) and not all(before[0])  # really mixed
    cfg = EvalConfig(
        attacks=["clean", "pgd10"], n_test=8, batch_size=8, gap_train_images=4, curves=True
    )
    assert cost.estimate_seconds(model, bundle(8), cfg, "cpu", eps=8 / 255) > 0
    assert flags(model) == before


def test_estimate_with_autoattack_restores_the_models_mode():
    pytest.importorskip("pyautoattack")
    model = mixed_mode_model()
    before = flags(model)
    cfg = EvalConfig(attacks=["clean", "aa"], n_test=4, batch_size=4, gap_train_images=0)
    assert cost.estimate_seconds(model, bundle(4), cfg, "cpu", eps=8 / 255) > 0
    assert flags(model) == before


def test_estimate_counts_the_passes_of_each_part(monkeypatch):
    """With one second per image, the estimate is the pass count: clean 1 and PGD-10 11 per
    test image, GAP_PASSES per training image, CURVE_PASSES per curves image."""
    ticks = iter([0.0, 8.0])  # the timed batch of 8 images takes 8 s
    monkeypatch.setattr(cost, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    cfg = EvalConfig(
        attacks=["clean", "pgd10"],
        n_test=8,
        batch_size=8,
        gap_train_images=5,
        curves=True,
        curves_n=3,
    )
    est = cost.estimate_seconds(mixed_mode_model(), bundle(8), cfg, "cpu")
    assert cost.CURVE_PASSES == 14 * 21 + (1 + 5 + 10 + 20 + 50)
    assert est == 8 * (1 + 11) + 5 * cost.GAP_PASSES + 3 * cost.CURVE_PASSES


def test_the_duration_is_said_only_for_a_long_evaluation(monkeypatch):
    said: list[str] = []
    for seconds in (cost.SAY_ABOVE_SECONDS, 600.0):
        monkeypatch.setattr(cost, "estimate_seconds", lambda *a, s=seconds: s)
        cost.say_duration(None, bundle(1), EvalConfig(), "cpu", 8 / 255, said.append)
    assert said == [
        "estimated duration: about 10 min on this machine "
        "(from one timed batch; AutoAttack varies with robustness)"
    ]

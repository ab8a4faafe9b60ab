"""The AutoAttack adapter against the installed package called directly."""

import functools
import sys

import pytest
import torch

import dhat
from dhat.errors import UserError

aa_pkg = pytest.importorskip("pyautoattack")

from conftest import fit  # noqa: E402

from dhat.attacks import autoattack as adapter  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs10(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    centres = 0.5 + 0.3 * (
        torch.rand(10, 3, 1, 1, generator=torch.Generator().manual_seed(7)) * 2 - 1
    )
    return (centres[y] + 0.1 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def model10():
    torch.manual_seed(0)
    x, y = blobs10(400, 0)
    m = dhat.create_model("small_cnn", num_classes=10, width=4)
    return fit(m, x, y, epochs=15, batch_size=50).eval()


@pytest.mark.slow
def test_adapter_matches_direct_autoattack(model10):
    x, y = blobs10(16, 1)
    eps, seed, bs = 4 / 255, 3, 8
    res, flags = adapter.run_autoattack(
        model10,
        x,
        y,
        eps=eps,
        batch_size=bs,
        seed=seed,
        n=16,
        n_iter=10,
        n_queries=100,
        return_flags=True,
    )
    aa = aa_pkg.AutoAttack(model10, eps=eps, version="standard", seed=seed, device="cpu")
    adapter.reduce_budget(aa, n_iter=10, n_queries=100)
    x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=bs)
    direct = y_adv == y
    assert res["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert res["robust_accuracy"] == pytest.approx(direct.float().mean().item())
    assert torch.equal(flags, direct)
    assert (model10(x_adv).argmax(1) == y).float().mean().item() == pytest.approx(
        res["robust_accuracy"]
    )
    after = list(res["robust_accuracy_after"].values())
    assert after == sorted(after, reverse=True) and after[-1] == res["robust_accuracy"]
    assert res["clean_accuracy"] >= after[0] > after[-1] - 1e-9
    assert 0 < res["robust_accuracy"] < res["clean_accuracy"]  # the cascade did something
    assert res["n"] == 16 and res["n_target_classes"] == 9 and res["package"] == "pyautoattack"
    assert res["version"].startswith("standard (reduced")


def test_uint8_input_and_first_n(model10):
    x, y = blobs10(24, 2)
    u8 = (x * 255).round().to(torch.uint8)
    res = adapter.run_autoattack(
        model10, u8, y, eps=1 / 255, batch_size=32, n=5, n_iter=2, n_queries=5
    )
    assert res["n"] == 5 and set(res["robust_accuracy_after"]) == set(adapter.STANDARD_ATTACKS)


def test_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "autoattack", None)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    with pytest.raises(UserError, match="pip install --no-deps pyautoattack"):
        adapter.run_autoattack(torch.nn.Linear(3, 2), torch.zeros(1, 3), torch.zeros(1), eps=0.1)


class ZeroGrad(torch.nn.Module):
    """Gradients are exactly zero (the forward pass is the base model's)."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x * 0 + x.detach())


def test_evaluate_model_runs_aa_and_sanity_flags_masked_pgd(model10, monkeypatch):
    """PGD cannot move a zero-gradient model; AutoAttack's Square can: `aa_vs_pgd` fires."""
    from dhat.data import DataBundle
    from dhat.eval import evaluate_model

    monkeypatch.setattr(
        adapter,
        "run_autoattack",
        functools.partial(adapter.run_autoattack, n_iter=5, n_queries=200),
    )
    x, y = blobs10(16, 4)
    u8 = (x * 255).round().to(torch.uint8)
    data = DataBundle("b10", u8, y, u8, y, 10, (0.5,) * 3, (0.25,) * 3)
    with pytest.warns(UserWarning):
        out = evaluate_model(
            ZeroGrad(model10).eval(),
            data,
            attacks=["clean", "pgd10", "aa"],
            eps=32 / 255,
            step_size=8 / 255,
            batch_size=16,
            progress=False,
            sanity=True,
            sanity_n=16,
        )
    acc = out["accuracy"]
    assert (
        list(acc) == ["clean", "pgd10", "aa"] and acc["aa"] == out["autoattack"]["robust_accuracy"]
    )
    assert acc["pgd10"] - acc["aa"] > 0.3
    status = {c["check"]: c["status"] for c in out["sanity"]}
    assert status["aa_vs_pgd"] == "warn" and status["zero_gradients"] == "warn"
    assert status["aa_flags"] == "warn"  # AutoAttack's own zero-gradient check


def test_a_progress_bar_per_attack(model10, capsys):
    """A bar per sub-attack, counting the images it attacks (the cascade's survivors)."""
    x, y = blobs10(6, 5)
    kw = dict(eps=4 / 255, batch_size=4, n_iter=2, n_queries=5)
    res = adapter.run_autoattack(model10, x, y, progress=True, **kw)
    err = capsys.readouterr().err
    assert res["robust_accuracy"] > 0  # every attack had images to attack
    seen = [round(6 * res["clean_accuracy"])]
    seen += [round(6 * v) for v in list(res["robust_accuracy_after"].values())[:-1]]
    for attack, k in zip(adapter.STANDARD_ATTACKS, seen):
        assert f"autoattack {attack}:   0%|          | 0/{k} " in err
    adapter.run_autoattack(model10, x, y, progress=False, **kw)
    assert "autoattack" not in capsys.readouterr().err


@pytest.mark.slow
def test_duration_estimate_is_near_the_evaluation_and_restores_the_mode(model10):
    """The estimate (AutoAttack timed on one batch at a reduced budget, extrapolated) lies
    within 3x of the measured evaluation: the aim is 2x, the margin is for CPU noise on a
    shared machine. The model's train/eval mode is what it was before."""
    import time

    from dhat.config import EvalConfig
    from dhat.data import DataBundle
    from dhat.eval.evaluate import estimate_seconds, evaluate_model

    x, y = blobs10(12, 4)
    u8 = (x * 255).round().to(torch.uint8)
    data = DataBundle("b10", u8, y, u8, y, 10, (0.5,) * 3, (0.25,) * 3)
    eps = 4 / 255
    cfg = EvalConfig(
        attacks=["clean", "aa"], n_test=12, batch_size=12, gap_train_images=0, sanity=False
    )
    model10.train()
    list(model10.children())[0].eval()  # a mixed mode, restored module by module
    modes = [m.training for m in model10.modules()]
    est = estimate_seconds(model10, data, cfg, "cpu", eps=eps)
    assert [m.training for m in model10.modules()] == modes
    model10.eval()
    t = time.perf_counter()
    res = evaluate_model(
        model10,
        data,
        attacks=cfg.attacks,
        eps=eps,
        step_size=1 / 255,
        n_test=12,
        batch_size=12,
        background=False,
        progress=False,
    )
    real = time.perf_counter() - t
    assert 0 < res["accuracy"]["aa"] < res["accuracy"]["clean"]  # every sub-attack ran
    assert real / 3 <= est <= 3 * real, (est, real)

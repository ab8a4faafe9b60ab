"""Each sanity check fires on a model built to trigger it and stays quiet on a trained one."""

import pytest
import torch
from conftest import fit
from torch import nn

import dhat
from dhat.eval import sanity
from dhat.eval.curves import monotone_violations, robustness_curves

pytestmark = pytest.mark.usefixtures("one_thread")


def colours(n, seed, classes=4, size=16):
    """Class-dependent constant colours (close together, so a large ε can swap classes) + noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = 0.5 + 0.2 * (
        torch.rand(classes, 3, 1, 1, generator=torch.Generator().manual_seed(123)) * 2 - 1
    )
    return (centres[y] + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x, y = colours(256, 0)
    model = fit(
        dhat.create_model("small_cnn", num_classes=4, width=4), x, y, epochs=10, batch_size=32
    )
    xt, yt = colours(64, 5)
    return model.eval(), xt, yt


def statuses(model, x, y, **kw):
    res = sanity.run_sanity_checks(model, x, y, eps=8 / 255, n=len(y), warn=False, **kw)
    return {r["check"]: r["status"] for r in res}, res


def test_quiet_on_a_trained_model(trained):
    model, x, y = trained
    curves = robustness_curves(
        model, x[:32], y[:32], eps=8 / 255, eps_255=(2, 8, 16), steps=(1, 10, 50)
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", sanity.SanityWarning)  # none may be raised
        got, res = statuses(model, x, y, curves=curves)
    assert got == {
        "train_mode": "ok",
        "deterministic": "ok",
        "probabilities": "ok",
        "zero_gradients": "ok",
        "large_eps": "ok",
        "more_steps": "ok",
        "aa_vs_pgd": "skipped",
        "aa_flags": "skipped",
        "curves": "ok",
    }
    assert all(r["message"] and r["doc"].startswith("docs/sanity_checks.md#") for r in res)
    assert not model.training  # the checks leave the mode alone


def test_softmax_outputs_fire(trained):
    model, x, y = trained
    got, _ = statuses(nn.Sequential(model, nn.Softmax(dim=1)).eval(), x, y)
    assert got["probabilities"] == "warn"


class ZeroGrad(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(torch.round(x * 255) / 255)  # round: zero gradient almost everywhere


def test_zero_gradients_and_large_eps_fire(trained):
    model, x, y = trained
    got, res = statuses(ZeroGrad(model).eval(), x, y)
    assert got["zero_gradients"] == "warn" and got["large_eps"] == "warn"
    assert next(r for r in res if r["check"] == "zero_gradients")["details"]["n_zero"] == len(y)


@pytest.mark.filterwarnings("ignore::dhat.eval.sanity.SanityWarning")
def test_random_model_in_train_mode_fires():
    torch.manual_seed(0)
    model = dhat.create_model("small_cnn", num_classes=4, width=4)  # train mode, random weights
    x, y = colours(32, 1)
    with pytest.warns(sanity.SanityWarning, match="train_mode"):
        res = sanity.run_sanity_checks(model, x, y, eps=8 / 255, n=32)
    assert {r["check"]: r["status"] for r in res}["train_mode"] == "warn"
    assert model.training  # restored


class Noisy(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x) + 0.5 * torch.randn(len(x), 4)


def test_randomised_model_fires_deterministic(trained):
    model, x, y = trained
    got, _ = statuses(Noisy(model).eval(), x, y)
    assert got["deterministic"] == "warn"


class AttackAware(nn.Module):
    """A stateful 'defence': wrong after a short attack, right after a long one
    (PGD-50 > PGD-10)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, x):
        logits = torch.zeros(len(x), 4) + self.w * x.mean()
        logits[:, 0] += 5  # class 0 for every image
        if torch.is_grad_enabled() and x.requires_grad:
            self.calls += 1
            return logits
        calls, self.calls = self.calls, 0
        return logits if calls >= 30 else logits.roll(1, dims=1)


def test_more_steps_fires():
    x, _ = colours(32, 2)
    y = torch.zeros(32, dtype=torch.long)
    got, res = statuses(AttackAware().eval(), x, y)
    assert got["more_steps"] == "warn"
    d = next(r for r in res if r["check"] == "more_steps")["details"]
    assert d["pgd10"] == 0 and d["pgd50"] == 1


def test_result_checks_decision_rules():
    n = 200
    ones, zeros = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    half = torch.arange(n) < n // 2
    # more steps: a few images either way is noise; many more robust to PGD-50 is not
    noisy50 = half.clone()
    noisy50[n // 2 : n // 2 + 3] = True
    assert sanity.check_more_steps(half, noisy50)["status"] == "ok"
    assert sanity.check_more_steps(half, ones)["status"] == "warn"
    # AutoAttack vs PGD: far below fires, 3 points below is normal, above fires
    aa = half.clone()
    aa[:40] = False
    assert sanity.check_aa_vs_pgd({"pgd20": half, "cw": half}, aa)["status"] == "warn"
    aa = half.clone()
    aa[:6] = False
    assert sanity.check_aa_vs_pgd({"pgd20": half, "cw": half, "clean": ones}, aa)["status"] == "ok"
    assert sanity.check_aa_vs_pgd({"pgd20": zeros}, half)["status"] == "warn"
    assert sanity.check_aa_vs_pgd({"clean": ones}, half)["status"] == "skipped"
    assert sanity.check_aa_flags(["there are 3 points with zero gradient!"])["status"] == "warn"


def test_curves_keys_and_monotone(trained):
    model, x, y = trained
    c = robustness_curves(model, x[:32], y[:32], eps=8 / 255)
    assert c["eps"]["eps_255"] == [0, 2, 4, 6, 8, 10, 12, 16] and c["steps"]["steps"] == [
        1,
        5,
        10,
        20,
        50,
    ]
    for key in ("pgd20", "cw"):
        acc = c["eps"][key]
        assert len(acc) == 8 and acc[0] == c["clean"] and acc[-1] <= acc[0]
        assert all(b <= a + 0.1 for a, b in zip(acc, acc[1:]))
    assert len(c["steps"]["pgd"]) == 5 and c["steps"]["pgd"][-1] <= c["steps"]["pgd"][0] + 0.1
    assert monotone_violations(c) == []
    rising = {**c, "n": 100, "eps": {**c["eps"], "pgd20": [0.9, 0.5, 0.2, 0.6, 0.1, 0, 0, 0]}}
    assert monotone_violations(rising) and sanity.check_curves(rising)["status"] == "warn"

"""The attack registry: every entry swept on a tiny model; the card and `dhat report` ask it."""

import pytest
import torch

from dhat.attacks import registry
from dhat.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 32 / 255  # large enough to fool the tiny model on its training images
BUDGET = {"n_iter": 3, "n_queries": 20}  # AutoAttack reduced to seconds
NAMES = ["clean", "pgd3", "cw3", "apgd-ce", "apgd-t", "fab-t", "square", "aa"]


class Spy(torch.nn.Module):
    """The model, recording every image it is shown."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


@pytest.fixture(scope="module")
def problem(trained_tiny):
    """12 training images (all classified correctly), the first 4 given a wrong label."""
    model, x, y = trained_tiny
    x, y = x[:12], y[:12].clone()
    y[:4] = (y[:4] + 1) % 4
    return model, x, y


@pytest.mark.parametrize("name", NAMES)
def test_every_attack_stays_in_eps_never_helps_and_has_a_cost(problem, name):
    attack = registry.get_attack(name)
    if attack.family == "autoattack":
        pytest.importorskip("pyautoattack")
    model, x, y = problem
    spy, finals = Spy(model).eval(), []

    def inspect(xb, yb, x_adv):  # every batch's final adversarial images
        finals.append((xb.clone(), yb.clone(), x_adv.detach().clone()))

    ctx = registry.Context(EPS, EPS / 4, seed=1, batch_size=5, aa_budget=BUDGET, inspect=inspect)
    correct = attack.run(spy, x, y, ctx).correct
    clean = model(x).argmax(1) == y
    assert correct.shape == (12,) and correct.dtype == torch.bool
    assert not clean[:4].any() and not (correct & ~clean).any()  # never turns wrong into right
    assert bool(finals) == (name != "clean")
    for xb, _, x_adv in finals:
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv - xb).abs().max() <= EPS + 1e-6
    if name not in ("clean", "aa"):  # the reported correctness is the model's on x_adv
        xa = torch.cat([f[2] for f in finals])
        assert torch.equal(model(xa).argmax(1) == y, correct)
    assert isinstance(attack.cost, int) and attack.cost >= 1
    assert attack.describe(EPS, 2 / 255) and attack.record
    if attack.family == "pgd":  # K steps + the final forward: exactly the stated cost
        assert sum(len(s) for s in spy.seen) == 12 * attack.cost
    if name != "clean":
        assert correct.sum() < clean.sum()  # the attack does something


def test_pgd_batches_are_seeded_per_batch_not_by_a_stream(problem):
    """Batch i's result depends on (seed, attack, i) only: running batch 1 alone (after
    anything else) gives the same as inside the full run, which sharding/resume rely on."""
    model, x, y = problem
    ctx = registry.Context(EPS / 4, EPS / 16, seed=3, batch_size=4)
    full = registry.get_attack("pgd2").run(model, x, y, ctx).correct
    torch.manual_seed(999)
    only = {}
    ctx.batches = lambda key, n, fn: [
        only.setdefault(1, fn(1)) if i == 1 else full[i * 4 : (i + 1) * 4] for i in range(n)
    ]  # noqa: E501  (one expression)
    again = registry.get_attack("pgd2").run(model, x, y, ctx).correct
    assert torch.equal(full, again) and torch.equal(only[1], full[4:8])
    assert registry.batch_seed(3, "pgd2", 1) != registry.batch_seed(3, "pgd2", 2)
    assert registry.batch_seed(3, "pgd2", 1) != registry.batch_seed(3, "cw2", 1)


def test_unknown_attack_names_the_known_ones():
    with pytest.raises(UserError, match="unknown attack 'pgdx': use clean, pgdK.*apgd-ce.*aa"):
        registry.get_attack("pgdx")
    assert registry.get_attack("cw").title == "CW" and registry.get_attack("cw").cost == 21
    assert registry.get_attack("pgd").describe(EPS, 2 / 255).startswith("L-inf PGD, 10 steps")


def test_card_worst_case_counts_and_report_columns(problem, tmp_path):
    """evaluate_model with PGD, a single AutoAttack attack and AutoAttack on a prefix: the
    worst case is the AND of the records on the images all attacks saw; the card validates
    and `dhat report` reads titles, counts and record names from the registry."""
    pytest.importorskip("pyautoattack")
    from dhat.analysis.report import column_title, count, record_terms, value
    from dhat.data import DataBundle
    from dhat.eval.card import format_card, validate_card
    from dhat.eval.evaluate import evaluate_model

    model, x, y = problem
    u8 = (x * 255).round().to(torch.uint8)
    data = DataBundle("b", u8, y, u8, y, 4, (0.5,) * 3, (0.25,) * 3)
    records: dict = {}
    out = evaluate_model(
        model,
        data,
        attacks=["clean", "pgd3", "apgd-ce", "aa"],
        eps=EPS,
        step_size=2 / 255,
        batch_size=5,
        progress=False,
        aa_n=7,
        records=records,
        aa_budget=BUDGET,
    )
    assert out["n_images"] == {"clean": 12, "pgd3": 12, "apgd-ce": 12, "aa": 7}
    assert set(records) == {"test|clean", "test|pgd3", "test|apgd-ce", "aa|robust", "worst|robust"}
    expected = (
        records["test|clean"][:7]
        & records["test|pgd3"][:7]
        & records["test|apgd-ce"][:7]
        & records["aa|robust"]
    )
    assert torch.equal(records["worst|robust"], expected)
    w = out["worst_case"]
    assert w["n"] == 7 and w["accuracy"] == pytest.approx(expected.float().mean().item())
    assert w["attacks"] == ["clean", "pgd3", "apgd-ce", "aa"]
    assert out["attack_records"]["apgd-ce"]["attack"] == "apgd-ce"
    card = {
        "schema": "dhat-result-v1",
        "accuracy": out["accuracy"],
        "attack_settings": {k: registry.describe(k, EPS, 2 / 255) for k in out["accuracy"]},
        "eval_config": {"attacks": list(out["accuracy"])},
        **{k: out[k] for k in ("n_test", "n_aa", "autoattack", "n_images", "worst_case")},
        "sanity": [],
        "sanity_failed": [],
        "unreliable": False,
        "model": "small_cnn",
        "method": "standard",
        "dataset": "b",
        "eps_255": 8.0,
    }
    validate_card(card)
    assert f"worst case, per image (7 imgs)  {100 * w['accuracy']:.2f}" in format_card(card)
    assert count(card, "apgd-ce") == 12 and count(card, "aa") == 7 and count(card, "worst") == 7
    assert value(card, "worst") == pytest.approx(100 * w["accuracy"])
    assert column_title("apgd-t") == "APGD-T" and column_title("worst") == "Worst case"
    assert record_terms("fab-t") == [(1, "test|fab-t")] and record_terms("aa") == [(1, "aa|robust")]
    bad = {**card, "worst_case": {**w, "n": 12}}
    with pytest.raises(UserError, match="worst_case is not over every attack"):
        validate_card(bad)
    with pytest.raises(UserError, match="n_images\\['aa'\\] differs from n_aa"):
        validate_card({**card, "n_images": {**out["n_images"], "aa": 6}, "worst_case": None})

import pytest
import torch
import torch.nn.functional as F
from conftest import computable_models, small_model_kwargs

import dhat
from dhat.attacks import cw_margin_loss, dhat_inverse_loss, inverse_pgd, pgd

EPS, ALPHA = 8 / 255, 2 / 255


def test_pgd_equals_torchattacks_step_for_step(trained_tiny):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = trained_tiny
    x, y = x[:32], y[:32]
    for steps in (1, 2, 5, 10):
        torch.manual_seed(123)
        ref = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)(x, y)
        torch.manual_seed(123)
        ours = pgd(model, x, y, eps=EPS, step_size=ALPHA, steps=steps)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss", ["ce", "cw", "kl"])
@pytest.mark.parametrize("init", ["uniform", "gauss", "none"])
def test_pgd_stays_in_ball_and_box(trained_tiny, loss, init):
    model, x, y = trained_tiny
    x, y = x[:16], y[:16]
    p_ref = torch.softmax(model(x), 1).detach() if loss == "kl" else None
    adv = pgd(model, x, y, eps=EPS, step_size=ALPHA, steps=4, loss=loss, p_ref=p_ref, init=init)
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("name", computable_models())  # wrn_28_10/34_10: wide_resnet's case
def test_every_model_attack_stays_in_eps(name):
    torch.manual_seed(0)
    model = dhat.create_model(name, **small_model_kwargs(name))
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    adv = pgd(model, x, y, eps=EPS, step_size=ALPHA, steps=2)
    inv = inverse_pgd(model, x, y, eps=EPS / 2, step_size=ALPHA, steps=2, x_adv=adv)
    assert (adv - x).abs().max() <= EPS + 1e-6 and (inv - x).abs().max() <= EPS / 2 + 1e-6
    for z in (adv, inv):
        assert z.min() >= 0 and z.max() <= 1 and not torch.equal(z, x)  # in the box, and moved


def test_per_sample_eps(trained_tiny):
    model, x, y = trained_tiny
    eps = torch.linspace(1, 8, 8) / 255
    adv = pgd(model, x[:8], y[:8], eps=eps, step_size=ALPHA, steps=3)
    dist = (adv - x[:8]).abs().flatten(1).amax(1)
    assert torch.all(dist <= eps + 1e-6)


def test_pgd_raises_loss_and_inverse_lowers_it(trained_tiny):
    model, x, y = trained_tiny
    x, y = x[:64], y[:64]
    torch.manual_seed(0)
    ce = lambda z: F.cross_entropy(model(z), y).item()  # noqa: E731
    adv = pgd(model, x, y, eps=EPS, step_size=ALPHA, steps=10)
    inv = inverse_pgd(model, x, y, eps=EPS, step_size=ALPHA, steps=10, loss="ce")
    inv_official = inverse_pgd(model, x, y, eps=EPS, step_size=ALPHA, steps=10, x_adv=adv)
    base = ce(x)
    assert ce(adv) > base * 1.5
    assert ce(inv) < base * 0.9
    assert ce(inv_official) < base


def test_attack_restores_mode_and_leaves_no_grads(trained_tiny):
    model, x, y = trained_tiny
    model.train()
    model.features[1].eval()  # a mixed mode must survive too
    model.zero_grad(set_to_none=True)
    try:
        pgd(model, x[:4], y[:4], eps=EPS, step_size=ALPHA, steps=2, bn_mode="eval")
        assert model.training and not model.features[1].training
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
    finally:
        model.eval()


def test_eval_mode_attack_does_not_move_bn_stats(trained_tiny):
    model, x, y = trained_tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pgd(model, x[:8], y[:8], eps=EPS, step_size=ALPHA, steps=2, bn_mode="eval")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pgd(model, x[:8], y[:8], eps=EPS, step_size=ALPHA, steps=2, bn_mode="train")
    moved = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    model.load_state_dict(before)
    assert any("running_mean" in k for k in moved)


def test_loss_closed_forms():
    z = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    # margins: row 0: max other 1 - 2 = -1; row 1: 3 - 1 = 2
    assert cw_margin_loss(z, y).item() == pytest.approx(1.0)
    p_nat = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    p_adv = torch.tensor([[0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    logp = torch.log_softmax(z, 1)
    ce = -(logp[0, 0] + logp[1, 2])
    kl = lambda p: (p * (p.log() - logp)).sum()  # noqa: E731
    expected = ce + kl(p_nat) - kl(p_adv)
    assert dhat_inverse_loss(z, y, p_nat, p_adv).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5])
def test_bad_eps_rejected(trained_tiny, eps):
    model, x, y = trained_tiny
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x[:2], y[:2], eps=eps, step_size=ALPHA, steps=1)

"""Baselines: TRADES, MART, AWP (and its wrappers), SGLR, CFA, DHAT-CFA (spec: baselines.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dhat
from dhat.data.loader import Batch
from dhat.errors import UserError
from dhat.methods import RunInfo, create_method, method_options
from dhat.methods.awp import AWP
from dhat.methods.cfa import class_beta_weight, class_eps, fawa_update
from dhat.methods.mart import mart_terms
from dhat.methods.sglr import refine_labels, soft_cross_entropy
from dhat.methods.standard import PGDAT

K = 3


class Logits(nn.Module):
    """A parameter-free 'model' whose input is its logits, to check losses by hand."""

    def forward(self, x):
        return x


def info(num_classes=K, num_train=16):
    return RunInfo(
        num_classes=num_classes, num_train=num_train, epochs=1, device=torch.device("cpu")
    )


def ready(method, epoch=0, **kw):
    method.setup(info(**kw))
    method.start_epoch(epoch)
    return method


def logits_batch(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    z_nat = (torch.randn(b, K, generator=g) * 2).requires_grad_(True)
    z_adv = (torch.randn(b, K, generator=g) * 2).requires_grad_(True)
    y = torch.randint(0, K, (b,), generator=g)
    return z_nat, z_adv, Batch(z_nat, y, torch.arange(b))


def softmax_hand(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def image_batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.rand(b, 3, 32, 32, generator=g),
        torch.randint(0, 10, (b,), generator=g),
        torch.arange(b),
    )


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return dhat.create_model("small_cnn", width=4).train()


# --- TRADES --------------------------------------------------------------------------------
def test_trades_loss_matches_hand_computation_with_nothing_detached():
    z_nat, z_adv, batch = logits_batch()
    method = ready(create_method("trades", beta=6.0))
    loss, metrics = method.objective(Logits(), batch, {"x_adv": z_adv})
    # by hand, float64, differentiable in both logits (the KL target p(x) is not detached)
    zn, za = z_nat.double(), z_adv.double()
    pn, pa = zn.exp() / zn.exp().sum(1, keepdim=True), za.exp() / za.exp().sum(1, keepdim=True)
    ce = -pn.log()[torch.arange(4), batch.y]
    kl = (pn * (pn.log() - pa.log())).sum(1)
    hand = ce.sum() / 4 + 6.0 * kl.sum() / 4
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)
    assert metrics["kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
    g = torch.autograd.grad(loss, [z_nat, z_adv])
    g_hand = torch.autograd.grad(hand, [z_nat, z_adv])
    for a, b in zip(g, g_hand):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-6)


def test_trades_defaults():
    m = create_method("trades")
    assert (m.beta, m.bn_mode, m.init, m.eps, m.step_size) == (
        6.0,
        "eval",
        "gauss",
        8 / 255,
        2 / 255,
    )


# --- MART ----------------------------------------------------------------------------------
def mart_hand(z_nat, z_adv, y, beta):
    """The official MART loss, sample by sample in float32 (stabilisers as constants)."""

    def f(v):
        return torch.tensor(v, dtype=torch.float32)

    total = 0.0
    for zn, za, t in zip(z_nat.tolist(), z_adv.tolist(), y.tolist()):
        pn, pa = softmax_hand(zn), softmax_hand(za)
        order = sorted(range(K), key=lambda c: pa[c])
        y_hat = order[-2] if order[-1] == t else order[-1]
        ce = -math.log(pa[t])
        margin = -torch.log(f(1.0001) - f(pa[y_hat]) + f(1e-12)).item()
        kl = sum(
            p * (math.log(p) - torch.log(f(q) + f(1e-12)).item()) for p, q in zip(pn, pa) if p > 0
        )
        total += ce + margin + beta * kl * (f(1.0000001) - f(pn[t])).item()
    return total / len(y)


def test_mart_loss_matches_hand_computation():
    z_nat, z_adv, batch = logits_batch(seed=1, b=6)
    loss, _ = ready(create_method("mart", beta=6.0)).objective(Logits(), batch, {"x_adv": z_adv})
    assert loss.item() == pytest.approx(mart_hand(z_nat, z_adv, batch.y, 6.0), rel=1e-5)


def test_mart_wrong_class_comes_from_p_adv_and_stabilisers_are_exact():
    y = torch.tensor([0, 0])
    # sample 0: top-1 of p(x') is y, so ŷ is the top-2 (class 2); sample 1: top-1 (class 1) is wrong
    z_adv = torch.tensor([[5.0, 1.0, 3.0], [1.0, 4.0, 2.0]])
    z_nat = torch.tensor([[0.0, 3.0, 1.0], [0.0, 0.0, 3.0]])  # ŷ from p(x) would differ
    _, margin, _ = mart_terms(z_nat, z_adv, y)
    pa = F.softmax(z_adv, 1)
    expect = -(torch.log(1.0001 - pa[0, 2] + 1e-12) + torch.log(1.0001 - pa[1, 1] + 1e-12)) / 2
    assert margin.item() == pytest.approx(expect.item(), rel=1e-6)
    # saturated probabilities: p_ŷ(x') = 1 and p_c(x') = 0 and p_y(x) = 1 stay finite
    z_adv = torch.tensor([[0.0, 200.0, -200.0]])
    z_nat = torch.tensor([[60.0, -60.0, -60.0]])
    y = torch.tensor([0])
    _, margin, kl = mart_terms(z_nat, z_adv, y)
    one = torch.tensor(1.0)
    assert margin.item() == pytest.approx(-torch.log(1.0001 - one + 1e-12).item(), rel=1e-6)
    assert math.isfinite(kl.item()) and kl.item() > 0
    kl_raw = -torch.log(torch.tensor(1e-12))  # Σ p log p − p log(p' + 1e-12), p = e_0, p'_0 = 0
    assert kl.item() == pytest.approx((kl_raw * (1.0000001 - one)).item(), rel=1e-5)
    loss, _ = ready(create_method("mart")).objective(Logits(), Batch(z_nat, y, y), {"x_adv": z_adv})
    assert torch.isfinite(loss)


# --- AWP -----------------------------------------------------------------------------------
def awp_on_tiny(name="awp", **opts):
    model, batch = tiny_model(), image_batch()
    method = ready(create_method(name, steps=1, **opts), num_classes=10)
    return model, batch, method


def test_awp_perturbs_multidim_weights_by_gamma_norm_and_restores_exactly():
    model, batch, method = awp_on_tiny(gamma=0.01)
    inputs = method.inputs(model, batch)  # (the train-mode attack moves BN buffers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method.perturb(model, batch, inputs)
    after = model.state_dict()
    n_perturbed = 0
    for k, w in before.items():
        if "weight" in k and w.dim() > 1:
            n_perturbed += 1
            assert (after[k] - w).norm().item() == pytest.approx(0.01 * w.norm().item(), rel=1e-4)
        else:  # biases, BN affine parameters and buffers are untouched
            assert torch.equal(after[k], w), k
    assert n_perturbed == 5  # four convs and the linear layer
    method.after_step(model)
    for k, w in model.state_dict().items():
        assert torch.equal(w, before[k]), k


def test_awp_restores_weights_bitwise_after_a_zero_lr_step():
    model, batch, method = awp_on_tiny(name="dhat_awp", gamma=0.02)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    for _ in range(2):
        loss, _ = method(model, batch)
        assert any(not torch.equal(p, before[k]) for k, p in model.named_parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model)
        for k, p in model.named_parameters():
            assert torch.equal(p, before[k]), k


def test_awp_direction_ascends_the_base_loss():
    model, batch, method = awp_on_tiny(gamma=0.01)
    inputs = method.inputs(model, batch)
    loss, _ = method.base.objective(model, batch, inputs)
    grads = dict(
        zip(
            [k for k, _ in model.named_parameters()],
            torch.autograd.grad(loss, list(model.parameters())),
        )
    )
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    method.perturb(model, batch, inputs)
    for k, p in model.named_parameters():
        if "weight" in k and p.dim() > 1:
            cos = F.cosine_similarity((p - before[k]).flatten(), grads[k].flatten(), dim=0)
            assert cos.item() > 0.999, k
    method.after_step(model)


def test_awp_warmup_and_zero_gamma_leave_weights_alone():
    for opts, epoch in (({"warmup": 2}, 1), ({"gamma": 0.0}, 0)):
        model, batch, method = awp_on_tiny(**opts)
        method.start_epoch(epoch)
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        method(model, batch)
        assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())


def test_awp_options_route_to_wrapper_or_base():
    m = create_method("dhat_awp", gamma=0.01, dhlr="paper")
    assert (m.gamma, m.base.name, m.base.dhlr) == (0.01, "dhat", "paper")
    assert m.options()["dhlr"] == "paper" and "base" not in m.options()
    t = create_method("trades_awp", beta=3.0)
    assert (t.gamma, t.warmup, t.base.name, t.base.beta) == (0.005, 9, "trades", 3.0)
    assert method_options("trades_awp")["gamma"].default == 0.005
    a = create_method("awp")
    assert (a.gamma, a.proxy_lr, a.warmup, a.base.name) == (0.01, 0.01, 0, "pgd_at")
    assert {"gamma", "proxy_lr", "warmup", "eps", "omega"} <= set(method_options("dhat_awp"))
    with pytest.raises(UserError, match="gama"):
        create_method("awp", gama=0.1)
    with pytest.raises(TypeError):
        AWP(base=PGDAT(), beta=1.0)
    assert AWP(base=create_method("mart"), gamma=0.02).base.name == "mart"


# --- SGLR ----------------------------------------------------------------------------------
def test_sglr_table_update_and_soft_ce():
    z_nat, z_adv, batch = logits_batch(seed=2)
    batch.index = torch.tensor([7, 2, 9, 4])
    method = ready(create_method("sglr", es=1), num_train=12)
    loss, _ = method.objective(Logits(), batch, {"x_adv": z_adv})  # epoch 0 < es: plain CE
    assert loss.item() == pytest.approx(F.cross_entropy(z_adv, batch.y).item())
    assert method.soft_labels.abs().sum() == 0
    method.start_epoch(1)
    q = F.one_hot(batch.y, K).float()
    for _ in range(2):  # two visits: one-hot start, then the running average
        pn, pa = F.softmax(z_nat, 1).detach(), F.softmax(z_adv, 1).detach()
        q = 0.9 * q + 0.1 * (0.2 * pn + 0.8 * pa)
        loss, _ = method.objective(Logits(), batch, {"x_adv": z_adv})
        torch.testing.assert_close(method.soft_labels[batch.index], q)
        hand = -(q * F.log_softmax(z_adv, 1)).sum(1).mean()
        assert loss.item() == pytest.approx(hand.item(), rel=1e-6)
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[batch.index] = False
    assert method.soft_labels[untouched].abs().sum() == 0
    # gradient only through log p(x'): d/dz' = (softmax(z') − Q)/B, nothing into the clean logits
    (g,) = torch.autograd.grad(loss, [z_adv])
    torch.testing.assert_close(g, (F.softmax(z_adv, 1) - q).detach() / 4)
    # the table travels with the checkpoint
    fresh = ready(create_method("sglr"), num_train=12)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.soft_labels, method.soft_labels)


def test_sglr_pure_functions():
    rows, pc, pa = torch.rand(2, K), torch.rand(2, K), torch.rand(2, K)
    torch.testing.assert_close(
        refine_labels(rows, pc, pa, 0.7, 0.3), 0.7 * rows + 0.3 * (0.3 * pc + 0.7 * pa)
    )
    z, t = torch.randn(2, K), torch.softmax(torch.randn(2, K), 1)
    expect = -sum(t[i, c] * torch.log_softmax(z[i], 0)[c] for i in range(2) for c in range(K)) / 2
    assert soft_cross_entropy(z, t).item() == pytest.approx(expect.item(), rel=1e-6)
    m = create_method("sglr")
    assert (m.alpha, m.es, m.clean_weight, m.bn_mode) == (0.9, 90, 0.2, "eval")


# --- CFA -----------------------------------------------------------------------------------
def test_class_eps_and_beta_follow_their_formulas():
    R = torch.tensor([0.1, 0.45, 0.8])
    torch.testing.assert_close(
        class_eps(R, 8 / 255, 0.5), torch.tensor([(0.5 + r) * 8 / 255 for r in R.tolist()])
    )
    b = class_beta_weight(R, 6.0, 0.5)
    torch.testing.assert_close(
        b, torch.tensor([(0.5 + r) * 6 / (1 + (0.5 + r) * 6) for r in R.tolist()])
    )


def test_cfa_trades_weighting_per_class():
    z_nat, z_adv, batch = logits_batch(seed=3, b=6)
    method = ready(create_method("cfa", beta=6.0, begin=1))
    loss0, _ = method.objective(Logits(), batch, {"x_adv": z_adv})
    trades, _ = ready(create_method("trades", beta=6.0)).objective(
        Logits(), batch, {"x_adv": z_adv}
    )
    assert loss0.item() == pytest.approx(trades.item() / 7, rel=1e-5)  # b = 6/7 before `begin`
    R = torch.tensor([0.2, 0.5, 0.9])
    method.train_class_acc = R.clone()
    method.start_epoch(1)
    loss, _ = method.objective(Logits(), batch, {"x_adv": z_adv})
    ce = F.cross_entropy(z_nat, batch.y, reduction="none")
    kl = F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z_nat, 1), reduction="none").sum(1)
    beta_c = (0.5 + R[batch.y]) * 6
    b = beta_c / (1 + beta_c)
    assert loss.item() == pytest.approx(((1 - b) * ce + b * kl).mean().item(), rel=1e-5)
    assert create_method("cfa", ccr=False, begin=0).kl_weight(batch.y) == 6 / 7


def test_cfa_class_accuracy_drives_class_eps():
    method = ready(create_method("cfa", begin=1))
    # class 0: 2 of 2 right, class 1: 1 of 2, class 2: 0 of 1
    y = torch.tensor([0, 0, 1, 1, 2])
    z_adv = F.one_hot(torch.tensor([0, 0, 1, 2, 0]), K).float() * 5
    batch = Batch(z_adv, y, torch.arange(5))
    method.objective(Logits(), batch, {"x_adv": z_adv})
    assert method.sample_eps(y) == method.eps  # before `begin`: the scalar ε
    method.end_epoch(nn.Linear(1, 1), 0, {"val_class_acc": None})
    torch.testing.assert_close(method.train_class_acc, torch.tensor([1.0, 0.5, 0.0]))
    method.start_epoch(1)
    torch.testing.assert_close(
        method.sample_eps(y), (0.5 + torch.tensor([1.0, 1.0, 0.5, 0.5, 0.0])) * 8 / 255
    )
    assert create_method("cfa", mode="at").bn_mode == "train"
    assert create_method("cfa").bn_mode == "eval"


def test_fawa_updates_only_when_the_gate_is_met_and_copies_first():
    model = tiny_model()
    method = ready(create_method("cfa"), num_classes=3)
    low, high = torch.tensor([0.5, 0.1, 0.9]), torch.tensor([0.3, float("nan"), 0.25])
    assert method.end_epoch(model, 0, {"val_class_acc": low})["fawa_updated"] is False
    assert method.extra_models() == {} and method.fawa is None
    assert method.end_epoch(model, 1, {"val_class_acc": high})["fawa_updated"] is True
    first = method.extra_models()["fawa"]
    for k, v in model.state_dict().items():
        assert torch.equal(first[k], v), k
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.rand(2, 3, 32, 32))  # move BN buffers and num_batches_tracked
    old = {k: v.clone() for k, v in first.items()}
    method.end_epoch(model, 2, {"val_class_acc": high})
    for k, v in model.state_dict().items():
        expect = (old[k] * 0.88 + v * 0.12).to(v.dtype)
        assert torch.equal(method.fawa[k], expect), k
    kept = {k: v.clone() for k, v in method.fawa.items()}
    method.end_epoch(model, 3, {"val_class_acc": low})
    assert all(torch.equal(method.fawa[k], v) for k, v in kept.items())
    # pure function: integer buffers averaged in float and truncated
    out = fawa_update(
        {"n": torch.tensor(10), "w": torch.tensor([1.0])},
        {"n": torch.tensor(20), "w": torch.tensor([3.0])},
        0.88,
    )
    assert out["n"].item() == int(10 * 0.88 + 20 * 0.12) and out["n"].dtype == torch.int64
    assert out["w"].item() == pytest.approx(1.24)
    # state survives a resume
    again = ready(create_method("cfa"), num_classes=3)
    again.load_state_dict(method.state_dict())
    assert all(torch.equal(again.fawa[k], v) for k, v in method.fawa.items())


def test_dhat_cfa_keeps_dhat_weights_and_uses_class_eps_for_x_adv():
    method = create_method("dhat_cfa", steps=2, begin=0)
    assert (method.lambda1, method.lambda2, method.ccm_lambda) == (1.0, 1.0, 0.5)
    ready(method, num_classes=10)
    method.train_class_acc = torch.linspace(0, 1, 10)
    model, batch = tiny_model(), image_batch()
    x_adv = method.adversarial(model, batch)
    eps_i = (0.5 + method.train_class_acc[batch.y]) * 8 / 255
    dist = (x_adv - batch.x).abs().flatten(1).amax(1)
    assert torch.all(dist <= eps_i + 1e-6)
    method(model, batch)
    assert method.seen.sum().item() == 8


# --- every method trains -------------------------------------------------------------------
TRAINABLE = [
    ("trades", {}),
    ("mart", {}),
    ("awp", {}),
    ("trades_awp", {"warmup": 0}),
    ("dhat_awp", {}),
    ("sglr", {"es": 0}),
    ("cfa", {"begin": 0}),
    ("cfa", {"begin": 0, "mode": "at"}),
    ("dhat_cfa", {"begin": 0}),
]


@pytest.mark.parametrize(
    "name,opts", TRAINABLE, ids=[f"{n}-{o.get('mode', '')}" for n, o in TRAINABLE]
)
def test_method_trains_a_tiny_model(name, opts):
    model, batch = tiny_model(), image_batch()
    method = ready(create_method(name, steps=2, **opts), num_classes=10, num_train=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        loss, metrics = method(model, batch)
        assert torch.isfinite(loss) and "adv_acc" in metrics
        assert all(
            isinstance(v, torch.Tensor) and v.dim() == 0 and torch.isfinite(v)
            for v in metrics.values()
        )  # device tensors: no host sync per step
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        method.after_step(model)
    method.end_epoch(model, 0, {"val_class_acc": torch.full((10,), 0.5)})
    if "cfa" in name:
        assert set(method.extra_models()) == {"fawa"}
    method.state_dict()

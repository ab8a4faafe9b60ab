"""Threat models (dhat/attacks/threat.py): the L-inf and L2 geometry against hand
computations, and PGD through a ThreatModel equal, bit for bit, to the hard-wired L-inf loop."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dhat.attacks import L2Threat, LinfThreat, ThreatModel, inverse_pgd, pgd, threat_model
from dhat.attacks.pgd import pgd_loop
from dhat.attacks.registry import Context, describe, get_attack
from dhat.attacks.spec import AttackSpec, make_attack, threat_attack
from dhat.errors import UserError

D = torch.float64


def full(*values, shape=(1, 1, 2, 2)):
    return torch.tensor(values, dtype=D).view(shape)


# --- projection -----------------------------------------------------------------------------
def test_linf_projection_clamps_each_coordinate_then_into_the_box():
    t = LinfThreat(0.1, 0.01, 1)
    x = full(0.5, 0.5, 0.5, 0.95)
    x_adv = full(0.8, 0.45, 0.3, 1.2)
    assert torch.allclose(t.project(x_adv, x), full(0.6, 0.45, 0.4, 1.0))
    inside = full(0.55, 0.45, 0.5, 0.96)
    assert torch.equal(t.project(inside, x), inside)


def test_l2_projection_lands_on_the_sphere_along_the_ray():
    t = L2Threat(0.25, 0.1, 1)
    x = full(0.5, 0.5, 0.5, 0.5)
    out = t.project(x + full(0.3, 0.4, 0.0, 0.0), x)  # ||δ|| = 0.5: halved
    assert torch.allclose(out, x + full(0.15, 0.2, 0.0, 0.0))
    assert torch.linalg.vector_norm(out - x).item() == pytest.approx(0.25)
    inside = x + full(0.1, -0.1, 0.05, 0.0)
    assert torch.equal(t.project(inside, x), inside)  # inside: untouched


def test_l2_projection_clips_into_the_box_and_stays_in_the_ball():
    t = L2Threat(0.5, 0.1, 1)
    x = full(0.9, 0.1, 0.5, 0.5)
    out = t.project(x + full(0.3, -0.3, 0.0, 0.1), x)  # inside the ball, outside [0, 1]
    assert torch.allclose(out, full(1.0, 0.0, 0.5, 0.6))
    assert torch.linalg.vector_norm(out - x) <= 0.5


def test_per_sample_eps_is_broadcast():
    eps = torch.tensor([0.1, 0.2])
    x = torch.full((2, 1, 2, 2), 0.5, dtype=D)
    far = x + 0.4
    assert torch.allclose((LinfThreat(eps, 0.01, 1).project(far, x) - x).amax((1, 2, 3)), eps.to(D))
    delta = L2Threat(eps, 0.01, 1).project(far, x) - x
    assert torch.allclose(delta.flatten(1).norm(dim=1), eps.to(D))


# --- random start ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [LinfThreat, L2Threat])
def test_random_start_lies_in_the_ball_and_the_box_and_is_reproducible(cls):
    eps = 0.3 if cls is L2Threat else 0.1
    t = cls(eps, 0.01, 1)
    x = torch.rand(64, 3, 4, 4, dtype=D, generator=torch.Generator().manual_seed(0))
    a = t.random_start(x, torch.Generator().manual_seed(1))
    b = t.random_start(x, torch.Generator().manual_seed(1))
    c = t.random_start(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    delta = (a - x).flatten(1)
    size = delta.norm(dim=1) if cls is L2Threat else delta.abs().amax(1)
    assert torch.all(size <= eps * (1 + 1e-12)) and torch.all(size > 0)


def test_linf_random_start_is_uniform_in_the_cube_from_the_global_stream():
    x = torch.full((2, 3), 0.5, dtype=D)
    torch.manual_seed(4)
    start = LinfThreat(0.1, 0.01, 1).random_start(x)
    torch.manual_seed(4)
    assert torch.equal(start, x + torch.empty_like(x).uniform_(-0.1, 0.1))


def test_l2_random_start_is_uniform_by_volume():
    """In d = 2 dimensions the radius of a uniform point of the disc has mean 2/3 ε and
    P(r <= ε/2) = 1/4 (on the circle: mean ε, P = 0)."""
    x = torch.full((20000, 1, 1, 2), 0.5, dtype=D)
    start = L2Threat(0.2, 0.01, 1).random_start(x, torch.Generator().manual_seed(0))
    r = (start - x).flatten(1).norm(dim=1) / 0.2
    assert r.mean().item() == pytest.approx(2 / 3, abs=0.01)
    assert (r <= 0.5).double().mean().item() == pytest.approx(0.25, abs=0.015)


# --- one step -------------------------------------------------------------------------------
def test_linf_step_is_a_sign_step_and_descend_flips_it():
    t = LinfThreat(0.1, 0.02, 1)
    x, g = full(0.5, 0.5, 0.5, 0.5), full(3.0, -0.1, 0.0, 2.0)
    assert torch.allclose(t.step(x, g), full(0.52, 0.48, 0.5, 0.52))
    assert torch.allclose(t.step(x, g, descend=True), full(0.48, 0.52, 0.5, 0.48))


def test_l2_step_is_the_normalised_gradient_per_sample():
    t = L2Threat(1.0, 0.5, 1)
    x = torch.full((2, 1, 2, 2), 0.5, dtype=D)
    g = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=D).view(2, 1, 2, 2)
    up = x + torch.tensor([[0.3, 0.4, 0, 0], [0, 0, 0, 0]], dtype=D).view(2, 1, 2, 2)
    assert torch.allclose(t.step(x, g), up)  # α·g/||g||; a zero gradient does not move
    assert torch.allclose(t.step(x, g, descend=True), 2 * x - up)


# --- PGD through a ThreatModel ----------------------------------------------------------------
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    ).double()
    model(torch.rand(8, 3, 4, 4, dtype=D))  # BatchNorm statistics
    g = torch.Generator().manual_seed(1)
    return model.eval(), torch.rand(6, 3, 4, 4, dtype=D, generator=g), torch.arange(6) % 3


def reference(model, x, y, eps, alpha, steps, init, descend=False):
    """The L-inf loop as it was hard-wired in pgd.py (eval mode, CE)."""
    e = eps.to(x).view(-1, 1, 1, 1) if isinstance(eps, torch.Tensor) else float(eps)
    if init == "uniform":
        noise = (
            torch.empty_like(x).uniform_(-e, e)
            if isinstance(e, float)
            else torch.empty_like(x).uniform_(-1, 1) * e
        )
        x_adv = torch.clamp(x + noise, 0.0, 1.0)
    else:
        x_adv = x + 0.001 * torch.randn_like(x) if init == "gauss" else x.clone()
    proj = lambda z: torch.clamp(torch.min(torch.max(z, x - e), x + e), 0.0, 1.0)  # noqa: E731
    direction = -1.0 if descend else 1.0
    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = proj(x_adv.detach() + direction * alpha * grad.sign())
    for p in model.parameters():
        p.requires_grad_(True)
    return proj(x_adv).detach()


@pytest.mark.parametrize("init", ["uniform", "gauss", "none"])
@pytest.mark.parametrize("eps", [8 / 255, "tensor"])
def test_pgd_with_linf_threat_is_the_hard_wired_loop_bit_for_bit(init, eps):
    model, x, y = tiny()
    eps = torch.linspace(2, 8, 6) / 255 if eps == "tensor" else eps
    torch.manual_seed(3)
    want = reference(model, x, y, eps, 2 / 255, 3, init)
    torch.manual_seed(3)
    assert torch.equal(pgd(model, x, y, eps=eps, step_size=2 / 255, steps=3, init=init), want)
    torch.manual_seed(3)
    threat = LinfThreat(eps, 2 / 255, 3, rand_init=init == "uniform")
    objective = lambda z: F.cross_entropy(z, y)  # noqa: E731
    assert torch.equal(pgd_loop(model, x, objective, threat, init=init), want)
    torch.manual_seed(3)
    want = reference(model, x, y, eps, 1 / 255, 2, init, descend=True)
    torch.manual_seed(3)
    got = inverse_pgd(model, x, y, eps=eps, step_size=1 / 255, steps=2, loss="ce", init=init)
    assert torch.equal(got, want)


def test_l2_pgd_stays_in_the_ball_per_sample():
    model, x, y = tiny()
    eps = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.5, 1.0])
    for e in (0.25, eps):
        adv = pgd(model, x, y, eps=e, step_size=0.1, steps=5, norm="L2")
        dist = (adv - x).flatten(1).norm(dim=1)
        assert torch.all(dist <= torch.as_tensor(e, dtype=D) * (1 + 1e-12))
        assert adv.min() >= 0 and adv.max() <= 1 and torch.all(dist > 0)
    base = F.cross_entropy(model(x), y)
    adv = pgd(model, x, y, eps=1.0, step_size=0.25, steps=10, norm="L2", init="none")
    inv = inverse_pgd(model, x, y, eps=1.0, step_size=0.25, steps=10, loss="ce", norm="L2")
    assert F.cross_entropy(model(adv), y) > base > F.cross_entropy(model(inv), y)


# --- the registry of norms --------------------------------------------------------------------
def test_threat_model_by_norm_and_its_errors():
    t = threat_model("Linf", 8 / 255, 2 / 255, 10)
    assert isinstance(t, LinfThreat) and t.norm == "Linf" and t.rand_init
    assert isinstance(threat_model("l2", 0.5, 0.1, 7, rand_init=False), L2Threat)
    assert t.with_steps(3) == LinfThreat(8 / 255, 2 / 255, 3)
    with pytest.raises(UserError, match="L2, Linf") as err:
        threat_model("L3", 0.5, 0.1, 7)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="norm"):
        pgd(*tiny(), eps=0.1, step_size=0.1, steps=1, norm="Lone")
    with pytest.raises(ValueError, match=r"\(0, 1\] \(pixel units, e.g. 8/255\), got 2.0"):
        LinfThreat(2.0, 0.1, 1)
    assert L2Threat(2.0, 0.1, 1).eps == 2.0
    with pytest.raises(ValueError, match="eps must"):
        pgd(*tiny(), eps=torch.tensor([0.1, 0.0, 0.1, 0.1, 0.1, 0.1]), step_size=0.1, steps=1)
    with pytest.raises(TypeError):
        ThreatModel(0.1, 0.1, 1)  # type: ignore[abstract]  # abstract: a norm is a subclass


# --- attack specs and the evaluation context ----------------------------------------------------
def test_attack_specs_from_a_threat_model():
    t = threat_model("Linf", 8 / 255, 2 / 255, 5)
    assert AttackSpec.from_threat(t, steps=10) == make_attack("pgd10", 8 / 255, 2 / 255)
    assert AttackSpec.from_threat(t, loss="cw").name == "cw5"
    assert threat_attack("cw", t) == make_attack("cw", 8 / 255, 2 / 255)
    assert threat_attack("clean", t) is None
    assert AttackSpec.from_threat(t).threat == t
    l2 = AttackSpec.from_threat(threat_model("L2", 0.5, 0.1, 7))
    assert l2.describe() == (
        "L2 PGD, 7 steps, cross-entropy loss, step 0.1, eps 0.5, uniform random start, "
        "1 restart, eval mode"
    )
    model, x, y = tiny()
    adv = l2(model, x, y)
    assert torch.all((adv - x).flatten(1).norm(dim=1) <= 0.5 * (1 + 1e-12))
    with pytest.raises(UserError, match="norm"):
        make_attack("pgd10", 0.5, 0.1, norm="L1")


def test_registry_runs_and_describes_in_the_context_norm():
    ctx = Context.from_threat(threat_model("L2", 0.5, 0.1, 7), seed=2, batch_size=4)
    assert (ctx.eps, ctx.step_size, ctx.norm, ctx.seed) == (0.5, 0.1, "L2", 2)
    model, x, y = tiny()
    assert get_attack("pgd3").run(model.float(), x.float(), y, ctx).correct.shape == (6,)
    assert describe("pgd3", 0.5, 0.1, "L2").startswith("L2 PGD, 3 steps")
    assert describe("pgd3", 8 / 255, 2 / 255).startswith("L-inf PGD, 3 steps")
    with pytest.raises(UserError, match="Linf threat model only"):
        describe("aa", 0.5, 0.1, "L2")

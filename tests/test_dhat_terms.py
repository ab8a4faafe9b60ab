import math

import pytest
import torch

import dhat
from dhat.data import Batch
from dhat.methods import RunInfo, create_method
from dhat.methods.dhat import background_mask, dhlr_official, dhlr_paper, floe_official, floe_paper

Z_ADV = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
Z_INV = torch.tensor([[3.0, -1.0, 0.0], [1.0, 2.0, -2.0]])
Z_BG = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])


def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def test_dhlr_official_is_kl_adv_to_debiased():
    z_star = (Z_INV - Z_BG).tolist()
    expected = sum(kl(softmax(a), softmax(s)) for a, s in zip(Z_ADV.tolist(), z_star)) / 2
    assert dhlr_official(Z_ADV, Z_INV - Z_BG).item() == pytest.approx(expected, abs=1e-6)


def test_dhlr_paper_is_kl_debiased_to_adv_with_detached_target():
    z_star = (Z_INV - Z_BG).tolist()
    expected = sum(kl(softmax(s), softmax(a)) for a, s in zip(Z_ADV.tolist(), z_star)) / 2
    z_inv = Z_INV.clone().requires_grad_(True)
    val = dhlr_paper(Z_ADV, z_inv - Z_BG)
    assert val.item() == pytest.approx(expected, abs=1e-6)
    assert not val.requires_grad  # ž* is a detached target, ẑ here needs no grad


def test_floe_official_by_hand():
    z, zb = Z_INV.tolist(), Z_BG.tolist()
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    gram = [[dot(zb[i], zb[j]) for j in range(2)] for i in range(2)]
    gram_f = math.sqrt(sum(v * v for row in gram for v in row))
    proj = [[dot(z[i], zb[j]) / gram_f for j in range(2)] for i in range(2)]
    resid = [
        [z[i][c] - sum(proj[i][j] * zb[j][c] for j in range(2)) for c in range(3)] for i in range(2)
    ]
    expected = math.sqrt(sum(v * v for row in resid for v in row)) / 2
    assert floe_official(Z_INV, Z_BG).item() == pytest.approx(expected, rel=1e-6)


def test_floe_paper_by_hand():
    out = []
    for z, zb in zip(Z_INV.tolist(), Z_BG.tolist()):
        c = sum(a * b for a, b in zip(z, zb)) / sum(b * b for b in zb)
        r = [a - c * b for a, b in zip(z, zb)]
        out.append(math.sqrt(sum(v * v for v in r)) / math.sqrt(sum(a * a for a in z)))
    assert floe_paper(Z_INV, Z_BG).item() == pytest.approx(-sum(out) / 2, rel=1e-6)


def test_floe_official_equals_paper_residual_when_batch_is_one():
    for i in range(2):
        z, zb = Z_INV[i : i + 1], Z_BG[i : i + 1]
        resid_norm = -floe_paper(z, zb).item() * z.norm().item()
        assert floe_official(z, zb).item() == pytest.approx(resid_norm, rel=1e-5)


def test_floe_paper_is_bounded():
    z = torch.randn(16, 10) * 1e4
    val = floe_paper(z, torch.randn(16, 10))
    assert -1.0 <= val.item() <= 0.0


def test_background_mask_keeps_low_attention():
    cam = torch.tensor([[[[0.0, 0.1], [0.11, 1.0]]]])
    assert background_mask(cam, 0.1).flatten().tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "variant", [dict(), dict(dhlr="paper", floe="paper"), dict(inverse_loss="ce", bn_mode="eval")]
)
def test_dhat_variants_compose_their_terms_and_train(variant):
    """The loss is CE + λ1·DHLR + λ2·FLOE of its own metrics at every step, and 8 steps on one
    batch lower the adversarial CE at every step."""
    torch.manual_seed(0)
    model = dhat.create_model("small_cnn", width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = create_method("dhat", steps=2, **variant)
    method.setup(RunInfo(10, 64, 1, torch.device("cpu")))
    method.start_epoch(0)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    ces = []
    for _ in range(8):
        loss, metrics = method(model.train(), Batch(x, y, torch.arange(16)))
        terms = metrics["ce"] + method.lambda1 * metrics["dhlr"] + method.lambda2 * metrics["floe"]
        assert loss.item() == pytest.approx(terms.item(), abs=1e-6)
        if method.floe == "paper":
            assert -1.0 <= metrics["floe"].item() <= 0.0
        ces.append(metrics["ce"].item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert {"ce", "dhlr", "floe", "adv_acc", "fg_frac"} <= set(metrics)
    assert all(b < a for a, b in zip(ces, ces[1:])), ces  # (observed: >= 0.03 per step)
    assert ces[-1] < ces[0] - 0.3, ces


def test_every_method_loss_descends_along_its_gradient():
    """For every method: a finite loss whose gradient is its own: one small SGD step (the
    attack inputs held fixed) lowers it. AWP's wrappers perturb again at the new weights."""
    from dhat.methods import list_methods

    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    batch = Batch(x, y, torch.arange(8))
    for name in [m for m in list_methods() if not m.startswith("_")]:  # not the tests' own
        torch.manual_seed(0)
        model = dhat.create_model("small_cnn", width=4).train()
        opts = {"steps": 1} if "steps" in dhat.methods.method_options(name) else {}
        method = create_method(name, **opts)
        method.setup(RunInfo(10, 8, 1, torch.device("cpu")))
        method.start_epoch(0)
        inputs = method.inputs(model, batch)
        loss, _ = method.objective(model, batch, inputs)
        assert math.isfinite(loss.item()), name
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
        method.after_step(model)
        again, _ = method.objective(model, batch, inputs)
        method.after_step(model)
        assert again.item() < loss.item(), (name, loss.item(), again.item())


def test_batched_forward_equals_three_passes():
    import copy

    from dhat.methods.batched import forward_parts

    torch.manual_seed(0)
    a = dhat.create_model("preact_resnet18", width=4).double().train()
    b = copy.deepcopy(a)
    xs = [torch.rand(5, 3, 32, 32, dtype=torch.float64) for _ in range(3)]
    separate = [a(x) for x in xs]
    batched = forward_parts(b, xs)
    for s, t in zip(separate, batched):
        torch.testing.assert_close(s, t, atol=1e-12, rtol=0)
    for k, v in a.state_dict().items():  # running statistics moved exactly as by 3 passes
        torch.testing.assert_close(v, b.state_dict()[k], atol=1e-12, rtol=0)
    sum(s.square().sum() for s in separate).backward()
    sum(t.square().sum() for t in batched).backward()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-10, rtol=1e-10)
    assert all("forward" not in m.__dict__ for m in b.modules())  # patch removed


def test_dhat_batched_forward_gives_the_same_loss():
    import copy

    torch.manual_seed(0)
    model = dhat.create_model("small_cnn", width=4).double().train()
    x, y = torch.rand(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (6,))
    losses = []
    for batched in (False, True):
        m = copy.deepcopy(model)
        method = create_method("dhat", steps=1, batched_forward=batched)
        method.setup(RunInfo(10, 6, 1, torch.device("cpu")))
        torch.manual_seed(1)
        inputs = method.inputs(m, Batch(x, y, torch.arange(6)))
        losses.append(method.objective(m, Batch(x, y, torch.arange(6)), inputs)[0])
    torch.testing.assert_close(losses[0], losses[1], atol=1e-10, rtol=0)

"""UIAT as the DHAT authors ran it (their forwards, hence their BatchNorm statistics), and DHAT
with a separate frozen Grad-CAM network (the official recipe)."""

import copy

import torch
import torch.nn.functional as F

import dhat
from dhat.cam import grad_cam
from dhat.data.loader import Batch
from dhat.methods import RunInfo, create_method
from dhat.methods.dhat import background_mask

K = 3  # attack steps
EPS, ALPHA, EPS_INV, BETA = 8 / 255, 2 / 255, 8 / 255, 3.5


def net64(seed=0):
    torch.manual_seed(seed)
    return dhat.create_model("small_cnn", num_classes=4, width=4).double().train()


def batch64(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 3, 16, 16, generator=g, dtype=torch.float64)
    return Batch(x, torch.arange(8) % 4, torch.arange(8))


def uiat(**opts):
    m = create_method("uiat", steps=K, eps=EPS, step_size=ALPHA, **opts)
    m.setup(RunInfo(num_classes=4, num_train=8, epochs=1, device=torch.device("cpu")))
    m.start_epoch(0)
    return m


def step(method, model, batch):
    """One trainer step: inputs, objective, backward, SGD step, after_step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss, _ = method(model, batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    method.after_step(model)


class Tape:
    """Records every forward of a model: (which input, train mode)."""

    def __init__(self, model, named):
        self.calls, self.named = [], named
        self.handle = model.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        x = args[0]
        name = next(
            (
                n
                for n, t in self.named.items()
                if t is not None and t.shape == x.shape and torch.equal(t, x.detach())
            ),
            "other",
        )
        self.calls.append((name, module.training))


def test_default_uiat_makes_the_authors_forwards_in_their_order():
    model, batch = net64(), batch64()
    method = uiat()
    torch.manual_seed(5)
    inputs = method.inputs(copy.deepcopy(model), batch)  # to know x̂ and x̌
    named = {"x": batch.x, "x_adv": inputs["x_adv"], "x_inv": inputs["x_inv"]}
    tape = Tape(model, named)
    torch.manual_seed(5)
    step(method, model, batch)
    names = [n for n, _ in tape.calls]
    assert all(train for _, train in tape.calls)  # all in train mode, as theirs
    pgd, rest = names[:K], names[K:]
    assert pgd == ["other"] * K  # the K PGD iterates
    expected = (
        ["x"]
        + ["other", "x_adv"] * K  # f(x), then K × (f(x̌_t), f(x̂))
        + ["x_inv", "x_adv"]  # the training forwards
        + ["x_adv"]
    )  # the post-step forward
    assert rest == expected, rest
    assert len(names) == 3 * K + 4


def test_hoisting_gives_identical_weights_with_fewer_forwards():
    results = {}
    for hoist in (False, True):
        model, batch = net64(), batch64()
        method = uiat(hoist_forwards=hoist)
        tape = Tape(model, {})
        torch.manual_seed(5)
        step(method, model, batch)
        results[hoist] = (model, len(tape.calls))
    (a, na), (b, nb) = results[False], results[True]
    assert (na, nb) == (3 * K + 4, 2 * K + 4)
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), k  # float64: bit for bit
    stats = [(k, v) for k, v in a.state_dict().items() if "running" in k]
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in stats)  # BN stats differ


def authors_step(model, x, y, lr=0.1):
    """The DHAT authors' UIAT step (AdverRobust@0fc1c36, train_adversarial_UIAT with
    pgd_invserse_attack_UIAT), written out here as the reference: train mode throughout."""
    x_adv = (x + torch.zeros_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(K):  # pgd_attack: CE, uniform start
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + ALPHA * g.sign(), x - EPS), x + EPS).clamp(
            0, 1
        )
    x_adv = x_adv.detach()
    x_inv = (x + torch.zeros_like(x).uniform_(-EPS_INV, EPS_INV)).clamp(0, 1)
    logits_natural = model(x)
    for _ in range(K):
        x_inv.requires_grad_(True)
        z = model(x_inv)
        loss = (
            F.cross_entropy(z, y)
            + F.kl_div(F.log_softmax(z, 1), F.softmax(logits_natural, 1), reduction="batchmean")
            - F.kl_div(F.log_softmax(z, 1), F.softmax(model(x_adv), 1), reduction="batchmean")
        )
        (g,) = torch.autograd.grad(loss, x_inv)
        x_inv = torch.min(torch.max(x_inv.detach() - ALPHA * g.sign(), x - EPS_INV), x + EPS_INV)
        x_inv = x_inv.clamp(0, 1)
    x_inv = x_inv.detach()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    opt.zero_grad()
    inv_out, adv_out = model(x_inv), model(x_adv)
    loss = F.cross_entropy(adv_out, y) + BETA * F.kl_div(
        F.log_softmax(inv_out, 1), F.softmax(adv_out, 1), reduction="batchmean"
    )
    loss.backward()
    opt.step()
    model(x_adv)  # their accuracy log's forward


def test_bn_running_statistics_equal_the_authors_loop():
    ours, theirs, batch = net64(), net64(), batch64()
    torch.manual_seed(5)
    step(uiat(), ours, batch)
    torch.manual_seed(5)
    authors_step(theirs, batch.x, batch.y)
    for (k, v), w in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.allclose(v.double(), w.double(), rtol=0, atol=1e-10), k


# ----------------------------------------------------------------------------- frozen CAM network
def test_dhat_takes_its_mask_from_a_separate_frozen_network(tmp_path):
    from conftest import make_checkpoint

    from dhat.config import TrainConfig
    from dhat.methods.frozen import load_frozen_models

    path = make_checkpoint(tmp_path / "cam" / "best.pt", num_classes=4, seed=3)
    cfg = TrainConfig(
        dataset="blobs",
        model="small_cnn",
        model_args={"width": 4},
        method="dhat",
        method_args={"cam_model": str(path)},
        out_dir=str(tmp_path),
    )
    frozen = load_frozen_models(cfg.method, cfg.method_args, torch.device("cpu"))
    cam_net = frozen["cam_model"]
    before = {k: v.clone() for k, v in cam_net.state_dict().items()}
    method = create_method("dhat", steps=2, cam_model=str(path))
    method.setup(
        RunInfo(
            num_classes=4, num_train=8, epochs=1, device=torch.device("cpu"), frozen_models=frozen
        )
    )
    method.start_epoch(0)
    torch.manual_seed(0)
    model = dhat.create_model("small_cnn", num_classes=4, width=4).train()
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 4
    batch = Batch(x, y, torch.arange(8))
    inputs = method.inputs(model, batch)
    keep = background_mask(grad_cam(cam_net, x, y), method.omega)
    own = background_mask(grad_cam(model, x, y), method.omega)
    assert torch.equal(inputs["x_bg"], inputs["x_inv"] * keep)  # the frozen network's mask
    assert not torch.equal(keep, own)  # not the trained model's
    loss, _ = method.objective(model, batch, inputs)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(p.grad is None for p in cam_net.parameters())
    for k, v in cam_net.state_dict().items():  # weights and BN stats
        assert torch.equal(v, before[k]), k
    assert not cam_net.training


def test_official_preset_names_the_command_that_makes_its_cam_network(tmp_path, capsys):
    from dhat.cli import main

    assert (
        main(["train", "--preset", "cifar10-dhat-official", "--out-dir", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "dhat train --preset cifar10-standard" in err and len(err.splitlines()) == 1

"""The modern recipe's pieces: weight averaging, generated data, label smoothing, one-cycle lr."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

import dhat
from dhat.checkpoint import read_checkpoint
from dhat.cli import main
from dhat.data.aux import AuxMixer, open_aux
from dhat.data.loader import Batch, BatchLoader
from dhat.methods import RunInfo, create_method, list_methods, method_options
from dhat.train.ema import EMA, ema_decay
from dhat.train.schedule import onecycle_lr

# TINY on 64 training images and 16 validation images
SMALL = [*TINY, "--train-subset", "80", "--val-size", "16"]


def run(tmp_path, *extra, name="run"):
    return main(["train", *SMALL, "--out-dir", str(tmp_path / name), "--no-eval", *extra])


# ----------------------------------------------------------------------------- EMA
def test_ema_equals_a_hand_computation_with_warm_up():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.999, every=2)
    w0 = model[0].weight.detach().clone()
    expect = w0.clone()
    for step in range(1, 7):
        with torch.no_grad():
            model[0].weight.add_(step)  # a known sequence of weights
            model[1].running_mean.fill_(step)  # a buffer: copied, not averaged
        ema.update(model, step)
        if step % 2 == 0:
            d = min(0.999, (1 + step) / (10 + step))
            expect = d * expect + (1 - d) * model[0].weight.detach()
            assert ema.shadow["1.running_mean"].eq(step).all()
    assert torch.allclose(ema.shadow["0.weight"], expect, atol=1e-6)
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11) and ema_decay(0.5, 10**6) == 0.5


def test_ema_run_saves_both_weights_selects_by_ema_and_resumes_exactly(tmp_path):
    args = ["--method", "pgd_at", "--ema-decay", "0.9", "--select", "ema"]
    assert run(tmp_path, *args, name="full") == 0
    assert run(tmp_path, *args, "--epochs", "1", name="cut") == 0
    assert run(tmp_path, *args, "--resume", name="cut") == 0
    a, b = (read_checkpoint(tmp_path / n / "last.pt") for n in ("full", "cut"))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    params = {
        k for k, _ in dhat.create_model("small_cnn", num_classes=4, width=4).named_parameters()
    }
    for k, v in a["extra_models"]["ema"].items():
        assert torch.equal(v, b["extra_models"]["ema"][k]), k
        averaged = not torch.equal(v, a["model"][k])
        assert averaged == (k in params), k  # parameters averaged, buffers copied
    rec = [json.loads(ln) for ln in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert {"val_robust_acc", "val_robust_acc_ema", "val_clean_acc_ema"} <= set(rec[0])
    best = max(rec, key=lambda r: r["val_robust_acc_ema"])
    assert read_checkpoint(tmp_path / "full" / "best.pt")["epoch"] == best["epoch"] - 1
    assert (
        main(
            [
                "eval",
                str(tmp_path / "full" / "best.pt"),
                "--weights",
                "ema",
                "--attacks",
                "clean",
                "--gap-train-images",
                "0",
                "--no-sanity",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "full" / "eval_best_ema_clean.json").is_file()


# ----------------------------------------------------------------------------- generated data
def write_aux(path, n=40, classes=4, size=32, **override):
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "label": np.arange(n) % classes,
    }
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_aux_file_is_memory_mapped(tmp_path):
    p = write_aux(tmp_path / "g.npz")
    images, labels = open_aux(p)
    assert isinstance(images, np.memmap) and images.shape == (40, 32, 32, 3)
    with np.load(p) as ref:
        assert np.array_equal(np.asarray(images), ref["image"])
        assert np.array_equal(labels, ref["label"])


def test_each_batch_has_the_stated_generated_part_and_the_same_real_order(tmp_path):
    images, labels = open_aux(write_aux(tmp_path / "g.npz"))
    x = (torch.rand(50, 3, 32, 32) * 255).to(torch.uint8)
    y = torch.arange(50) % 4
    B, k = 16, round(0.25 * 16)
    real = BatchLoader(
        x, y, B - k, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3)
    )
    alone = [
        b.index
        for b in BatchLoader(
            x, y, B - k, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3)
        )
    ]
    mixer = AuxMixer(
        real,
        images,
        labels,
        k,
        num_classes=4,
        size=(32, 32),
        generator=torch.Generator().manual_seed(4),
    )
    batches = list(mixer)
    assert len(batches) == len(alone)
    for b, idx in zip(batches, alone):
        n_real = len(idx)
        assert len(b.y) == n_real + k and (b.index[n_real:] == -1).all()
        assert torch.equal(b.index[:n_real], idx)  # the real part: an epoch's order
        assert ((b.x >= 0) & (b.x <= 1)).all()


def test_resume_with_generated_data_and_ema_is_bit_exact(tmp_path):
    aux = write_aux(tmp_path / "g.npz")
    args = [
        "--method",
        "pgd_at",
        "--aux-data",
        str(aux),
        "--aux-fraction",
        "0.25",
        "--ema-decay",
        "0.9",
    ]
    assert run(tmp_path, *args, name="full") == 0
    assert run(tmp_path, *args, "--epochs", "1", name="cut") == 0
    assert run(tmp_path, *args, "--resume", name="cut") == 0
    a, b = (read_checkpoint(tmp_path / n / "last.pt") for n in ("full", "cut"))
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    rec = json.loads((tmp_path / "full" / "log.jsonl").read_text().splitlines()[0])
    assert rec["images"] == 64 + 8 * 3  # 64 real images in 3 batches of <= 24, + 8 generated each


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: write_aux(p, image=np.zeros((4, 32, 32), np.uint8)), "uint8 (N, H, W, 3)"),
        (lambda p: write_aux(p, image=np.zeros((4, 32, 32, 3), np.float32)), "uint8 (N, H, W, 3)"),
        (lambda p: write_aux(p, label=np.arange(40) + 10), "labels must lie in [0, 4)"),
        (lambda p: write_aux(p, size=16), "16×16"),
        (
            lambda p: np.savez_compressed(
                p, image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(4, int)
            ),
            "np.savez_compressed",
        ),
        (lambda p: np.savez(p, x=np.zeros(3)), "needs arrays 'image' and 'label'"),
        (lambda p: p.write_bytes(b"nonsense"), "is not an .npz"),
    ],
)
def test_bad_generated_data_is_one_line_and_exit_2(tmp_path, capsys, make, needle):
    p = tmp_path / "g.npz"
    make(p)
    assert run(tmp_path, "--method", "pgd_at", "--aux-data", str(p), "--aux-fraction", "0.5") == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--aux-fraction", "1"], "--aux-fraction must lie in [0, 1)"),
        (["--aux-fraction", "-0.1"], "--aux-fraction must lie in [0, 1)"),
        (["--aux-data", "missing.npz", "--aux-fraction", "0.5"], "does not exist"),
        (["--aux-fraction", "0.5"], "go together"),
        (["--select", "ema"], "--ema-decay"),
        (["--ema-decay", "1"], "--ema-decay must lie in [0, 1)"),
        (["--label-smoothing", "1.5"], "--label-smoothing must lie in [0, 1)"),
    ],
)
def test_bad_recipe_flags_are_one_line(tmp_path, capsys, extra, needle):
    assert run(tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


# ----------------------------------------------------------------------------- label smoothing
class Recorder(torch.nn.Module):
    """Wraps a model and keeps every output of the objective's forwards, in order."""

    def __init__(self, net):
        super().__init__()
        self.net, self.outputs = net, []

    def forward(self, x):
        z = self.net(x)
        self.outputs.append(z.detach())
        return z


OPTS = {
    "sglr": {"es": 100},
    "cfa": {"begin": 100},
    "dhat_cfa": {"begin": 100},
    "awp": {"gamma": 0.0},
    "trades_awp": {"gamma": 0.0},
    "dhat_awp": {"gamma": 0.0},
}


@pytest.mark.parametrize("name", [m for m in list_methods() if not m.startswith("_")])
def test_label_smoothing_is_cross_entropy_label_smoothing_on_every_ce_term(name):
    torch.manual_seed(0)
    net = dhat.create_model("small_cnn", num_classes=4, width=4)
    with torch.no_grad():  # confident logits: smoothing visibly changes the loss
        net.linear.weight.mul_(30)
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 4
    batch = Batch(x, y, torch.arange(8))
    results = {}
    for s in (0.0, 0.2):
        steps = {"steps": 1} if "steps" in method_options(name) else {}
        method = create_method(name, **steps, **OPTS.get(name, {}))
        method.setup(
            RunInfo(
                num_classes=4, num_train=8, epochs=1, device=torch.device("cpu"), label_smoothing=s
            )
        )
        method.start_epoch(0)
        torch.manual_seed(1)
        fresh = copy.deepcopy(net)  # the same weights and BN statistics for both runs
        inputs = method.inputs(fresh, batch)
        rec = Recorder(fresh).train()
        _, metrics = method.objective(rec, batch, inputs)
        results[s] = (metrics, rec.outputs)
    (m0, z0), (m1, z1) = results[0.0], results[0.2]
    assert len(z0) == len(z1)
    k = next(
        i for i, z in enumerate(z0) if torch.allclose(m0["ce"], F.cross_entropy(z, y), atol=1e-6)
    )
    assert torch.allclose(m1["ce"], F.cross_entropy(z1[k], y, label_smoothing=0.2), atol=1e-6)
    assert not torch.allclose(m1["ce"], m0["ce"])
    for term in ("kl", "dhlr", "floe", "margin"):  # the KL-type terms are untouched
        if term in m0:
            assert torch.allclose(m0[term], m1[term], atol=1e-6), term


# ----------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("epochs", [10, 80, 400])
def test_onecycle_matches_torch(epochs):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.2, pct_start=0.025, total_steps=epochs
    )
    for e in range(epochs):
        assert onecycle_lr(0.2, e, epochs) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        if e < epochs - 1:
            sched.step()


def test_modern_presets_are_recipes(tmp_path):
    from dhat.config import build_train_config

    for name in ("cifar10-dhat-modern", "cifar10-trades-modern"):
        cfg = build_train_config(preset=name)
        assert (cfg.model, cfg.ema_decay, cfg.label_smoothing) == ("wrn_28_10", 0.999, 0.1)
        assert cfg.lr_schedule == "onecycle" and cfg.nesterov and cfg.aux_fraction == 0
    aux = write_aux(tmp_path / "g.npz", classes=10)
    cfg = build_train_config(preset="cifar10-dhat-modern", flags={"aux_data": str(aux)})
    assert cfg.aux_fraction == 0.7

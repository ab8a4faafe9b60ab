"""Outside models: `--model package.module:factory` and the `dhat.models` entry points; inputs
that are not float pixels in [0, 1] refused with one line."""

import json
import textwrap

import pytest
import torch

import dhat
from dhat.checkpoint import read_checkpoint
from dhat.cli import main
from dhat.config import TrainConfig
from dhat.data import load_dataset
from dhat.errors import UserError
from dhat.models import create_model, list_models
from dhat.models.registry import OutsideModel

PKG = "dhat_outside_pkg"  # a name no other test imports
NETS = """
import torch
from torch import nn


class Net(nn.Module):
    \"\"\"timm-shaped: normalised inputs -> logits; no dhat import.\"\"\"

    def __init__(self, num_classes=10, width=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def make_net(num_classes=10, width=4):
    return Net(num_classes, width)


def make_net_with_cam(num_classes=10, width=4):
    net = Net(num_classes, width)
    net.cam_layer = "features"
    return net


def make_pretrained(num_classes=10):
    net = Net(num_classes)
    net.pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.6, 0.7)}
    return net


def make_self_normalising(num_classes=10, mean=None, std=None):
    net = Net(num_classes)
    net.stats = (mean, std)
    return net


def make_nothing(num_classes=10):
    return 42
"""


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    """The package {PKG}.nets on sys.path, and a distribution listing `tiny_outside_net` in
    the dhat.models entry-point group (as `pip install` of a plugin would)."""
    import sys

    root = tmp_path_factory.mktemp("outside")
    (root / PKG).mkdir()
    (root / PKG / "__init__.py").write_text("")
    (root / PKG / "nets.py").write_text(textwrap.dedent(NETS))
    info = root / "dhat_outside_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: dhat-outside-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        f"[dhat.models]\ntiny_outside_net = {PKG}.nets:make_net_with_cam\n"
    )
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


TRAIN = ["train", "--dataset", "blobs", "--epochs", "1", "--batch-size", "32", "--val-size", "40"]
TRAIN += ["--steps", "1", "--val-steps", "1", "--milestones", "--device", "cpu", "--no-progress"]
TRAIN += ["--no-eval", "--threads", "1"]


def test_train_and_eval_an_outside_model_from_the_cli(pkg, tmp_path, capsys):
    run = tmp_path / "run"
    name = f"{PKG}.nets:make_net"
    argv = [*TRAIN, "--model", name, "--model-arg", "width=3", "--method", "pgd_at"]
    assert main([*argv, "--out-dir", str(run)]) == 0
    card_path = tmp_path / "card.json"
    code = main(
        ["eval", str(run / "best.pt"), "--attacks", "clean", "pgd3", "--no-sanity"]
        + ["--no-curves", "--n-test", "64", "--out", str(card_path), "--no-progress"]
    )
    assert code == 0, capsys.readouterr().err
    card = json.loads(card_path.read_text())
    # Oracle: the user's own class, its weights from the checkpoint, normalised by hand with
    # the dataset's statistics (blobs: 0.5, 0.25), on the 64 test images.
    state = read_checkpoint(run / "best.pt")
    assert state["model_spec"]["name"] == name
    from dhat_outside_pkg.nets import Net

    net = Net(4, 3)
    net.load_state_dict({k[4:]: v for k, v in state["model"].items() if k.startswith("net.")})
    data = load_dataset("blobs")
    x, y = data.test_x.float() / 255, data.test_y
    with torch.no_grad():
        acc = (net.eval()((x - 0.5) / 0.25).argmax(1) == y).float().mean().item()
    assert card["accuracy"]["clean"] == pytest.approx(acc, abs=1e-6)
    assert card["model"] == name


def test_dhat_needs_a_cam_layer_and_says_which_flag(pkg, tmp_path, capsys):
    argv = [*TRAIN, "--model", f"{PKG}.nets:make_net", "--method", "dhat"]
    assert main([*argv, "--out-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names no Grad-CAM layer" in err[0] and "--cam-layer" in err[0]
    assert "features" in err[0]  # a module to name
    assert not (tmp_path / "r").exists()
    # named on the command line (without the wrapper's `net.`), or by the network itself
    TrainConfig(
        dataset="blobs", model=f"{PKG}.nets:make_net", method_args={"cam_layer": "features"}
    )
    TrainConfig(dataset="blobs", model=f"{PKG}.nets:make_net_with_cam")


def test_cam_layer_and_normalisation_come_from_the_model(pkg):
    m = create_model(f"{PKG}.nets:make_net_with_cam", num_classes=3, mean=[0.4] * 3, std=[0.2] * 3)
    assert isinstance(m, OutsideModel) and m.cam_layer == "net.features"
    assert torch.equal(m.mean.flatten(), torch.tensor([0.4] * 3))  # the dataset's
    x = torch.rand(2, 3, 8, 8)
    cam = dhat.grad_cam(m, x, torch.tensor([0, 2]))  # the default layer
    assert cam.shape == (2, 1, 8, 8)
    torch.testing.assert_close(dhat.grad_cam(m, x, torch.tensor([0, 2]), layer="features"), cam)
    p = create_model(f"{PKG}.nets:make_pretrained", num_classes=3, mean=[0.4] * 3, std=[0.2] * 3)
    assert torch.allclose(p.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))  # its weights' own
    assert torch.allclose(p.std.flatten(), torch.tensor([0.5, 0.6, 0.7]))
    with torch.no_grad():  # = the network on (x - mean) / std
        want = p.net((x - p.mean) / p.std)
    torch.testing.assert_close(p(x), want)
    s = create_model(
        f"{PKG}.nets:make_self_normalising", num_classes=3, mean=[0.4] * 3, std=[0.2] * 3
    )
    assert s.net.stats == ([0.4] * 3, [0.2] * 3)  # handed over: it normalises itself
    assert torch.equal(s.mean.flatten(), torch.zeros(3)) and torch.equal(
        s.std.flatten(), torch.ones(3)
    )


def test_an_entry_point_names_a_model(pkg):
    assert "tiny_outside_net" in list_models()
    m = create_model("tiny_outside_net", num_classes=5, width=2)
    assert m(torch.rand(2, 3, 8, 8)).shape == (2, 5) and m.cam_layer == "net.features"
    TrainConfig(dataset="blobs", model="tiny_outside_net", model_args={"width": 2}, method="dhat")


@pytest.mark.parametrize(
    "name, message",
    [
        ("no_such_pkg_xyz.mod:f", "cannot import no_such_pkg_xyz.mod"),
        (f"{PKG}.nets:nope", "has no nope"),
        ("os:system", "package.module:factory"),  # the standard library is not a model
        (f"{PKG}.nets:make_nothing", "returned a int, not a torch.nn.Module"),
    ],
)
def test_a_bad_outside_name_is_one_line(pkg, name, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(dataset="blobs", model=name)


def test_a_misspelt_model_argument_names_the_factorys(pkg):
    with pytest.raises(UserError, match="width"):
        TrainConfig(dataset="blobs", model=f"{PKG}.nets:make_net", model_args={"widht": 3})


# --- inputs that are not float pixels in [0, 1] -------------------------------------------------
@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return dhat.create_model("small_cnn", num_classes=4, width=4).eval()


def calls(model):
    y = torch.tensor([0, 1])
    kw = dict(eps=8 / 255, step_size=2 / 255, steps=1)
    return {
        "model": lambda x: model(x),
        "pgd": lambda x: dhat.pgd(model, x, y, **kw),
        "inverse_pgd": lambda x: dhat.inverse_pgd(model, x, y, loss="ce", **kw),
        "grad_cam": lambda x: dhat.grad_cam(model, x, y),
    }


@pytest.mark.parametrize("what", ["model", "pgd", "inverse_pgd", "grad_cam"])
def test_uint8_inputs_are_refused(small, what):
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(UserError, match=r"float pixels in \[0, 1\], got a uint8 tensor"):
        calls(small)[what](x)


@pytest.mark.parametrize("what", ["pgd", "inverse_pgd", "grad_cam"])
@pytest.mark.parametrize("bad", ["255", "normalised", "nan"])
def test_out_of_range_inputs_are_refused(small, what, bad):
    x = torch.rand(2, 3, 8, 8)
    if bad == "255":
        x = x * 255
    elif bad == "normalised":
        x = (x - 0.5) / 0.25
    else:
        x[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match=r"outside \(or NaN\)"):
        calls(small)[what](x)
    calls(small)[what](x.nan_to_num().clamp(0, 1))  # the same call in range goes through

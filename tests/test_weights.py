"""Plain state dicts of the common CIFAR ResNet layout, wrappers, safetensors and `dhat export`."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dhat
from dhat.cli import main
from dhat.errors import UserError
from dhat.models.weights import load_weights_file, parse_normalization

pytestmark = pytest.mark.usefixtures("one_thread")


# An independent reference: the widespread CIFAR ResNet-18 (kuangliu/pytorch-cifar layout), no
# normalisation inside, a width knob so the test stays small.
class RefBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class RefResNet18(nn.Module):
    def __init__(self, num_classes=10, w=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        chans, cin, layers = [w, 2 * w, 4 * w, 8 * w], w, []
        for i, c in enumerate(chans):
            layers.append(nn.Sequential(RefBlock(cin, c, 1 if i == 0 else 2), RefBlock(c, c, 1)))
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    ref = RefResNet18(num_classes=10, w=8)
    with torch.no_grad():  # non-trivial BN statistics
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return ref.eval(), torch.rand(6, 3, 32, 32)


def _logits_equal(model, ref, x, mean=(0, 0, 0), std=(1, 1, 1)):
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.allclose(model(x), ref((x - m) / s), atol=1e-5, rtol=1e-5)


def test_reference_resnet_state_dict_loads_with_identical_logits(tmp_path, reference):
    ref, x = reference
    f = tmp_path / "ref.pt"
    torch.save(ref.state_dict(), f)
    model, info = load_weights_file(f, "resnet18", model_args={"width": 8}, normalization="none")
    assert _logits_equal(model, ref, x) and info["num_classes"] == 10 and not model.training
    model, _ = load_weights_file(f, "resnet18", model_args={"width": 8}, normalization="cifar10")
    assert _logits_equal(model, ref, x, *parse_normalization("cifar10"))


def test_wrappers_prefixes_and_renamed_keys(tmp_path, reference):
    ref, x = reference
    sd = {}
    for k, v in ref.state_dict().items():
        k = k.replace("shortcut.", "downsample.").replace("linear.", "fc.")
        if not k.endswith("num_batches_tracked"):  # as saved by old PyTorch versions
            sd["module." + k] = v
    f = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": sd, "best_acc": 0.5}, f)
    model, info = load_weights_file(
        f,
        "resnet18",
        num_classes=10,
        model_args={"width": 8},
        normalization="0.5,0.5,0.5/0.25,0.25,0.25",
    )
    assert _logits_equal(model, ref, x, (0.5,) * 3, (0.25,) * 3) and info["renamed_keys"] > 0
    f2 = tmp_path / "model_wrapped.pt"
    torch.save({"model": ref.state_dict()}, f2)
    assert _logits_equal(
        load_weights_file(f2, "resnet18", model_args={"width": 8}, normalization="none")[0], ref, x
    )


def test_safetensors_and_one_line_mismatch_errors(tmp_path, reference):
    from safetensors.torch import save_file

    ref, x = reference
    f = tmp_path / "ref.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(f))
    model, _ = load_weights_file(f, "resnet18", model_args={"width": 8}, normalization="none")
    assert _logits_equal(model, ref, x)
    with pytest.raises(UserError) as e:  # wrong width: shapes differ
        load_weights_file(f, "resnet18", model_args={"width": 16}, normalization="none")
    assert "shape of conv1.weight" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError) as e:  # wrong architecture: missing / unexpected keys
        load_weights_file(f, "small_cnn", normalization="none")
    msg = str(e.value)
    assert (
        "missing" in msg and "unexpected" in msg and "features.0.weight" in msg and "\n" not in msg
    )
    with pytest.raises(UserError, match="--normalization"):  # no mean/std and none given
        load_weights_file(f, "resnet18", model_args={"width": 8})
    bad = tmp_path / "pickled.pt"
    torch.save(ref, bad)  # a whole pickled module: refused by weights_only loading
    with pytest.raises(UserError, match="weights-only"):
        load_weights_file(bad, "resnet18", normalization="none")


def test_cli_eval_weights_file(tmp_path, capsys):
    torch.manual_seed(0)
    ref = RefResNet18(num_classes=4, w=4).eval()
    f = tmp_path / "tp.pt"
    torch.save({"state_dict": ref.state_dict()}, f)
    out = tmp_path / "card.json"
    assert (
        main(
            [
                "eval",
                "--weights-file",
                str(f),
                "--model",
                "resnet18",
                "--model-arg",
                "width=4",
                "--normalization",
                "none",
                "--dataset",
                "blobs",
                "--attacks",
                "clean",
                "pgd10",
                "--n-test",
                "16",
                "--gap-train-images",
                "0",
                "--no-sanity",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    card = json.loads(out.read_text())
    assert (
        card["source"] == "state-dict" and card["num_classes"] == 4 and card["model"] == "resnet18"
    )
    assert card["normalization"]["mean"] == [0, 0, 0] and card["n_test"] == 16
    assert card["sanity"] == [] and len(card["checkpoint_sha256"]) == 64
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--weights-file",
                str(f),
                "--model",
                "resnet18",
                "--dataset",
                "blobs",
                "--normalization",
                "none",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "does not fit" in err and len(err.strip().splitlines()) == 1


def test_export_then_reload_gives_identical_logits(tmp_path):
    from dhat.checkpoint import load_model, save_checkpoint
    from dhat.export import load_exported

    torch.manual_seed(0)
    model = dhat.create_model(
        "small_cnn", num_classes=4, width=4, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)
    )
    fawa = dhat.create_model(
        "small_cnn", num_classes=4, width=4, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)
    )
    spec = {
        "name": "small_cnn",
        "num_classes": 4,
        "mean": [0.4, 0.5, 0.6],
        "std": [0.2, 0.3, 0.25],
        "kwargs": {"width": 4},
    }
    ckpt = tmp_path / "run" / "best.pt"
    save_checkpoint(
        ckpt,
        {
            "model": model.state_dict(),
            "model_spec": spec,
            "epoch": 2,
            "method": "dhat",
            "config": {"dataset": "blobs", "eps": 8 / 255},
            "extra_models": {"fawa": fawa.state_dict()},
        },
    )
    out = tmp_path / "exp" / "model.safetensors"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["architecture"] == "small_cnn" and meta["kwargs"] == {"width": 4}
    assert meta["num_classes"] == 4 and meta["mean"] == pytest.approx([0.4, 0.5, 0.6])
    from safetensors.torch import load_file

    sd = load_file(str(out))
    assert "mean" in sd and "std" in sd
    plain = dhat.create_model(
        meta["architecture"], num_classes=meta["num_classes"], **meta["kwargs"]
    )
    plain.load_state_dict(sd)  # any code that builds the same architecture
    x = torch.rand(5, 3, 32, 32)
    ref = load_model(ckpt)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), ref(x))
        assert torch.equal(load_exported(out)(x), ref(x))
    out2 = tmp_path / "exp" / "fawa.safetensors"
    assert main(["export", str(ckpt), "--out", str(out2), "--weights", "fawa"]) == 0
    with torch.no_grad():
        assert torch.equal(load_exported(out2)(x), load_model(ckpt, weights="fawa")(x))
    # the sidecar makes --model unnecessary for `dhat eval --weights-file`
    _, info = load_weights_file(out)
    assert info["model"] == "small_cnn" and info["normalization_source"] == "from the state dict"


def test_export_refuses_existing_outputs_and_never_touches_a_foreign_sidecar(tmp_path, capsys):
    from conftest import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    out = tmp_path / "exp" / "model.safetensors"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    before = out.read_bytes(), out.with_suffix(".json").read_bytes()
    capsys.readouterr()
    assert main(["export", str(ckpt), "--out", str(out)]) == 2  # exists, no --force
    err = capsys.readouterr().err
    assert "exists: pass --force" in err and len(err.strip().splitlines()) == 1
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == before
    assert main(["export", str(ckpt), "--out", str(out), "--force"]) == 0  # its own sidecar
    # an unrelated .json where the sidecar goes: refused even with --force, nothing written
    other = tmp_path / "exp" / "notes.safetensors"
    notes = other.with_suffix(".json")
    notes.write_text('{"my": "notes"}')
    for extra in ([], ["--force"]):
        capsys.readouterr()
        assert main(["export", str(ckpt), "--out", str(other), *extra]) == 2
        err = capsys.readouterr().err
        assert "not written by `dhat export`" in err and len(err.strip().splitlines()) == 1
    assert notes.read_text() == '{"my": "notes"}' and not other.exists()
    notes.write_bytes(b"\xff\xfe\x00binary")  # unreadable as JSON: still not ours
    assert main(["export", str(ckpt), "--out", str(other), "--force"]) == 2
    assert notes.read_bytes() == b"\xff\xfe\x00binary"
    capsys.readouterr()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["export", str(ckpt), "--out", str(blocker / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "x"

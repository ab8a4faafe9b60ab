"""RobustBench interoperability: its WideResNet / PreActResNet / ResNet state dicts load into
ours with identical logits, and `dhat export --robustbench` writes what RobustBench reads.

Two references: independent networks written here with RobustBench's key names (always run),
and RobustBench's own classes (`pip install --no-deps robustbench==1.1.1`; skipped without
it). Only its architecture files are loaded, by path: `import robustbench` itself needs
timm, torchvision and more.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_checkpoint
from torch import nn

from dhat.checkpoint import load_model
from dhat.cli import main
from dhat.errors import UserError
from dhat.models.weights import load_weights_file

pytestmark = pytest.mark.usefixtures("one_thread")


def robustbench_architecture(name: str):
    """RobustBench's `model_zoo/architectures/<name>.py`, executed alone (its package
    `__init__` imports timm and torchvision)."""
    spec = importlib.util.find_spec("robustbench")  # locates it without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("robustbench is not installed (pip install --no-deps robustbench==1.1.1)")
    path = Path(spec.submodule_search_locations[0]) / "model_zoo" / "architectures" / f"{name}.py"
    mod_spec = importlib.util.spec_from_file_location(f"_robustbench_{name}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so eval mode is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return net.eval()


def same_logits(ours, theirs, x, mean=None, std=None) -> bool:
    """ours(x) == theirs((x - mean) / std) within 1e-5 (theirs without normalisation)."""
    with torch.no_grad():
        if mean is not None:
            x_in = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        return torch.allclose(ours(x), theirs(x if mean is None else x_in), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------- independent references
class RefWideBlock(nn.Module):
    """Pre-activation WRN block; the 1x1 shortcut reads the activated input."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if cin != cout:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return y + (self.convShortcut(a) if hasattr(self, "convShortcut") else x)


class RefStage(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                RefWideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class RefWRN(nn.Module):
    """RobustBench's WRN key names (`blockN.layer.M`, `convShortcut`, `fc`); `sub_block1`
    built but unused, as in TRADES' model."""

    def __init__(self, depth=10, widen=2, num_classes=10, sub_block1=True):
        super().__init__()
        n, ch = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = RefStage(n, ch[0], ch[1], 1)
        if sub_block1:
            self.sub_block1 = RefStage(n, ch[0], ch[1], 1)
        self.block2, self.block3 = RefStage(n, ch[1], ch[2], 2), RefStage(n, ch[2], ch[3], 2)
        self.bn1, self.fc = nn.BatchNorm2d(ch[3]), nn.Linear(ch[3], num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(out.mean((2, 3)))


class RefPreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        a = F.relu(self.bn1(x))
        shortcut = self.shortcut(a) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + shortcut


class RefPreActResNet18(nn.Module):
    """RobustBench's PreActResNet key names (`layerN.M`, `shortcut.0`, `bn`, `linear`) with
    the final BN + ReLU (its `bn_before_fc=True`), at width `w`."""

    def __init__(self, w=8, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        cin, stages = w, []
        for i, c in enumerate([w, 2 * w, 4 * w, 8 * w]):
            stages.append(
                nn.Sequential(RefPreActBlock(cin, c, 1 if i == 0 else 2), RefPreActBlock(c, c, 1))
            )
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn, self.linear = nn.BatchNorm2d(8 * w), nn.Linear(8 * w, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(F.relu(self.bn(out)).mean((2, 3)))


class Normalised(nn.Module):
    """RobustBench's wrapper idiom: buffers mu/sigma, then the network under `model.`."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.register_buffer("mu", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor(std).view(1, 3, 1, 1))
        self.model = model

    def forward(self, x):
        return self.model((x - self.mu) / self.sigma)


@pytest.fixture(scope="module")
def x():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_reference_wrn_with_sub_block1_and_prefixes(tmp_path, x):
    torch.manual_seed(0)
    ref = randomise_bn(RefWRN(depth=10, widen=2))
    f = tmp_path / "wrn.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, f)
    model, info = load_weights_file(
        f, "wide_resnet", model_args={"depth": 10, "widen": 2}, normalization="none"
    )
    assert same_logits(model, ref, x) and not model.training
    assert info["dropped_keys"] and all(k.startswith("sub_block1.") for k in info["dropped_keys"])
    assert info["renamed_keys"] > 0


def test_reference_preact_in_a_normalising_wrapper(tmp_path, x):
    torch.manual_seed(0)
    ref = Normalised(randomise_bn(RefPreActResNet18(w=8)), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)).eval()
    f = tmp_path / "preact.pt"
    torch.save(ref.state_dict(), f)  # mu, sigma, model.conv1.weight, ...
    model, info = load_weights_file(f, "preact_resnet18", model_args={"width": 8})
    assert same_logits(model, ref, x)
    assert info["normalization_source"] == "from the state dict"
    assert info["mean"] == pytest.approx([0.5, 0.4, 0.3])


# --------------------------------------------------------------- RobustBench's own classes
def test_robustbench_wide_resnet(tmp_path, x):
    rb = robustbench_architecture("wide_resnet")
    torch.manual_seed(0)
    theirs = randomise_bn(rb.WideResNet(depth=16, num_classes=10, widen_factor=2, sub_block1=True))
    f = tmp_path / "rb_wrn.pt"
    torch.save({"state_dict": theirs.state_dict()}, f)
    ours, info = load_weights_file(
        f, "wide_resnet", model_args={"depth": 16, "widen": 2}, normalization="none"
    )
    assert same_logits(ours, theirs, x) and info["dropped_keys"]
    ours, _ = load_weights_file(
        f, "wide_resnet", model_args={"depth": 16, "widen": 2}, normalization="cifar10"
    )
    assert same_logits(ours, theirs, x, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


@pytest.mark.parametrize("layout", ["v2", "out_shortcut"])
def test_robustbench_preact_resnet(tmp_path, x, layout):
    """Both RobustBench layouts that match ours: PreActBlockV2 and PreActBlock with
    out_shortcut=True, each with bn_before_fc=True (standard width 64: theirs has no knob)."""
    rb = robustbench_architecture("resnet")
    torch.manual_seed(0)
    block = rb.PreActBlockV2 if layout == "v2" else rb.PreActBlock
    theirs = randomise_bn(
        rb.PreActResNet(
            block,
            [2, 2, 2, 2],
            num_classes=10,
            bn_before_fc=True,
            out_shortcut=layout == "out_shortcut",
        )
    )
    f = tmp_path / "rb_preact.pt"
    torch.save(theirs.state_dict(), f)
    ours, _ = load_weights_file(f, "preact_resnet18", normalization="none")
    assert same_logits(ours, theirs, x[:2])


def test_robustbench_resnet18_and_a_layout_we_refuse(tmp_path, x):
    rb = robustbench_architecture("resnet")
    torch.manual_seed(0)
    theirs = randomise_bn(rb.ResNet18())
    f = tmp_path / "rb_resnet18.pt"
    torch.save({"state_dict": theirs.state_dict()}, f)
    assert same_logits(load_weights_file(f, "resnet18", normalization="none")[0], theirs, x[:2])
    # Wong2020Fast's layout (no final BN; shortcut on the raw input) is another network
    f2 = tmp_path / "rb_wong.pt"
    torch.save(rb.PreActResNet(rb.PreActBlock, [2, 2, 2, 2]).state_dict(), f2)
    with pytest.raises(UserError) as e:
        load_weights_file(f2, "preact_resnet18", normalization="none")
    assert "missing" in str(e.value) and "bn.weight" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------- dhat export --robustbench
def fake_aa_card(ckpt, dataset="cifar10", n_aa=1000):
    """A validated result card of `ckpt` with made-up clean/PGD/AutoAttack numbers."""
    from dhat.config import EvalConfig
    from dhat.eval.card import save_card
    from dhat.eval.evaluate import build_card, default_card_path, load_for_eval

    cfg = EvalConfig(checkpoint=str(ckpt), attacks=["clean", "pgd10", "aa"], device="cpu")
    _, info = load_for_eval(cfg, "cpu")
    result = {
        "n_test": 10000,
        "n_aa": n_aa,
        "accuracy": {"clean": 0.8123, "pgd10": 0.5, "aa": 0.4567},
        "autoattack": {"n": n_aa, "robust_accuracy": 0.4567},
    }
    card = build_card(result, info, cfg, dataset=dataset, eps=8 / 255, seconds=1.0)
    return save_card(card, default_card_path(cfg, str(ckpt)))


@pytest.fixture(scope="module")
def wrn_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("rb") / "run" / "best.pt"
    return make_checkpoint(
        path, model="wide_resnet", num_classes=10, model_args={"depth": 10, "widen": 1}
    )


def test_export_needs_a_card_with_autoattack(wrn_checkpoint, capsys):
    ckpt = str(wrn_checkpoint)
    assert main(["export", ckpt, "--robustbench"]) == 2
    err = capsys.readouterr().err
    assert (
        "no result card" in err
        and "--attacks clean pgd10 cw aa" in err
        and len(err.splitlines()) == 1
    )
    assert (
        main(
            [
                "eval",
                ckpt,
                "--attacks",
                "clean",
                "pgd10",
                "--n-test",
                "16",  # its shapes data
                "--gap-train-images",
                "0",
                "--no-sanity",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["export", ckpt, "--robustbench"]) == 2
    err = capsys.readouterr().err
    assert "no aa accuracy" in err and f"dhat eval {ckpt} --attacks clean pgd10 cw aa" in err
    assert main(["export", ckpt, "--rb-field", "venue=X"]) == 2  # a RobustBench flag without it
    assert "--robustbench" in capsys.readouterr().err


def test_export_round_trip_and_model_card(wrn_checkpoint, tmp_path, capsys):
    card_path = fake_aa_card(wrn_checkpoint)
    out = tmp_path / "sub"
    assert (
        main(
            [
                "export",
                str(wrn_checkpoint),
                "--robustbench",
                "--out",
                str(out),
                "--model-name",
                "Test2026Dhat",
                "--rb-field",
                "venue=Unpublished",
                "--rb-field",
                "reported=47.1",
            ]
        )
        == 0
    )
    pt = out / "models" / "cifar10" / "Linf" / "Test2026Dhat.pt"
    card = json.loads((out / "model_info" / "cifar10" / "Linf" / "Test2026Dhat.json").read_text())
    assert set(card) == {
        "link",
        "name",
        "authors",
        "additional_data",
        "number_forward_passes",
        "dataset",
        "venue",
        "architecture",
        "eps",
        "clean_acc",
        "reported",
        "autoattack_acc",
        "footnote",
        "unreliable",
    }
    assert card["architecture"] == "WideResNet-10-1" and card["eps"] == "8/255"
    assert (card["clean_acc"], card["autoattack_acc"], card["reported"]) == (
        "81.23",
        "45.67",
        "47.1",
    )
    assert card["venue"] == "Unpublished" and card["unreliable"] is False
    assert card["additional_data"] is False and card["number_forward_passes"] == 1
    assert "AutoAttack on the first 1000" in card["footnote"]
    # the file as RobustBench's load_model reads it: torch.load(...)['state_dict']
    sd = torch.load(pt, map_location="cpu", weights_only=True)["state_dict"]
    assert {"mu", "sigma", "block2.layer.0.convShortcut.weight", "fc.weight"} <= set(sd)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ref = load_model(wrn_checkpoint)
    back, info = load_weights_file(pt)  # architecture from the sidecar
    explicit, _ = load_weights_file(pt, "wide_resnet", model_args={"depth": 10, "widen": 1})
    with torch.no_grad():
        assert torch.equal(back(x), ref(x)) and torch.equal(explicit(x), ref(x))
    assert info["normalization_source"] == "from the state dict"
    meta = json.loads(pt.with_suffix(".json").read_text())
    assert meta["key_names"] == "robustbench" and "WideResNet(depth=10" in meta["robustbench_class"]
    assert meta["result_card"] == str(card_path)


def test_exported_state_dict_loads_into_robustbench_wide_resnet(wrn_checkpoint, tmp_path):
    rb = robustbench_architecture("wide_resnet")
    fake_aa_card(wrn_checkpoint)
    assert main(["export", str(wrn_checkpoint), "--robustbench", "--out", str(tmp_path)]) == 0
    (pt,) = (tmp_path / "models" / "cifar10" / "Linf").glob("*.pt")

    class Submitted(
        rb.WideResNet
    ):  # RobustBench's idiom for a normalising model (its Wong2020FastNet)
        def __init__(self):
            super().__init__(depth=10, num_classes=10, widen_factor=1)
            self.register_buffer("mu", torch.zeros(1, 3, 1, 1))
            self.register_buffer("sigma", torch.ones(1, 3, 1, 1))

        def forward(self, x):
            return super().forward((x - self.mu) / self.sigma)

    theirs = Submitted()
    theirs.load_state_dict(
        torch.load(pt, map_location="cpu", weights_only=True)["state_dict"]
    )  # strict
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs.eval()(x), load_model(wrn_checkpoint)(x), atol=1e-5, rtol=1e-5)


def test_export_refuses_another_files_card_and_non_robustbench_datasets(wrn_checkpoint, tmp_path):
    from dhat.export import export_robustbench

    other = make_checkpoint(
        tmp_path / "other" / "best.pt",
        model="wide_resnet",
        num_classes=10,
        model_args={"depth": 10, "widen": 1},
        seed=1,
    )
    with pytest.raises(UserError, match="another file"):
        export_robustbench(other, tmp_path / "o", card=fake_aa_card(wrn_checkpoint))
    fake_aa_card(wrn_checkpoint, dataset="blobs")
    with pytest.raises(UserError, match="no 'blobs' leaderboard"):
        export_robustbench(wrn_checkpoint, tmp_path / "o")
    paths = export_robustbench(wrn_checkpoint, tmp_path / "o", fields={"dataset": "cifar10"})
    assert paths["model_info"].parent == tmp_path / "o" / "model_info" / "cifar10" / "Linf"

"""RobustBench interoperability: its WideResNet / PreActResNet / ResNet state dicts load into
ours with identical logits, and `dhat export --robustbench` writes what RobustBench reads.

Two references: independent networks written here with RobustBench's key names (always run),
and RobustBench's own classes (`pip install --no-deps robustbench==1.1.1`; skipped without
it). Its package `__init__` needs torchvision and more, so its files are loaded by path, or
(`robustbench_zoo`) under stand-in parent packages that do not run those `__init__`s.
"""

import importlib
import importlib.util
import json
import sys
import types
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
    path = _robustbench_root() / "model_zoo" / "architectures" / f"{name}.py"
    mod_spec = importlib.util.spec_from_file_location(f"_robustbench_{name}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _robustbench_root() -> Path:
    spec = importlib.util.find_spec("robustbench")  # locates it without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("robustbench is not installed (pip install --no-deps robustbench==1.1.1)")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def robustbench_zoo():
    """RobustBench's own model zoo: {"cifar10": its L∞ rows, "cifar100": ...}, each row's
    `model` its constructor. Its parent packages are stand-ins (their `__init__` imports
    torchvision), as is `CARD_resnet` (torchvision's ResNet; no L∞ row uses it); the
    architecture modules and `cifar10.py`/`cifar100.py` are RobustBench's files, unchanged.
    `sys.modules` is restored afterwards."""
    root = _robustbench_root()
    saved = {
        k: v for k, v in sys.modules.items() if k == "robustbench" or k.startswith("robustbench.")
    }
    for k in saved:
        del sys.modules[k]
    try:
        for name, sub in (
            ("robustbench", root),
            ("robustbench.model_zoo", root / "model_zoo"),
            ("robustbench.model_zoo.architectures", root / "model_zoo" / "architectures"),
        ):
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(sub)]
            sys.modules[name] = pkg
        card = types.ModuleType("robustbench.model_zoo.architectures.CARD_resnet")
        card.LRR_ResNet = card.WidePreActResNet = object
        sys.modules[card.__name__] = card
        try:
            c10 = importlib.import_module("robustbench.model_zoo.cifar10")
            c100 = importlib.import_module("robustbench.model_zoo.cifar100")
            linf = importlib.import_module("robustbench.model_zoo.enums").ThreatModel.Linf
        except ImportError as e:
            pytest.skip(f"RobustBench's model zoo needs a missing package: {e}")
        yield {"cifar10": c10.cifar_10_models[linf], "cifar100": c100.cifar_100_models[linf]}
    finally:
        for k in [k for k in sys.modules if k == "robustbench" or k.startswith("robustbench.")]:
            del sys.modules[k]
        sys.modules.update(saved)


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


def save_like_robustbench(net: nn.Module, path: Path, drop=()) -> Path:
    """`net`'s state dict as RobustBench's checkpoints hold it: {'state_dict': ...} with the
    DataParallel prefix `module.`; `drop`: buffers its files lack (e.g. mu, sigma)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {"module." + k: v for k, v in net.state_dict().items() if k not in drop}
    torch.save({"state_dict": sd}, path)
    return path


@pytest.mark.parametrize("activation, normalization", [("silu", "cifar10"), ("relu", "cifar100")])
def test_robustbench_dm_wide_resnet(tmp_path, x, activation, normalization):
    """DMWideResNet (SiLU = their Swish, or ReLU) at a tiny depth/width; its normalisation is
    a constructor argument, not in the file, so --normalization names it."""
    dm = robustbench_architecture("dm_wide_resnet")
    stats = {
        "cifar10": (dm.CIFAR10_MEAN, dm.CIFAR10_STD),
        "cifar100": (dm.CIFAR100_MEAN, dm.CIFAR100_STD),
    }
    torch.manual_seed(0)
    act = dm.Swish if activation == "silu" else nn.ReLU
    theirs = randomise_bn(
        dm.DMWideResNet(
            num_classes=10,
            depth=10,
            width=2,
            activation_fn=act,
            mean=stats[normalization][0],
            std=stats[normalization][1],
        )
    )
    f = save_like_robustbench(theirs, tmp_path / "dm.pt")
    args = {"depth": 10, "width": 2, "activation": activation}
    ours, info = load_weights_file(f, "dm_wrn", model_args=args, normalization=normalization)
    assert same_logits(ours, theirs, x) and info["renamed_keys"] == 0
    other = (
        "relu" if activation == "silu" else "silu"
    )  # the wrong activation: same keys, other outputs
    wrong, _ = load_weights_file(
        f, "dm_wrn", model_args={**args, "activation": other}, normalization=normalization
    )
    assert not same_logits(wrong, theirs, x)


def test_robustbench_dm_preact_resnet(tmp_path, x):
    dm = robustbench_architecture("dm_wide_resnet")
    torch.manual_seed(0)
    theirs = randomise_bn(
        dm.DMPreActResNet(num_classes=10, depth=18, width=0, activation_fn=dm.Swish)
    )
    f = save_like_robustbench(theirs, tmp_path / "dmp.pt")
    ours, _ = load_weights_file(f, "dm_preact", normalization="cifar10")
    assert same_logits(ours, theirs, x[:2])


def test_dm_models_default_cam_layer_is_their_final_activation(tmp_path, x):
    """`dhat attention`'s default layer on a DM model: the map after the last BatchNorm +
    activation, the same tensor as RobustBench's `relu` (its final Swish) output."""
    from dhat.cam import grad_cam

    dm = robustbench_architecture("dm_wide_resnet")
    torch.manual_seed(0)
    theirs = randomise_bn(
        dm.DMWideResNet(num_classes=10, depth=10, width=1, activation_fn=dm.Swish)
    )
    f = save_like_robustbench(theirs, tmp_path / "dm.pt")
    ours, _ = load_weights_file(
        f, "dm_wrn", model_args={"depth": 10, "width": 1}, normalization="cifar10"
    )
    seen = {}
    h1 = ours.get_submodule(ours.cam_layer).register_forward_hook(
        lambda m, i, o: seen.update(ours=o)
    )
    h2 = theirs.relu.register_forward_hook(lambda m, i, o: seen.update(theirs=o))
    with torch.no_grad():
        ours(x), theirs(x)
    h1.remove(), h2.remove()
    assert seen["ours"].shape == (3, 64, 8, 8) and torch.allclose(
        seen["ours"], seen["theirs"], atol=1e-5
    )
    cam = grad_cam(ours, x, torch.tensor([0, 1, 2]))
    assert cam.shape == (3, 1, 32, 32) and (cam.flatten(1).amax(1) > cam.flatten(1).amin(1)).all()


# RobustBench rows built by its own model zoo, saved in its layout, loaded by row name alone.
# Each shows one thing: a DM row found from the file name in RobustBench's folder layout;
# per-image standardisation; a normalisation that the file lacks (and an std that is not
# CIFAR's); a name that both datasets have, told apart by the file's class count.
ROW_CASES = [
    ("cifar10", "Rebuffi2021Fixing_R18_ddpm", "layout"),
    ("cifar10", "Ding2020MMA", "layout"),
    ("cifar10", "Engstrom2019Robustness", "name"),
    ("cifar100", "Rice2020Overfitting", "name"),
]


@pytest.mark.parametrize("dataset, row, how", ROW_CASES, ids=[c[1] for c in ROW_CASES])
def test_robustbench_rows_load_with_robustbench_outputs(
    robustbench_zoo, tmp_path, x, dataset, row, how
):
    torch.manual_seed(0)
    theirs = randomise_bn(robustbench_zoo[dataset][row]["model"]())
    if how == "layout":  # where RobustBench's load_model(model_dir=tmp_path) keeps it
        f = save_like_robustbench(theirs, tmp_path / dataset / "Linf" / f"{row}.pt")
        ours, info = load_weights_file(f)
    else:  # as its files are: without the wrapper's mu/sigma (its known_failing_models)
        f = save_like_robustbench(theirs, tmp_path / "weights.pt", drop=("mu", "sigma"))
        ours, info = load_weights_file(f, row)
    assert same_logits(ours, theirs, x[:2])
    assert (
        info["robustbench_model"] == f"{dataset}/Linf/{row}"
        and info["num_classes"] == theirs(x[:1]).shape[1]
    )


def test_robustbench_in_forward_transforms_are_matched_or_refused(robustbench_zoo, tmp_path, x):
    """Hendrycks2019Using (2x - 1 in its forward) is normalisation 0.5/0.5; Ding2020MMA
    (per-image standardisation) is per_image_wrn. A file that keeps either name is refused
    with one line when the flags describe another input transform."""
    zoo = robustbench_zoo["cifar10"]
    torch.manual_seed(0)
    hendrycks = randomise_bn(zoo["Hendrycks2019Using"]["model"](depth=10, widen_factor=1))
    f = save_like_robustbench(hendrycks, tmp_path / "h.pt")
    ours, _ = load_weights_file(
        f, "wide_resnet", model_args={"depth": 10, "widen": 1}, normalization="0.5/0.5"
    )
    assert same_logits(ours, hendrycks, x)
    ding = randomise_bn(zoo["Ding2020MMA"]["model"](depth=10, widen_factor=1))
    f = save_like_robustbench(ding, tmp_path / "d.pt")
    ours, info = load_weights_file(f, "per_image_wrn", model_args={"depth": 10, "widen": 1})
    assert same_logits(ours, ding, x) and "per-image" in info["normalization_source"]
    plain, _ = load_weights_file(
        f, "wide_resnet", model_args={"depth": 10, "widen": 1}, normalization="none"
    )
    assert not same_logits(plain, ding, x)  # what loading it as a plain WRN would give
    with pytest.raises(UserError, match="standardises each image"):
        load_weights_file(
            f, "per_image_wrn", model_args={"depth": 10, "widen": 1}, normalization="cifar10"
        )
    # the same mistakes on files that keep RobustBench's names: refused, naming the fix
    h_file = save_like_robustbench(hendrycks, tmp_path / "Hendrycks2019Using.pt")
    d_file = save_like_robustbench(ding, tmp_path / "Ding2020MMA.pt")
    cases = [
        (
            h_file,
            dict(
                model_name="wide_resnet",
                model_args={"depth": 28, "widen": 10},
                normalization="none",
            ),
            "0.5/0.5",
        ),
        (h_file, dict(model_name="Hendrycks2019Using", normalization="cifar10"), "0.5/0.5"),
        (
            d_file,
            dict(
                model_name="wide_resnet", model_args={"depth": 28, "widen": 4}, normalization="none"
            ),
            "--model Ding2020MMA",
        ),
        (d_file, dict(model_name="Ding2020MMA", model_args={"depth": 10}), "drop --model-arg"),
    ]
    with pytest.raises(UserError, match="does not fit"):  # wrn_28_10 is the row's network:
        load_weights_file(h_file, "wrn_28_10", normalization="0.5/0.5")  # only the size is off
    for path, kw, fix in cases:
        with pytest.raises(UserError) as e:
            load_weights_file(path, **kw)
        assert fix in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_rows_without_a_dhat_architecture_are_refused_with_the_reason(tmp_path):
    f = tmp_path / "Wong2020Fast.pt"
    torch.save({"state_dict": {"linear.weight": torch.zeros(10, 4)}}, f)
    for call in (lambda: load_weights_file(f), lambda: load_weights_file(f, "Chen2020Adversarial")):
        with pytest.raises(UserError) as e:
            call()
        assert "cannot be loaded" in str(e.value) and "\n" not in str(e.value)
    g = tmp_path / "four.pt"
    torch.save({"state_dict": {"linear.weight": torch.zeros(4, 4)}}, g)
    with pytest.raises(UserError, match="--num-classes 10 or 100"):  # in both tables, 4 classes
        load_weights_file(g, "Rice2020Overfitting")
    with pytest.raises(UserError, match="Gowal2020Uncovering_70_16"):  # a typo: the nearest name
        load_weights_file(f, "Gowal2020Uncovering_70_61")


def test_every_robustbench_linf_row_is_mapped_onto_its_architecture(robustbench_zoo):
    """Our table against RobustBench's model zoo, all 57 + 24 CIFAR L∞ rows, built on the
    meta device: each supported row's state dict (as its file holds it) maps onto the dhat
    architecture's keys and shapes exactly, with the same activation; the rest are refused."""
    import dhat
    from dhat.models import robustbench as rb
    from dhat.models.weights import map_keys

    assert {d: set(rows) for d, rows in robustbench_zoo.items()} == {
        d: set(r) for d, r in rb.ROWS.items()
    }
    counts = {"supported": 0, "refused": 0}
    for dataset, rows in robustbench_zoo.items():
        n_cls = rb.CLASSES[dataset]
        for name, entry in rows.items():
            row = rb.ROWS[dataset][name]
            if row.refused:
                counts["refused"] += 1
                with pytest.raises(UserError, match="cannot be loaded"):
                    rb.lookup(name, n_cls, dataset)
                continue
            counts["supported"] += 1
            assert rb.lookup(name, n_cls, dataset) == row
            with torch.device("meta"):
                theirs = entry["model"]()
                ours = dhat.create_model(row.arch, num_classes=n_cls, **row.kwargs)
            own = {k: v.shape for k, v in ours.state_dict().items() if k not in ("mean", "std")}
            file_sd = {k: v for k, v in theirs.state_dict().items() if k not in ("mu", "sigma")}
            mapped, _ = map_keys(file_sd, own)
            assert {k: v.shape for k, v in mapped.items()} == own, name
            swish = any(type(m).__name__ == "Swish" for m in theirs.modules())
            assert swish == (row.kwargs.get("activation") == "silu"), name
    assert counts == {"supported": 73, "refused": 8}  # CIFAR-10: 49 of 57; CIFAR-100: all 24


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
    assert "no result card with AutoAttack" in err
    assert f"dhat eval {ckpt} --attacks clean pgd10 cw aa" in err
    assert main(["export", ckpt, "--rb-field", "venue=X"]) == 2  # a RobustBench flag without it
    assert "--robustbench" in capsys.readouterr().err


def export_cli(ckpt, out, *extra):
    return main(["export", str(ckpt), "--robustbench", "--out", str(out), *extra])


def read_card(out, name):
    return json.loads((out / "model_info" / "cifar10" / "Linf" / f"{name}.json").read_text())


def test_export_round_trip_and_model_card(wrn_checkpoint, tmp_path, capsys):
    card_path = fake_aa_card(wrn_checkpoint)  # AutoAttack on 1000 of the 10000 test images
    out = tmp_path / "sub"
    assert (
        export_cli(
            wrn_checkpoint,
            out,
            "--model-name",
            "Test2026Dhat",
            "--venue",
            "Unpublished",
            "--reported",
            "47.1",
        )
        == 0
    )
    pt = out / "models" / "cifar10" / "Linf" / "Test2026Dhat.pt"
    card = read_card(out, "Test2026Dhat")
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
    assert card["venue"] == "Unpublished" and card["name"] == card["authors"] == "unknown"
    assert card["unreliable"] is True  # AutoAttack on a subset
    assert card["additional_data"] is False and card["number_forward_passes"] == 1
    assert "AutoAttack on the first 1000 of the 10000 test images" in card["footnote"]
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
    assert meta["key_names"] == "robustbench" and meta["robustbench_class"] == "Test2026DhatNet"
    assert meta["result_card"] == str(card_path) and meta["autoattack_n"] == 1000


def test_export_card_defaults_are_unknown_and_full_autoattack_is_reliable(wrn_checkpoint, tmp_path):
    fake_aa_card(wrn_checkpoint, n_aa=10000)
    assert export_cli(wrn_checkpoint, tmp_path, "--model-name", "Full") == 0
    card = read_card(tmp_path, "Full")
    assert card["unreliable"] is False and card["footnote"] is None and card["reported"] == ""
    assert [card[k] for k in ("link", "name", "authors", "venue")] == ["unknown"] * 4
    assert "DHAT" not in json.dumps(card) and "Zhang" not in json.dumps(card)
    assert (
        export_cli(
            wrn_checkpoint,
            tmp_path / "p",
            "--paper",
            "A Title",
            "--authors",
            "A. Author, B. Author",
            "--paper-link",
            "https://example.org/p",
        )
        == 0
    )
    (card_path,) = (tmp_path / "p" / "model_info" / "cifar10" / "Linf").glob("*.json")
    card = json.loads(card_path.read_text())
    assert (card["name"], card["authors"], card["link"], card["venue"]) == (
        "A Title",
        "A. Author, B. Author",
        "https://example.org/p",
        "unknown",
    )


EXPORT_CASES = [
    ("wide_resnet", {"depth": 10, "widen": 1}),
    ("dm_wrn", {"depth": 10, "width": 1}),
    ("dm_wrn", {"depth": 10, "width": 1, "activation": "relu"}),
    ("dm_preact", {"width": 64}),
    ("preact_resnet18", {"width": 64}),
    ("resnet18", {"width": 64}),
]


@pytest.mark.parametrize(
    "arch, args",
    EXPORT_CASES,
    ids=[f"{a}-{'-'.join(map(str, k.values()))}" for a, k in EXPORT_CASES],
)
def test_export_loads_strictly_into_the_class_its_sidecar_names(
    robustbench_zoo, tmp_path, arch, args
):
    """The sidecar's `robustbench_code`, run as written against RobustBench's own
    architecture files, defines `robustbench_class`; the exported state dict loads into it
    with strict=True and gives our outputs (normalisation included)."""
    ckpt = make_checkpoint(
        tmp_path / "run" / "best.pt", model=arch, num_classes=10, model_args=args
    )
    model = load_model(ckpt)
    with torch.no_grad():  # a normalisation that matters
        model.mean.copy_(torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        model.std.copy_(torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1))
    randomise_bn(model)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["model"] = model.state_dict()
    torch.save(state, ckpt)
    fake_aa_card(ckpt)
    assert export_cli(ckpt, tmp_path / "rb", "--model-name", "Someone2026Robust") == 0
    (pt,) = (tmp_path / "rb" / "models" / "cifar10" / "Linf").glob("*.pt")
    meta = json.loads(pt.with_suffix(".json").read_text())
    namespace: dict = {}
    exec(meta["robustbench_code"], namespace)  # noqa: S102  (the sidecar's published class)
    theirs = namespace[meta["robustbench_class"]]()
    theirs.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True)["state_dict"])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(theirs.eval()(x), load_model(ckpt)(x), atol=1e-5, rtol=1e-5)


def test_export_never_replaces_without_force_nor_a_foreign_sidecar(
    wrn_checkpoint, tmp_path, capsys
):
    fake_aa_card(wrn_checkpoint)
    out = tmp_path / "rb"
    assert export_cli(wrn_checkpoint, out, "--model-name", "M") == 0
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    capsys.readouterr()
    assert export_cli(wrn_checkpoint, out, "--model-name", "M", "--venue", "X") == 2
    err = capsys.readouterr().err
    assert "exists: pass --force" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in files} == before
    assert export_cli(wrn_checkpoint, out, "--model-name", "M", "--venue", "X", "--force") == 0
    assert read_card(out, "M")["venue"] == "X"
    # a .json beside the weights that dhat did not write: never replaced, even with --force
    foreign = out / "models" / "cifar10" / "Linf" / "N.json"
    foreign.write_text('{"mine": true}')
    capsys.readouterr()
    assert export_cli(wrn_checkpoint, out, "--model-name", "N", "--force") == 2
    err = capsys.readouterr().err
    assert "not written by `dhat export`" in err and len(err.strip().splitlines()) == 1
    assert foreign.read_text() == '{"mine": true}' and not foreign.with_suffix(".pt").exists()
    assert not (out / "model_info" / "cifar10" / "Linf" / "N.json").exists()


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


@pytest.mark.parametrize(
    "name, kw, what",
    [
        ("dm_wrn", {"depth": 12}, "depth must be 6n"),
        ("dm_wrn", {"width": 0}, "width"),
        ("dm_wrn", {"activation": "gelu"}, "activation"),
        ("dm_preact", {"depth": 50}, "18 or 34"),
    ],
)
def test_dm_model_arguments_are_checked(name, kw, what):
    import dhat

    with pytest.raises(UserError, match=what) as e:
        dhat.create_model(name, **kw)
    assert "\n" not in str(e.value)

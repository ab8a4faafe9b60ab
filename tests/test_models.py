import pytest
import torch
from conftest import FULL_SIZE_ALIASES, small_model_kwargs

import dhat
from dhat.errors import UserError
from dhat.models import cam_layer, list_models, model_defaults


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name):
    """Every parameter gets a finite, non-zero gradient; the fixed-size WRNs (no size knob)
    are built full-size on the meta device, where shapes and gradient flow are checked (their
    values are wide_resnet's case, the same network: test_fixed_size_wrns_are_wide_resnet)."""
    torch.manual_seed(0)
    meta = name in FULL_SIZE_ALIASES
    if meta:
        with torch.device("meta"):
            model = dhat.create_model(name, num_classes=7)
        x = torch.rand(2, 3, 32, 32, device="meta")
    else:
        model = dhat.create_model(name, num_classes=7, **small_model_kwargs(name))
        x = torch.rand(3, 3, 32, 32)
    out = model(x)
    assert out.shape == (len(x), model.num_classes) == (len(x), 7)
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert p.grad.shape == p.shape, pname
        if not meta:
            assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{name}.{pname} has an all-zero gradient"
    assert isinstance(cam_layer(model), torch.nn.Module)


@pytest.mark.parametrize(
    "name, count", [("wrn_28_10", 36_479_194), ("wrn_34_10", 46_160_474)]
)  # the published WRN-28-10 / WRN-34-10 sizes (10 classes), e.g. RobustBench's and TRADES'
def test_fixed_size_wrns_are_wide_resnet_at_full_size(name, count):
    base, kw = FULL_SIZE_ALIASES[name]
    with torch.device("meta"):
        alias, ref = dhat.create_model(name), dhat.create_model(base, **kw)
    assert type(alias) is type(ref) and repr(alias) == repr(ref)  # layers, strides, paddings
    shapes = lambda m: {k: (v.shape, v.dtype) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(alias) == shapes(ref)
    assert sum(p.numel() for p in alias.parameters()) == count


def test_normalisation_inside_model():
    model = dhat.create_model("small_cnn", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.full((1, 3, 4, 4), 0.75)
    assert torch.allclose(model.normalise(x), torch.ones(1, 3, 4, 4))
    assert "mean" in model.state_dict() and "std" in model.state_dict()


def test_unknown_model_suggests_nearest():
    with pytest.raises(UserError, match="preact_resnet18"):
        dhat.create_model("preact_resnet_18")


def test_wrn_depth_and_width_are_parameters():
    m = dhat.create_model("wide_resnet", depth=16, widen=2)
    assert len(m.block1) == 2 and m.fc.in_features == 128


def test_list_models_pattern():
    assert list_models("wrn*") == ["wrn_28_10", "wrn_34_10"]
    assert list_models("*resnet*") == ["preact_resnet18", "resnet18", "resnet50", "wide_resnet"]
    assert list_models() == list_models("*") and list_models("nothing*") == []


VARIANTS = [(n, {}) for n in list_models()] + [
    (n, {"variant": "imagenet"}) for n in ("resnet50", "vgg16_bn", "inception_v3")
]


@pytest.mark.parametrize(
    "name, variant", VARIANTS, ids=[f"{n}-{v.get('variant', 'default')}" for n, v in VARIANTS]
)
def test_model_defaults_match_the_built_model(name, variant):
    """The declared Grad-CAM layer is the model's, and the declared input size runs."""
    d = model_defaults(name, **variant)
    if name in FULL_SIZE_ALIASES:  # no size knob: the layer and the input size on the meta device
        with torch.device("meta"):
            model = dhat.create_model(name, num_classes=3, **variant)
            out = model(torch.empty(1, *d.input_size))
        assert model.cam_layer == d.cam_layer and isinstance(cam_layer(model), torch.nn.Module)
        assert out.shape == (1, 3)
        return
    kw = {**small_model_kwargs(name), **variant}
    if name == "vgg16_bn" and variant:
        kw["hidden"] = 8
    model = dhat.create_model(name, num_classes=3, **kw).eval()
    assert model.cam_layer == d.cam_layer and isinstance(cam_layer(model), torch.nn.Module)
    assert torch.allclose(model.mean.flatten(), torch.tensor(d.mean))
    with torch.no_grad():
        assert model(torch.rand(1, *d.input_size)).shape == (1, 3)


def test_imagenet_variants_default_to_imagenet_statistics():
    d = model_defaults("resnet50", variant="imagenet")
    assert (d.dataset, d.input_size, d.num_classes) == ("imagenet", (3, 224, 224), 1000)
    assert d.mean == (0.485, 0.456, 0.406) and d.std == (0.229, 0.224, 0.225)
    assert model_defaults("inception_v3", variant="imagenet").input_size == (3, 299, 299)
    m = dhat.create_model("resnet50", variant="imagenet", width=4)
    assert torch.allclose(m.mean.flatten(), torch.tensor(d.mean)) and m.num_classes == 10
    cifar = model_defaults("resnet50")  # the CIFAR variant (the factory's default)
    assert cifar.dataset == "cifar10" and cifar.input_size == (3, 32, 32)


def test_create_model_dataset_and_backward_compatibility():
    from dhat.models import CIFAR10_MEAN, CIFAR10_STD, NORMALIZATION, ModelCfg

    m = dhat.create_model("small_cnn", width=4)  # as before: CIFAR-10 statistics, 10 classes
    assert torch.allclose(m.mean.flatten(), torch.tensor(CIFAR10_MEAN)) and m.num_classes == 10
    assert torch.allclose(m.std.flatten(), torch.tensor(CIFAR10_STD))
    m = dhat.create_model("wide_resnet", depth=10, widen=1, dataset="cifar100")
    assert m.num_classes == 100
    assert torch.allclose(m.mean.flatten(), torch.tensor(NORMALIZATION["cifar100"][0]))
    m = dhat.create_model("small_cnn", 7, (0.5,) * 3, width=4, dataset="imagenet")  # explicit wins
    assert m.num_classes == 7 and torch.allclose(m.mean.flatten(), torch.full((3,), 0.5))
    assert torch.allclose(m.std.flatten(), torch.tensor(NORMALIZATION["imagenet"][1]))
    assert model_defaults("small_cnn", "imagefolder64").mean == NORMALIZATION["imagenet"][0]
    with pytest.raises(UserError, match="no fixed normalisation"):
        dhat.create_model("small_cnn", dataset="shapes")
    m = dhat.create_model("small_cnn", mean=(0.5,) * 3, std=(0.2,) * 3, dataset="shapes", width=4)
    assert m.num_classes == 10
    assert set(ModelCfg().normalization) == {"cifar10", "cifar100"}
    with pytest.raises(UserError, match="preact_resnet18"):
        model_defaults("preact_resnet_18")

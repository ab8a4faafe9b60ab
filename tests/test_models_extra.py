"""ResNet-50, VGG-16-BN, Inception-v3 (CIFAR and ImageNet variants) and the BN-free small CNN."""

import pytest
import torch

import dhat
from dhat.cam import grad_cam
from dhat.models import cam_layer, list_models

# narrow versions for speed: (name, kwargs, input side, expected Grad-CAM map side)
CASES = [
    ("resnet50", dict(width=8), 32, 4),
    ("resnet50", dict(width=8, variant="imagenet"), 64, 2),
    ("vgg16_bn", dict(width=8), 32, 2),
    ("vgg16_bn", dict(width=8, variant="imagenet", hidden=32), 64, 4),
    ("inception_v3", dict(width_mult=0.125), 32, 7),
    ("inception_v3", dict(width_mult=0.125, variant="imagenet"), 75, 1),
]
IDS = [f"{n}-{kw.get('variant', 'cifar')}" for n, kw, _, _ in CASES]


def test_registered():
    assert {"resnet50", "vgg16_bn", "inception_v3"} <= set(list_models())


@pytest.mark.parametrize("name, kw, side, cam_side", CASES, ids=IDS)
def test_forward_backward_cam_layer(name, kw, side, cam_side):
    torch.manual_seed(0)
    model = dhat.create_model(name, num_classes=5, **kw)
    x = torch.rand(2, 3, side, side)
    seen = {}
    handle = cam_layer(model).register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    out = model(x)
    handle.remove()
    assert out.shape == (2, 5)
    assert seen["a"].dim() == 4 and seen["a"].shape[-2:] == (cam_side, cam_side)
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    cam = grad_cam(model, x, torch.tensor([0, 1]))
    assert cam.shape == (2, 1, side, side) and torch.isfinite(cam).all()


@pytest.mark.parametrize(
    "name, kw, side",
    [
        ("resnet50", dict(width=4), 48),
        ("resnet50", dict(width=4, variant="imagenet"), 96),
        ("vgg16_bn", dict(width=4), 48),
        ("vgg16_bn", dict(width=4, variant="imagenet", hidden=8), 40),
        ("inception_v3", dict(width_mult=0.0625), 40),
        ("inception_v3", dict(width_mult=0.0625, variant="imagenet"), 128),
    ],
)
def test_any_resolution(name, kw, side):
    model = dhat.create_model(name, num_classes=3, **kw).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, side, side)).shape == (1, 3)


@pytest.mark.parametrize(
    "name, variant, classes, count",
    [
        ("resnet50", "imagenet", 1000, 25_557_032),  # torchvision resnet50
        ("vgg16_bn", "imagenet", 1000, 138_365_992),  # torchvision vgg16_bn
        ("inception_v3", "imagenet", 1000, 23_834_568),  # torchvision inception_v3 minus AuxLogits
        ("resnet50", "cifar", 10, 23_520_842),
        ("vgg16_bn", "cifar", 10, 14_728_266),
    ],
)
def test_parameter_counts_match_the_reference(name, variant, classes, count):
    with torch.device("meta"):
        model = dhat.create_model(name, num_classes=classes, variant=variant)
    assert sum(p.numel() for p in model.parameters()) == count


def test_torchvision_style_names():
    with torch.device("meta"):
        vgg = dhat.create_model("vgg16_bn", num_classes=1000, variant="imagenet")
        inc = dhat.create_model("inception_v3", num_classes=1000, variant="imagenet")
        res = dhat.create_model("resnet50", variant="imagenet")
    keys = set(vgg.state_dict())
    assert {
        "features.0.weight",
        "features.1.running_mean",
        "features.40.weight",
        "classifier.0.weight",
        "classifier.6.bias",
        "mean",
        "std",
    } <= keys
    assert vgg.cam_layer == "features.42" and isinstance(cam_layer(vgg), torch.nn.ReLU)
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.bn.running_var", "fc.weight"} <= set(
        inc.state_dict()
    )
    assert "layer4.2.conv3.weight" in res.state_dict() and res.conv1.kernel_size == (7, 7)


def test_cifar_stems():
    assert dhat.create_model("resnet50", width=4).conv1.kernel_size == (3, 3)
    inc = dhat.create_model("inception_v3", width_mult=0.0625)
    assert inc.Conv2d_1a_3x3.conv.stride == (1, 1) and isinstance(inc.maxpool1, torch.nn.Identity)


@pytest.mark.parametrize("name", ["resnet50", "vgg16_bn", "inception_v3"])
def test_unknown_variant_is_refused(name):
    with pytest.raises(ValueError, match="variant"):
        dhat.create_model(name, variant="tiny")


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = dhat.create_model("resnet50", num_classes=4, width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = model(x)
        b = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_small_cnn_without_batch_norm():
    plain = dhat.create_model("small_cnn", width=4, norm="none")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert all(c.bias is not None for c in plain.modules() if isinstance(c, torch.nn.Conv2d))
    x = torch.rand(4, 3, 32, 32)
    plain.train()
    out_full = plain(x)
    out_split = torch.cat([plain(x[:2]), plain(x[2:])])
    torch.testing.assert_close(out_full, out_split)  # no batch coupling
    default = dhat.create_model("small_cnn", width=4)
    assert isinstance(default.features[1], torch.nn.BatchNorm2d)  # default unchanged
    with pytest.raises(ValueError, match="norm"):
        dhat.create_model("small_cnn", norm="ln")

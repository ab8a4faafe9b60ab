import torch
import torch.nn.functional as F
from torch import nn

from dhat.cam import grad_cam, minmax
from dhat.models import Classifier


class LinearCAMNet(Classifier):
    """features = 1x1 conv (known weights) on the image; logits = W · spatial mean(features).

    Closed form: ∂z_c/∂A_k = W_ck / (h·w) everywhere, so the Grad-CAM weights are W_ck/(h·w)
    and the map is ReLU(Σ_k W_ck A_k / (h·w)), then min-max / resize / min-max.
    """

    cam_layer = "features"

    def __init__(self):
        super().__init__(3, mean=(0, 0, 0), std=(1, 1, 1))
        self.features = nn.Conv2d(3, 4, 1, stride=2, bias=False)  # 8x8 -> 4x4
        self.head = nn.Linear(4, 3, bias=False)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.features.weight.copy_(torch.randn(4, 3, 1, 1, generator=g))
            self.head.weight.copy_(torch.randn(3, 4, generator=g))
        self.bn = nn.BatchNorm1d(3)  # present only to check the mode is restored

    def logits(self, x):
        a = self.features(x)
        return self.head(a.mean((2, 3)))


def hand_cam(model, x, target, size):
    a = F.conv2d(x, model.features.weight, stride=2)                     # (B, 4, h, w)
    h, w = a.shape[-2:]
    wts = model.head.weight[target] / (h * w)                    # (B, 4)
    cam = F.relu((wts[:, :, None, None] * a).sum(1, keepdim=True))
    cam = minmax(cam)
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return minmax(cam)


def test_grad_cam_matches_closed_form():
    model = LinearCAMNet()
    x = torch.rand(5, 3, 8, 8)
    target = torch.tensor([0, 1, 2, 0, 1])
    cam = grad_cam(model, x, target)
    with torch.no_grad():
        expected = hand_cam(model, x, target, (8, 8))
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-5)
    assert cam.shape == (5, 1, 8, 8) and cam.min() >= 0 and cam.max() <= 1


def test_minmax_per_image_and_zero_map():
    cam = torch.stack([torch.tensor([[1.0, 3.0], [2.0, 5.0]]), torch.zeros(2, 2)])[:, None]
    out = minmax(cam)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]), atol=1e-6, rtol=0)
    assert torch.equal(out[1], torch.zeros(1, 2, 2))


def test_grad_cam_leaves_no_trace():
    model = LinearCAMNet().train()
    model.bn.eval()
    x = torch.rand(2, 3, 8, 8)
    grad_cam(model, x, torch.tensor([0, 1]))
    assert model.training and not model.bn.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not model.features._forward_hooks
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_renormalise_changes_upsampled_map_only_slightly():
    model = LinearCAMNet()
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    t = torch.tensor([0, 1, 2, 0])
    a = grad_cam(model, x, t, renormalise=True)
    b = grad_cam(model, x, t, renormalise=False)
    peak = a.amax((1, 2, 3))
    assert bool((((peak - 1).abs() < 1e-5) | (peak == 0)).all())  # re-stretched to 1 (or all-zero)
    torch.testing.assert_close(a, minmax(b), atol=1e-6, rtol=0)  # the second min-max pass
    assert (a - b).abs().max() > 0  # upsampling a 4x4 map to 8x8 does need it

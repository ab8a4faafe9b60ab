import torch
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


def minmax_oracle(cam):
    """Per-image min-max as pytorch-grad-cam's scale_cam_image writes it, (m - min) /
    (1e-7 + max(m - min)), image by image in float64 (independent of dhat.cam.minmax)."""
    out = torch.empty(cam.shape, dtype=torch.float64)
    for i, m in enumerate(cam.double()):
        shifted = m - m.min()
        out[i] = shifted / (1e-7 + shifted.max())
    return out


def bilinear_weights(n_in, n_out):
    """(n_out, n_in) 1-D linear interpolation weights with align_corners=False: output pixel i
    samples source coordinate (i + 0.5)·n_in/n_out − 0.5, clamped at 0, between its two
    neighbours (the last one repeated at the edge)."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(src)
        i1, frac = min(i0 + 1, n_in - 1), src - i0
        w[i, i0] += 1 - frac
        w[i, i1] += frac
    return w


def upsample_oracle(cam, size):
    """Bilinear upsampling of (B, 1, h, w) maps, pixel by pixel as a weighted sum of the four
    neighbours: out[p, q] = Σ_ij Wh[p, i]·Ww[q, j]·cam[i, j]."""
    wh, ww = bilinear_weights(cam.shape[-2], size[0]), bilinear_weights(cam.shape[-1], size[1])
    return torch.einsum("pi,bcij,qj->bcpq", wh, cam.double(), ww)


def test_the_upsampling_oracle_by_hand():
    a = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    # rows (and columns) of the 4x4 output sample source 0, 0.25, 0.75, 1 (edges clamped)
    want = torch.tensor(
        [[0.0, 0.25, 0.75, 1.0], [0.5, 0.75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]]
    )
    torch.testing.assert_close(upsample_oracle(a, (4, 4))[0, 0], want.double(), atol=1e-12, rtol=0)
    assert bilinear_weights(4, 8).sum(1).eq(1).all()


def hand_cam(model, x, target, size):
    """The closed form, all in float64 without dhat.cam: the 1x1 stride-2 conv is a channel
    mix of every other pixel, the Grad-CAM weights are W_ck / (h·w)."""
    conv = model.features.weight.detach().double()[:, :, 0, 0]  # (4, 3)
    a = torch.einsum("kc,bchw->bkhw", conv, x.double()[:, :, ::2, ::2])  # (B, 4, h, w)
    h, w = a.shape[-2:]
    wts = model.head.weight.detach().double()[target] / (h * w)  # (B, 4)
    cam = (wts[:, :, None, None] * a).sum(1, keepdim=True).clamp(min=0)
    return minmax_oracle(upsample_oracle(minmax_oracle(cam), size))


def test_grad_cam_matches_closed_form():
    model = LinearCAMNet()
    torch.manual_seed(0)
    x = torch.rand(5, 3, 8, 8)
    target = torch.tensor([0, 1, 2, 0, 1])
    cam = grad_cam(model, x, target)
    expected = hand_cam(model, x, target, (8, 8)).float()
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-5)
    assert cam.shape == (5, 1, 8, 8) and cam.min() >= 0 and cam.max() <= 1
    assert (cam.amax((1, 2, 3)) > 0.999).all()  # no all-zero map: the test has teeth


def test_minmax_per_image_and_zero_map():
    cam = torch.stack([torch.tensor([[1.0, 3.0], [2.0, 5.0]]), torch.zeros(2, 2)])[:, None]
    out = minmax(cam)
    torch.testing.assert_close(
        out[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]), atol=1e-6, rtol=0
    )
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
    torch.testing.assert_close(a, minmax_oracle(b).float(), atol=1e-6, rtol=0)  # 2nd min-max
    assert (a - b).abs().max() > 0  # upsampling a 4x4 map to 8x8 does need it

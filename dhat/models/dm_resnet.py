"""DeepMind's WideResNet and PreActResNet (Gowal et al. 2020; Rebuffi et al. 2021), SiLU or ReLU.

The networks behind most of RobustBench's strongest CIFAR rows (its `DMWideResNet` and
`DMPreActResNet`). Module names follow theirs, so their state dicts load as they are:
`init_conv`, `layer.G.block.B.{batchnorm_0, conv_0, batchnorm_1, conv_1, shortcut}`,
`batchnorm`, `logits` (WRN); `conv_2d`, `layer_N.B.{batchnorm_0, conv_2d_1, batchnorm_1,
conv_2d_2, shortcut}`, `batchnorm`, `logits` (PreActResNet). Their first convolution of a
block pads TensorFlow's 'SAME' way: (1, 1, 1, 1) at stride 1, (0, 1, 0, 1) at stride 2. The
PreActResNet's shortcut is a 3x3 convolution of the block's raw input. Their normalisation is
a constructor argument (not in the state dict): here the usual `mean`/`std` buffers. The
global average pool equals theirs (`avg_pool2d(8)` / `avg_pool2d(4)`) on 32 px inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Classifier, ModelArgError, check_choice, check_int
from .registry import ModelCfg, register_model

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU}


def _activation(model: str, name: str) -> type[nn.Module]:
    check_choice(model, "activation", name, tuple(ACTIVATIONS))
    return ACTIVATIONS[name]


def _head(model: nn.Module) -> nn.Module:
    """The linear layer stored as `logits` (a name Classifier's method shadows for getattr)."""
    head = model._modules["logits"]
    assert head is not None  # set in __init__
    return head


def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow's 'SAME' padding of a 3x3 convolution at stride 1 or 2."""
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class DMWideBlock(nn.Module):
    """Pre-activation block; with a channel change the activated input also feeds the 1x1
    shortcut, otherwise the raw input is added."""

    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.stride = stride
        self.batchnorm_0, self.act_0 = nn.BatchNorm2d(cin), act()
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1, self.act_1 = nn.BatchNorm2d(cout), act()
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act_0(self.batchnorm_0(x))
        out = self.conv_1(self.act_1(self.batchnorm_1(self.conv_0(_same_pad(a, self.stride)))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class DMBlockGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(
            *[
                DMWideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, act)
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(Classifier):
    """WRN-depth-width: (B, 3, H, W) in [0, 1] -> (B, C). Grad-CAM layer: `act` (after the
    final BatchNorm). The linear layer is registered as `logits` (their key name)."""

    cam_layer = "act"

    def __init__(self, depth=28, width=10, num_classes=10, activation="silu", mean=None, std=None):
        super().__init__(num_classes, mean, std)
        check_int("dm_wrn", "depth", depth, 10, 1000)
        check_int("dm_wrn", "width", width, 1, 64)
        if (depth - 4) % 6:
            raise ModelArgError(
                f"model dm_wrn: depth must be 6n+4 (10, 16, 28, 34, 70, ...), got {depth}"
            )
        act = _activation("dm_wrn", activation)
        n, ch = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(n, ch[0], ch[1], 1, act),
            DMBlockGroup(n, ch[1], ch[2], 2, act),
            DMBlockGroup(n, ch[2], ch[3], 2, act),
        )
        self.batchnorm, self.act = nn.BatchNorm2d(ch[3]), act()
        # `logits` is also Classifier's method (add_module refuses the name): the layer is put
        # in _modules directly, so it is a submodule and its state-dict keys are `logits.*`
        self._modules["logits"] = nn.Linear(ch[3], num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.batchnorm(self.layer(self.init_conv(x))))
        return _head(self)(F.adaptive_avg_pool2d(out, 1).flatten(1))


class DMPreActBlock(nn.Module):
    """Pre-activation block whose shortcut (when the shape changes) is a 3x3 convolution of
    the raw input, 'SAME'-padded like the main path."""

    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.stride = stride
        self.batchnorm_0, self.act_0 = nn.BatchNorm2d(cin), act()
        self.conv_2d_1 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1, self.act_1 = nn.BatchNorm2d(cout), act()
        self.conv_2d_2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 3, stride, 0, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act_0(self.batchnorm_0(x))
        skip = x if self.shortcut is None else self.shortcut(_same_pad(x, self.stride))
        out = self.conv_2d_1(_same_pad(a, self.stride))
        return self.conv_2d_2(self.act_1(self.batchnorm_1(out))) + skip


class DMPreActResNet(Classifier):
    """PreActResNet-18/34: (B, 3, H, W) in [0, 1] -> (B, C); `width` is the first stage's
    channels (64 = theirs). Grad-CAM layer: `act` (after the final BatchNorm)."""

    cam_layer = "act"
    BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

    def __init__(self, depth=18, width=64, num_classes=10, activation="silu", mean=None, std=None):
        super().__init__(num_classes, mean, std)
        check_int("dm_preact", "width", width, 1, 1024)
        if depth not in self.BLOCKS:
            raise ModelArgError(f"model dm_preact: depth must be 18 or 34, got {depth!r}")
        act = _activation("dm_preact", activation)
        w = [width, 2 * width, 4 * width, 8 * width]
        self.conv_2d = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        cin = w[0]
        for i, (n, cout) in enumerate(zip(self.BLOCKS[depth], w)):
            stride = 1 if i == 0 else 2
            blocks = [
                DMPreActBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, act)
                for j in range(n)
            ]
            self.add_module(f"layer_{i}", nn.Sequential(*blocks))
            cin = cout
        self.batchnorm, self.act = nn.BatchNorm2d(w[3]), act()
        self._modules["logits"] = nn.Linear(w[3], num_classes)  # see DMWideResNet

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_2d(x)
        for i in range(4):
            out = self.get_submodule(f"layer_{i}")(out)
        out = self.act(self.batchnorm(out))
        return _head(self)(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("dm_wrn", ModelCfg(cam_layer=DMWideResNet.cam_layer))
def dm_wrn(num_classes=10, mean=None, std=None, depth=28, width=10, activation="silu"):
    return DMWideResNet(depth, width, num_classes, activation, mean, std)


@register_model("dm_preact", ModelCfg(cam_layer=DMPreActResNet.cam_layer))
def dm_preact(num_classes=10, mean=None, std=None, depth=18, width=64, activation="silu"):
    return DMPreActResNet(depth, width, num_classes, activation, mean, std)

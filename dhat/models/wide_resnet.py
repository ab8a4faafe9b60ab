"""WideResNet (Zagoruyko & Komodakis 2016) as used by TRADES/AWP, depth and width as parameters."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import Classifier, ModelArgError, check_float, check_int
from .registry import ModelCfg, register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.conv_shortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
        )

    def forward(self, x):
        o = self.relu1(self.bn1(x))
        y = self.conv1(o)
        y = self.relu2(self.bn2(y))
        if self.drop_rate > 0:
            y = F.dropout(y, p=self.drop_rate, training=self.training)
        y = self.conv2(y)
        if self.equal_in_out:
            return y + x
        assert self.conv_shortcut is not None  # made in __init__ when in != out
        return y + self.conv_shortcut(o)


class WideResNet(Classifier):
    """WRN-depth-widen: (B, 3, H, W) in [0, 1] -> (B, C). Grad-CAM layer: `relu` (the last
    stage, after BN)."""

    cam_layer = "relu"

    def __init__(self, depth=28, widen=10, num_classes=10, drop_rate=0.0, mean=None, std=None):
        super().__init__(num_classes, mean, std)
        check_int("wide_resnet", "depth", depth, 10, 1000)
        check_int("wide_resnet", "widen", widen, 1, 64)
        check_float("wide_resnet", "drop_rate", drop_rate, 0.0, 1.0)
        if (depth - 4) % 6:
            raise ModelArgError(
                f"model wide_resnet: depth must be 6n+4 (10, 16, 28, 34, ...), got {depth}"
            )
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = self._stage(ch[0], ch[1], n, 1, drop_rate)
        self.block2 = self._stage(ch[1], ch[2], n, 2, drop_rate)
        self.block3 = self._stage(ch[2], ch[3], n, 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=False)
        self.fc = nn.Linear(ch[3], num_classes)

    @staticmethod
    def _stage(cin, cout, n, stride, drop):
        return nn.Sequential(
            *[
                WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop)
                for i in range(n)
            ]
        )

    def logits(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


CFG = ModelCfg(cam_layer=WideResNet.cam_layer)


@register_model("wide_resnet", CFG)
def wide_resnet(num_classes=10, mean=None, std=None, depth=28, widen=10, drop_rate=0.0):
    return WideResNet(depth, widen, num_classes, drop_rate, mean, std)


@register_model("wrn_28_10", CFG)
def wrn_28_10(num_classes=10, mean=None, std=None, drop_rate=0.0):
    return WideResNet(28, 10, num_classes, drop_rate, mean, std)


@register_model("wrn_34_10", CFG)
def wrn_34_10(num_classes=10, mean=None, std=None, drop_rate=0.0):
    return WideResNet(34, 10, num_classes, drop_rate, mean, std)

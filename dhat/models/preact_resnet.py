"""PreActResNet-18 (He et al. 2016, identity mappings), CIFAR variant, with a width knob."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import Classifier, check_int
from .registry import ModelCfg, register_model


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(Classifier):
    """(B, 3, H, W) in [0, 1] -> (B, C). `width` is the first stage's channels (64 = standard).

    The Grad-CAM layer is `final_relu`, the activation after the last stage's BN + ReLU:
    pre-activation blocks leave their output un-normalised, so this is the last
    convolutional feature map the classifier reads.
    """

    cam_layer = "final_relu"

    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes=10, width=64, mean=None, std=None):
        super().__init__(num_classes, mean, std)
        check_int("preact_resnet", "width", width)
        w = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.in_planes = w[0]
        self.layer1 = self._stage(w[0], num_blocks[0], 1)
        self.layer2 = self._stage(w[1], num_blocks[1], 2)
        self.layer3 = self._stage(w[2], num_blocks[2], 2)
        self.layer4 = self._stage(w[3], num_blocks[3], 2)
        self.bn = nn.BatchNorm2d(w[3])
        self.final_relu = nn.ReLU()
        self.linear = nn.Linear(w[3], num_classes)

    def _stage(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def logits(self, x):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.final_relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model("preact_resnet18", ModelCfg(cam_layer=PreActResNet.cam_layer))
def preact_resnet18(num_classes=10, mean=None, std=None, width=64):
    return PreActResNet((2, 2, 2, 2), num_classes, width, mean, std)

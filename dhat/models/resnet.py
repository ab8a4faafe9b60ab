"""The CIFAR ResNet-18 of the official DHAT code (3x3 stem, no max-pool), plus ResNet-50.

Parameter names follow the widespread CIFAR ResNet layout (`conv1`, `bn1`, `layer1..4`,
`linear`), so third-party state dicts load with the buffers `mean`/`std` added.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import Classifier, check_choice, check_int
from .registry import IMAGENET, ModelCfg, register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(Classifier):
    """(B, 3, H, W) in [0, 1] -> (B, C). Grad-CAM layer: `layer4` (as the official code)."""

    cam_layer = "layer4"

    def __init__(self, block, num_blocks, num_classes=10, width=64, mean=None, std=None):
        super().__init__(num_classes, mean, std)
        check_int("resnet", "width", width)
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(block, width, num_blocks[0], 1)
        self.layer2 = self._stage(block, 2 * width, num_blocks[1], 2)
        self.layer3 = self._stage(block, 4 * width, num_blocks[2], 2)
        self.layer4 = self._stage(block, 8 * width, num_blocks[3], 2)
        self.linear = nn.Linear(8 * width * block.expansion, num_classes)

    def _stage(self, block, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def logits(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model("resnet18", ModelCfg(cam_layer=ResNet.cam_layer))
def resnet18(num_classes=10, mean=None, std=None, width=64):
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, width, mean, std)


class ImageNetResNet(ResNet):
    """The ImageNet stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool) on the same
    stages; for inputs of ~64 px and up (224 px: a 7x7 `layer4` map for Grad-CAM)."""

    def __init__(self, block, num_blocks, num_classes=10, width=64, mean=None, std=None):
        super().__init__(block, num_blocks, num_classes, width, mean, std)
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

    def logits(self, x):
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _check_variant(variant: str) -> None:
    check_choice("resnet50", "variant", variant, ("cifar", "imagenet"))


@register_model(
    "resnet50",
    ModelCfg(cam_layer=ResNet.cam_layer),
    variants={"imagenet": ModelCfg((3, 224, 224), ResNet.cam_layer, IMAGENET)},
)
def resnet50(num_classes=10, mean=None, std=None, width=64, variant="cifar"):
    """ResNet-50 (Bottleneck, 3-4-6-3). `variant="cifar"`: 3x3 stride-1 stem, no max-pool (as
    the official DHAT code's CIFAR ResNets; 32 px -> 4x4 `layer4`); `"imagenet"`: 7x7/2 stem
    and max-pool (224 px -> 7x7 `layer4`). Adaptive pooling: any resolution runs."""
    _check_variant(variant)
    cls = ResNet if variant == "cifar" else ImageNetResNet
    return cls(Bottleneck, (3, 4, 6, 3), num_classes, width, mean, std)

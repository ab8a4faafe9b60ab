"""Inception-v3 (Szegedy et al. 2016), compact but faithful to torchvision's layout.

Blocks, branch widths and module names (`Conv2d_1a_3x3`, `Mixed_5b` ... `Mixed_7c`, `fc`)
follow torchvision's `inception_v3`; the auxiliary classifier is left out (a model here
returns one logits tensor, and DDP wants every parameter used in each forward), and
torchvision's `transform_input` is replaced by the normalisation inside the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Classifier, check_choice, check_float
from .registry import IMAGENET, ModelCfg, register_model


class BasicConv2d(nn.Module):
    """Conv (no bias) + BN (eps 1e-3) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    """35x35 module (Fig. 5): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, cin: int, pool_features: int, c=int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, c(64), 1)
        self.branch5x5_1 = BasicConv2d(cin, c(48), 1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)
        self.out_channels = c(64) + c(64) + c(96) + pool_features

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Fig. 10): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int, c=int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, c(384), 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, stride=2)
        self.out_channels = c(384) + c(96) + cin

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    """17x17 module (Fig. 6, n = 7): factorised 1x7 / 7x1 convolutions."""

    def __init__(self, cin: int, c7: int, c=int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, c(192), 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c(192), (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c(192), (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, c(192), 1)
        self.out_channels = 4 * c(192)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, cin: int, c=int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, c(192), 1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, c(192), 1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), 3, stride=2)
        self.out_channels = c(320) + c(192) + cin

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    """8x8 module (Fig. 7): expanded filter banks with parallel 1x3 / 3x1 outputs."""

    def __init__(self, cin: int, c=int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, c(320), 1)
        self.branch3x3_1 = BasicConv2d(cin, c(384), 1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, c(448), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, c(192), 1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionV3(Classifier):
    """(B, 3, H, W) in [0, 1] -> (B, C). Grad-CAM layer: `Mixed_7c` (the last 8x8 stage).

    variant "imagenet": torchvision's stem (3x3/2, 3x3, 3x3, maxpool/2, 1x1, 3x3, maxpool/2);
    299 px -> 35x35 at `Mixed_5b`, 8x8 at `Mixed_7c`; needs inputs of at least 75 px.
    variant "cifar": the same five stem convs at stride 1 with padding and no pooling (as the
    widely used CIFAR port, weiaicunzai/pytorch-cifar100); 32 px -> 32x32 at `Mixed_5b`, 7x7
    at `Mixed_7c` (about as many FLOPs per image as the ImageNet model at 299 px).
    `width_mult` scales every branch (1.0 = standard), for quick experiments.
    """

    cam_layer = "Mixed_7c"

    def __init__(
        self, num_classes=10, variant="cifar", width_mult=1.0, dropout=0.5, mean=None, std=None
    ):
        super().__init__(num_classes, mean, std)
        check_choice("inception_v3", "variant", variant, ("cifar", "imagenet"))
        check_float("inception_v3", "width_mult", width_mult, 0.0, 16.0, low_open=True)
        check_float("inception_v3", "dropout", dropout, 0.0, 1.0)
        self.variant = variant

        def c(n: int) -> int:
            return max(1, int(round(n * width_mult)))

        cifar = variant == "cifar"
        s, p = (1, 1) if cifar else (2, 0)
        self.Conv2d_1a_3x3 = BasicConv2d(3, c(32), 3, stride=s, padding=p)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), 3, padding=1 if cifar else 0)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), 3, padding=1)
        self.maxpool1 = nn.Identity() if cifar else nn.MaxPool2d(3, 2)
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), 1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), 3, padding=1 if cifar else 0)
        self.maxpool2 = nn.Identity() if cifar else nn.MaxPool2d(3, 2)
        self.Mixed_5b = InceptionA(c(192), c(32), c)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, c(64), c)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, c(64), c)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, c)
        cin = self.Mixed_6a.out_channels
        self.Mixed_6b = InceptionC(cin, c(128), c)
        self.Mixed_6c = InceptionC(cin, c(160), c)
        self.Mixed_6d = InceptionC(cin, c(160), c)
        self.Mixed_6e = InceptionC(cin, c(192), c)
        self.Mixed_7a = InceptionD(cin, c)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, c)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, c)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.Mixed_7c.out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(
                    m.weight, std=0.1 if isinstance(m, nn.Conv2d) else 0.01, a=-2, b=2
                )
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    _STAGES = (
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "maxpool1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "maxpool2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
    )

    def logits(self, x):
        for name in self._STAGES:
            x = getattr(self, name)(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.dropout(x))


@register_model(
    "inception_v3",
    ModelCfg(cam_layer=InceptionV3.cam_layer),
    variants={"imagenet": ModelCfg((3, 299, 299), InceptionV3.cam_layer, IMAGENET)},
)
def inception_v3(num_classes=10, mean=None, std=None, variant="cifar", width_mult=1.0, dropout=0.5):
    return InceptionV3(num_classes, variant, width_mult, dropout, mean, std)

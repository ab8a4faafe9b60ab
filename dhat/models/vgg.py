"""VGG-16 with batch norm (Simonyan & Zisserman 2015; BN as torchvision's `vgg16_bn`).

Parameter names follow torchvision (`features.N`, `classifier.N`), so its ImageNet state
dict loads into `variant="imagenet"` with the buffers `mean`/`std` added.
"""

from __future__ import annotations

from torch import nn

from .base import Classifier, check_choice, check_float, check_int
from .registry import IMAGENET, ModelCfg, register_model

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(Classifier):
    """(B, 3, H, W) in [0, 1] -> (B, C); 13 conv-BN-ReLU layers in 5 stages, each ending in a
    2x2 max-pool. `width` scales every conv (64 = standard).

    variant "cifar": global average pool, then one linear layer (the common CIFAR VGG; at
    32 px the last stage runs at 2x2). variant "imagenet": adaptive average pool to 7x7 and
    the 4096-4096 classifier with dropout (torchvision's). Grad-CAM layer: the last conv
    stage's final ReLU, before the last max-pool (`features.42` for VGG-16), as
    pytorch-grad-cam's VGG examples use.
    """

    def __init__(
        self,
        cfg=VGG16,
        num_classes=10,
        width=64,
        variant="cifar",
        hidden=4096,
        dropout=0.5,
        mean=None,
        std=None,
    ):
        super().__init__(num_classes, mean, std)
        check_int("vgg", "width", width)
        check_choice("vgg", "variant", variant, ("cifar", "imagenet"))
        check_int("vgg", "hidden", hidden, 1, 65536)
        check_float("vgg", "dropout", dropout, 0.0, 1.0)
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            cout = max(1, int(v) * width // 64)
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        last_relu = max(i for i, m in enumerate(layers) if isinstance(m, nn.ReLU))
        self.cam_layer = f"features.{last_relu}"
        self.variant = variant
        if variant == "cifar":
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier: nn.Module = nn.Linear(cin, num_classes)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(7)
            self.classifier = nn.Sequential(
                nn.Linear(cin * 49, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                assert m.bias is not None  # every conv here has a bias
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def logits(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


VGG16_CAM_LAYER = "features.42"  # the 13th conv's ReLU: 13 conv-BN-ReLU triples + 4 pools


@register_model(
    "vgg16_bn",
    ModelCfg(cam_layer=VGG16_CAM_LAYER),
    variants={"imagenet": ModelCfg((3, 224, 224), VGG16_CAM_LAYER, IMAGENET)},
)
def vgg16_bn(
    num_classes=10, mean=None, std=None, width=64, variant="cifar", hidden=4096, dropout=0.5
):
    return VGG(VGG16, num_classes, width, variant, hidden, dropout, mean, std)

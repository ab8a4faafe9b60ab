"""A small CNN for fast tests and CPU studies."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import Classifier, check_choice, check_int
from .registry import ModelCfg, register_model


class SmallCNN(Classifier):
    """Four 3x3 conv layers: (B, 3, H, W) in [0, 1] -> (B, C). Grad-CAM layer: `features`.

    `norm="bn"` (default): conv (no bias) + BatchNorm + ReLU. `norm="none"`: conv with bias +
    ReLU, no batch statistics, so a step's result does not depend on how the batch is split
    (used to check DDP against one process).
    """

    cam_layer = "features"

    def __init__(self, num_classes=10, width=16, mean=None, std=None, norm="bn"):
        super().__init__(num_classes, mean, std)
        check_int("small_cnn", "width", width)
        check_choice("small_cnn", "norm", norm, ("bn", "none"))
        w = width

        def block(cin, cout, stride):
            if norm == "none":
                return [nn.Conv2d(cin, cout, 3, stride, 1, bias=True), nn.ReLU()]
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, w, 1), *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2), *block(4 * w, 4 * w, 1)
        )
        self.linear = nn.Linear(4 * w, num_classes)

    def logits(self, x):
        return self.linear(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@register_model("small_cnn", ModelCfg(cam_layer=SmallCNN.cam_layer))
def small_cnn(num_classes=10, mean=None, std=None, width=16, norm="bn"):
    return SmallCNN(num_classes, width, mean, std, norm)

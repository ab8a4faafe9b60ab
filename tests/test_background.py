"""Background-reliance measures against hand computations, on two models built to look only at
the background and only at the object."""

import pytest
import torch
from torch import nn

from dhat.data import Split
from dhat.eval.background import background_measures, bootstrap_indices, mean_ci, paired_gap_ci
from dhat.models import Classifier

S, C, N = 16, 3, 30  # image side, classes (pure R, G, B), images per split
CENTRE = torch.zeros(S, S, dtype=torch.bool)
CENTRE[4:12, 4:12] = True  # the object's pixels, in every image


class RegionModel(Classifier):
    """logit_k = Σ over `region` of channel k: a classifier that sees only that region. Its
    Grad-CAM layer `evidence` is x · region, so Grad-CAM of class y is channel y there."""

    cam_layer = "evidence"

    def __init__(self, region: torch.Tensor):
        super().__init__(C, mean=(0.0,) * 3, std=(1.0,) * 3)
        self.evidence = _Mask(region)
        self.unused = nn.Parameter(torch.zeros(1))

    def logits(self, x):
        return self.evidence(x).sum((2, 3)) + 0 * self.unused


class _Mask(nn.Module):
    def __init__(self, region):
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x):
        return x * self.region


def colour(k: torch.Tensor) -> torch.Tensor:
    """(n,) class ids -> (n, 3, 1, 1) pure colours, as uint8 levels."""
    return (torch.nn.functional.one_hot(k, C).float() * 255)[:, :, None, None]


def make_splits():
    y = torch.arange(N) % C
    scene_same = y
    scene_rand = (y + torch.arange(N) // 10) % C  # agrees on the first 10 of 30
    agree = (scene_rand == y).double().mean().item()  # the hand-computed chance level

    def compose(scene, obj=True, bg=True):
        img = torch.zeros(N, 3, S, S)
        if bg:
            img = img + colour(scene)
        if obj:
            img = torch.where(CENTRE, colour(y), img)
        return img.to(torch.uint8)

    masks = CENTRE.expand(N, S, S).clone()
    splits = {
        "mixed_same": Split(compose(scene_same), y, masks),
        "mixed_rand": Split(compose(scene_rand), y, masks),
        "only_fg": Split(compose(scene_same, bg=False), y, masks),
        "only_bg": Split(compose(scene_same, obj=False), y, masks),
    }
    return splits, scene_rand, agree


def measure(model):
    splits, scene_rand, agree = make_splits()
    out = background_measures(model.eval(), splits, attacks={"clean": None}, n_boot=200)
    return out, scene_rand, agree


def test_a_background_model_has_a_large_bg_gap_and_looks_at_the_background():
    out, scene_rand, agree = measure(RegionModel(~CENTRE))
    y = torch.arange(N) % C
    acc = {k: v["clean"]["value"] for k, v in out["accuracy"].items()}
    assert acc["mixed_same"] == 1.0 and acc["only_bg"] == 1.0
    assert acc["mixed_rand"] == pytest.approx(agree)  # right exactly where scene = label
    assert acc["only_fg"] == pytest.approx((y == 0).double().mean().item())  # all logits 0: class 0
    assert out["bg_gap"]["clean"]["value"] == pytest.approx(1 - agree)
    same = out["attention"]["mixed_same"]["natural"]
    assert same["bg_iou"]["value"] == pytest.approx(1.0) and same["fg_iou"]["value"] == 0.0
    rand = out["attention"]["mixed_rand"]["natural"]  # a map only where scene = label
    assert rand["bg_iou"]["value"] == pytest.approx(agree) and rand["fg_iou"]["value"] == 0.0
    lo, hi = out["bg_gap"]["clean"]["ci"]
    assert lo <= 1 - agree <= hi and hi - lo > 0


def test_an_object_model_has_no_bg_gap_and_looks_at_the_object():
    out, _, _ = measure(RegionModel(CENTRE))
    acc = {k: v["clean"]["value"] for k, v in out["accuracy"].items()}
    assert acc["mixed_same"] == acc["mixed_rand"] == acc["only_fg"] == 1.0
    assert out["bg_gap"]["clean"]["value"] == 0.0 and out["bg_gap"]["clean"]["ci"] == [0.0, 0.0]
    for split in ("mixed_same", "mixed_rand"):
        nat = out["attention"][split]["natural"]
        assert nat["fg_iou"]["value"] == pytest.approx(1.0) and nat["bg_iou"]["value"] == 0.0
        assert nat["cam_area"]["value"] == pytest.approx(CENTRE.float().mean().item())


def test_bootstrap_intervals():
    idx = bootstrap_indices(4, 500, seed=0)
    assert idx.shape == (500, 4) and 0 <= idx.min() and idx.max() <= 3
    m = mean_ci(torch.tensor([0.0, 1.0, 1.0, 1.0]), idx)
    assert m["value"] == 0.75 and 0 <= m["ci"][0] < 0.75 < m["ci"][1] <= 1
    a, b = torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0, 1.0])
    g = paired_gap_ci(a, b, idx)  # paired: only image 0 differs
    assert g["value"] == 0.25 and g["ci"][0] >= 0 and g["ci"][1] <= 1

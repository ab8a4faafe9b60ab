"""The attention measures that can move (object share, shuffled-mask nulls), the per-image
records behind a card, and paired, seed-aware differences — against hand computations."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from dhat.analysis.paired import hierarchical_bootstrap, paired_values, reliance
from dhat.errors import UserError
from dhat.eval.attention import attention_per_image, derangement, object_share
from dhat.eval.records import card_records, records_path, write_records
from dhat.models import Classifier

S = 16


def squares(n: int, seed: int = 0) -> torch.Tensor:
    """(n, S, S) bool: one axis-aligned square per image, random side 4-7, random place."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, S, S, dtype=torch.bool)
    for i in range(n):
        side = int(torch.randint(4, 8, (1,), generator=g))
        r, c = (int(v) for v in torch.randint(0, S - side + 1, (2,), generator=g))
        out[i, r : r + side, c : c + side] = True
    return out


# ----------------------------------------------------------------------------- object share
def test_object_share_equals_a_hand_computation():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    masks = torch.tensor([[[False, True], [True, False]], [[True, False], [False, False]]])
    # image 0: (1 + 2) / 4; image 1: 1 / 4
    assert object_share(maps, masks).tolist() == [0.75, 0.25]


def test_object_share_of_an_empty_map_is_the_mask_area():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    assert object_share(torch.zeros(1, 4, 4), masks).item() == 0.5


def test_object_share_is_invariant_to_scale_and_to_area_at_equal_energy_split():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :4] = True  # the top half is the object
    small = torch.zeros(1, 8, 8)
    small[0, 0, 0], small[0, 7, 7] = 3.0, 1.0  # 2 pixels: 3/4 of the energy on the object
    large = torch.zeros(1, 8, 8)
    large[0, :2, :] = 3.0 / 16  # 16 object pixels carry 3 units
    large[0, 6:, :] = 1.0 / 16  # 16 background pixels carry 1 unit
    a, b = object_share(small, masks), object_share(large, masks)
    assert a.item() == pytest.approx(0.75) and b.item() == pytest.approx(0.75)
    assert object_share(7.5 * large, masks).item() == pytest.approx(b.item())


def test_derangement_moves_every_image_and_is_fixed_by_its_seed():
    p = derangement(50, seed=3)
    assert sorted(p.tolist()) == list(range(50))
    assert (p != torch.arange(50)).all()
    assert torch.equal(p, derangement(50, seed=3)) and not torch.equal(p, derangement(50, seed=4))


def test_a_fixed_centred_disc_scores_at_its_shuffled_mask_null():
    n = 3000
    masks = squares(n)
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    disc = (((yy - 7.5) ** 2 + (xx - 7.5) ** 2) <= 16).float().expand(n, S, S)
    share = object_share(disc, masks)
    null = object_share(disc, masks[derangement(n, 0)])
    d = (share - null).numpy()
    se = d.std(ddof=1) / np.sqrt(n)
    assert abs(d.mean()) < 3 * se  # a map that ignores the object is its own null


# ----------------------------------------------------------------------------- models
class ChannelModel(Classifier):
    """logit_k = Σ x[channel]: the Grad-CAM of any class is x[channel] (layer `evidence`)."""

    cam_layer = "evidence"

    def __init__(self, channel: int, classes: int = 3):
        super().__init__(classes, mean=(0.0,) * 3, std=(1.0,) * 3)
        self.evidence = nn.Conv2d(3, classes, 1, bias=False)
        with torch.no_grad():
            self.evidence.weight.zero_()
            self.evidence.weight[:, channel] = 1.0

    def logits(self, x):
        return self.evidence(x).sum((2, 3)) * torch.linspace(1, 1.1, self.num_classes)


def object_scene_images(n: int):
    """Channel 0 is the object (its mask), channel 1 the scene (everything else)."""
    masks = squares(n, seed=1)
    x = torch.zeros(n, 3, S, S)
    x[:, 0] = masks.float()
    x[:, 1] = (~masks).float()
    return x, torch.zeros(n, dtype=torch.long), masks


def test_an_object_model_and_a_scene_model_sit_at_the_two_ends():
    x, y, masks = object_scene_images(64)
    obj = attention_per_image(ChannelModel(0), x, y, masks)[None]
    scene = attention_per_image(ChannelModel(1), x, y, masks)[None]
    assert obj["share"].mean() > 0.99 and obj["share"].mean() - obj["share_null"].mean() > 0.5
    assert scene["share"].mean() < 0.01 and scene["share_null"].mean() > scene["share"].mean()
    assert obj["fg"].mean() > 0.95 and scene["bg"].mean() > 0.95
    # on the scale the two ends make, each is at its own end and a value halfway is 0.5
    o, s = obj["share"].mean().item(), scene["share"].mean().item()
    assert reliance(o, o, s) == 0 and reliance(s, o, s) == 1
    assert reliance((o + s) / 2, o, s) == pytest.approx(0.5)


def test_the_scene_class_map_of_a_scene_model_lies_on_the_background():
    x, y, masks = object_scene_images(16)
    scene_y = torch.tensor([1, -1] * 8)
    per = attention_per_image(ChannelModel(1), x, y, masks, scene_y=scene_y)[None]
    share = per["scene_bg_share"]
    assert torch.isnan(share[1::2]).all()  # images without a scene have no value
    assert (share[0::2] > 0.99).all()


# ----------------------------------------------------------------------------- paired
def test_paired_bootstrap_of_a_model_against_itself_is_exactly_zero():
    v = np.random.default_rng(0).random(500)
    r = hierarchical_bootstrap([{"test": v - v}, {"test": v - v}], n_boot=300)
    assert r["value"] == 0 and r["ci"] == [0.0, 0.0]


def test_paired_bootstrap_with_known_per_image_differences():
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, 4000)
    r = hierarchical_bootstrap([{"test": d}], n_boot=2000, seed=2)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))  # the closed-form normal interval
    assert r["value"] == pytest.approx(d.mean())
    assert r["ci"][0] == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert r["ci"][1] == pytest.approx(d.mean() + half, abs=0.15 * half)


def test_seed_variation_enters_the_interval():
    # two seeds whose per-image differences are constant 0.1 and 0.5: resampling seeds draws
    # (s0, s0), (s0, s1), (s1, s0), (s1, s1) -> 0.1 (1/4), 0.3 (1/2), 0.5 (1/4)
    r = hierarchical_bootstrap([{"t": np.full(50, 0.1)}, {"t": np.full(50, 0.5)}], n_boot=4000)
    assert r["value"] == pytest.approx(0.3)
    assert r["ci"][0] == pytest.approx(0.1) and r["ci"][1] == pytest.approx(0.5)
    assert r["per_seed"] == pytest.approx([0.1, 0.5])


def fake_card(tmp_path, name, recs, hashes):
    card = {"images_sha256": {"test": hashes}, "background": {"images_sha256": {}}}
    card_path = tmp_path / f"{name}.json"
    rpath = records_path(card_path)
    card["records"] = {"file": rpath.name, "sha256": write_records(rpath, recs)}
    card["path"] = str(card_path)
    card_path.write_text(json.dumps(card))
    return card


def test_records_round_trip_and_their_hash_is_checked(tmp_path):
    recs = {"test|pgd10": torch.tensor([True, False, True]), "x": torch.tensor([0.5, 0.25, 1.0])}
    card = fake_card(tmp_path, "a", recs, "h")
    back = card_records(card)
    assert back["test|pgd10"].dtype == np.bool_ and back["test|pgd10"].tolist() == [1, 0, 1]
    assert back["x"].tolist() == [0.5, 0.25, 1.0]
    p = tmp_path / card["records"]["file"]
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match="do not match the SHA-256"):
        card_records(card)


def test_paired_values_need_the_same_images(tmp_path):
    a = fake_card(tmp_path, "a", {"test|clean": torch.tensor([1.0, 1.0, 0.0])}, "h1")
    b = fake_card(tmp_path, "b", {"test|clean": torch.tensor([0.0, 1.0, 0.0])}, "h1")
    c = fake_card(tmp_path, "c", {"test|clean": torch.tensor([0.0, 1.0, 0.0])}, "h2")
    d = paired_values(a, card_records(a), b, card_records(b), [(1, "test|clean")])
    assert d["test"].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(UserError, match="same images"):
        paired_values(a, card_records(a), c, card_records(c), [(1, "test|clean")])


def test_an_interval_over_images_where_a_measure_is_undefined_skips_them():
    from dhat.eval.background import bootstrap_indices, mean_ci

    v = torch.tensor([1.0, float("nan"), 3.0, float("nan"), 5.0])
    r = mean_ci(v, bootstrap_indices(5, 400, 0))
    assert r["value"] == 3.0  # the mean of the defined images, by hand
    assert 1.0 <= r["ci"][0] <= 3.0 <= r["ci"][1] <= 5.0
    undefined = mean_ci(torch.full((3,), float("nan")), bootstrap_indices(3, 10, 0))
    assert np.isnan(undefined["value"]) and np.isnan(undefined["ci"]).all()

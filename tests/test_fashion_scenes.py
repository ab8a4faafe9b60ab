"""`fashion_scenes`: exact masks, scene-label agreement, split invariants, disjoint sources."""

import numpy as np
import pytest
import torch

from dhat.data import load_dataset
from dhat.data.fashion_scenes import (
    SPLITS,
    find_fashion_folder,
    generate,
    load_fashion_mnist,
    place_items,
)
from dhat.errors import UserError


def tiny_sources(seed=0, m=200, p=300):
    """Items: random blobs on exact black (M, 28, 28); scenes: noise (P, 3, 32, 32), 10 classes."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    r = 6 + 6 * torch.rand(m, 1, 1, generator=g)
    inside = (yy - 14) ** 2 + (xx - 14) ** 2 <= r**2
    items = torch.where(
        inside,
        torch.randint(60, 256, (m, 28, 28), generator=g),
        torch.zeros(m, 28, 28, dtype=torch.long),
    ).to(torch.uint8)
    item_y = torch.arange(m) % 10
    scenes = torch.randint(0, 256, (p, 3, 32, 32), generator=g).to(torch.uint8)
    scene_y = torch.arange(p) % 10
    return items, item_y, scenes, scene_y


def test_place_items_closed_form():
    """An all-white item as a 16-px square at (8, 8): exactly rows/columns 8..23 are 1."""
    item = torch.full((1, 28, 28), 255, dtype=torch.uint8)
    grey = place_items(item, np.array([0.5]), np.array([8.0]), np.array([8.0]))
    expected = torch.zeros(32, 32)
    expected[8:24, 8:24] = 1
    assert torch.allclose(grey[0], expected, atol=1e-6)
    # The whole frame: 28 px stretched to 32, so the border pixels' centres fall 1/16 px
    # outside the item and blend with the black padding (weight 15/16).
    whole = place_items(item, np.array([1.0]), np.array([0.0]), np.array([0.0]))[0]
    assert torch.allclose(whole[1:-1, 1:-1], torch.ones(30, 30), atol=1e-6)
    assert torch.allclose(whole[0, 1:-1], torch.full((30,), 15 / 16), atol=1e-6)
    assert abs(whole[0, 0].item() - (15 / 16) ** 2) < 1e-6


def test_masks_equal_the_pasted_pixels_and_split_invariants():
    items, item_y, scenes, scene_y = tiny_sources()
    out = generate(items, item_y, scenes, scene_y, 500, seed=1, rho=0.9, splits=("train", *SPLITS))
    fg = out["only_fg"]
    # only_fg: the item on black; its non-black pixels are exactly the mask
    assert torch.equal(fg["images"].ne(0).any(1), fg["masks"])
    assert int(fg["images"].permute(0, 2, 3, 1)[~fg["masks"]].sum()) == 0
    for name in ("mixed_same", "mixed_rand", "test", "train"):
        s = out[name]
        scene = scenes[s["scene_index"]]
        m = s["masks"][:, None].expand_as(scene)
        assert torch.equal(s["images"][~m], scene[~m])  # outside: the scene, unchanged
        assert torch.equal(s["images"][m], fg["images"][m])  # inside: the pasted item
        assert torch.equal(s["masks"], fg["masks"])  # one set of items for all splits
        assert torch.equal(s["labels"], item_y[s["item_index"]])  # label = the item's class
    bg = out["only_bg"]
    assert torch.equal(bg["images"], scenes[bg["scene_index"]])  # no object pixel at all
    assert torch.equal(bg["scene_index"], out["mixed_same"]["scene_index"])
    assert torch.equal(bg["masks"], fg["masks"])  # where the item would be
    assert (out["mixed_same"]["scene_class"] == out["mixed_same"]["labels"]).all()
    assert torch.equal(scene_y[out["mixed_same"]["scene_index"]], out["mixed_same"]["labels"])
    area = fg["masks"].flatten(1).float().mean(1)
    assert area.min() > 0.02 and area.max() < 1.0


def test_scene_label_agreement_rho_and_chance():
    items, item_y, scenes, scene_y = tiny_sources(m=500)
    for rho in (0.9, 0.5):
        out = generate(
            items, item_y, scenes, scene_y, 10000, seed=2, rho=rho, splits=("train", "mixed_rand")
        )
        tr, rnd = out["train"], out["mixed_rand"]
        assert torch.equal(scene_y[tr["scene_index"]], tr["scene_class"])
        agree = (tr["scene_class"] == tr["labels"]).double().mean().item()
        chance = (rnd["scene_class"] == rnd["labels"]).double().mean().item()
        assert abs(agree - rho) < 0.02, (rho, agree)
        assert abs(chance - 0.1) < 0.02, chance
        off = tr["scene_class"][tr["scene_class"] != tr["labels"]]
        assert torch.bincount(off, minlength=10).min() > 0.5 * len(off) / 10


def test_deterministic_and_bad_options():
    src = tiny_sources()
    a = generate(*src, 64, seed=5, rho=0.9, splits=("train",))["train"]
    b = generate(*src, 64, seed=5, rho=0.9, splits=("train",))["train"]
    c = generate(*src, 64, seed=6, rho=0.9, splits=("train",))["train"]
    assert torch.equal(a["images"], b["images"]) and not torch.equal(a["images"], c["images"])
    with pytest.raises(UserError, match="rho"):
        generate(*src, 8, seed=0, rho=1.5)
    with pytest.raises(UserError, match="scale"):
        generate(*src, 8, seed=0, rho=0.9, scale=(0.8, 0.5))
    with pytest.raises(UserError, match="split"):
        generate(*src, 8, seed=0, rho=0.9, splits=("nope",))


def test_missing_data_is_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="Fashion-MNIST not found.*t10k-images-idx3-ubyte.gz"):
        load_dataset("fashion_scenes", str(tmp_path), fashion_root=str(tmp_path))


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_sources(cifar_root, fashion_root):
    return dict(fashion_root=str(fashion_root), cifar_root=str(cifar_root))


def test_real_dataset_sources_are_disjoint_and_exact(real_sources, fashion_root, cifar_root):
    from dhat.data.cifar import load_cifar
    from dhat.data.fashion_scenes import SIZE
    from dhat.data.fashion_scenes import generate as gen

    tr_items, tr_y = load_fashion_mnist(fashion_root, True)
    te_items, te_y = load_fashion_mnist(fashion_root, False)
    assert (len(tr_y), len(te_y)) == (60000, 10000)
    assert tr_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert te_y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    d = load_dataset("fashion_scenes", n_train=2000, n_test=500, **real_sources)
    assert d.train_x.shape == (2000, 3, SIZE, SIZE) and set(d.splits) == set(SPLITS)
    # The bundle's images are exactly what the generator makes from the train / test files.
    c_tr, c_tr_y, _ = load_cifar(cifar_root, "cifar10", train=True)
    c_te, c_te_y, _ = load_cifar(cifar_root, "cifar10", train=False)
    s_train, s_test = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(0).spawn(2))
    tr = gen(tr_items, tr_y, c_tr, c_tr_y, 2000, seed=s_train, rho=0.9)["train"]
    te = gen(te_items, te_y, c_te, c_te_y, 500, seed=s_test, rho=0.9, splits=SPLITS)
    assert torch.equal(tr["images"], d.train_x) and torch.equal(tr["masks"], d.train_masks)
    assert torch.equal(te["mixed_rand"]["images"], d.splits["mixed_rand"].x)
    assert torch.equal(te["test"]["images"], d.test_x)
    # Backgrounds outside the mask are CIFAR train scenes for training, CIFAR test scenes for
    # testing; the two pools share no image.
    m = tr["masks"][:, None].expand(-1, 3, -1, -1)
    assert torch.equal(d.train_x[~m], c_tr[tr["scene_index"]][~m])
    train_scenes = {bytes(x.numpy()) for x in c_tr[tr["scene_index"]]}
    test_scenes = {bytes(x.numpy()) for x in c_te[te["mixed_same"]["scene_index"]]}
    assert not train_scenes & test_scenes
    train_items = {bytes(x.numpy()) for x in tr_items[tr["item_index"]]}
    test_items = {bytes(x.numpy()) for x in te_items[te["test"]["item_index"]]}
    assert len(train_items & test_items) <= 2  # Fashion-MNIST itself has a few exact duplicates


def test_find_fashion_folder(fashion_root, tmp_path):
    assert find_fashion_folder(fashion_root) == fashion_root
    assert find_fashion_folder(tmp_path) is None

"""The procedurally generated `shapes` dataset: masks, spurious-background agreement, speed."""

import time

import numpy as np
import pytest
import torch

from dhat.data.datasets import DataBundle, load_dataset
from dhat.data.shapes import CLASS_NAMES, CONSTANT_GREY, TEXTURES, channel_stats, generate_shapes
from dhat.errors import UserError


def test_masks_are_exactly_the_non_background_pixels():
    d = generate_shapes(600, rho=0.9, seed=3, background="constant")
    grey = round(CONSTANT_GREY * 255)
    differs = (d["images"] != grey).any(1)
    assert torch.equal(differs, d["masks"])
    # every mask pixel has exactly the shape's colour
    img = d["images"].permute(0, 2, 3, 1)  # (N, H, W, 3)
    col = d["colors"][:, None, None, :].expand_as(img)
    assert torch.equal(img[d["masks"]], col[d["masks"]])
    assert (d["bg_type"] == -1).all()


def test_texture_images_paint_the_shape_colour_inside_the_mask():
    d = generate_shapes(2000, rho=0.9, seed=4)
    img = d["images"].permute(0, 2, 3, 1)
    col = d["colors"][:, None, None, :].expand_as(img)
    m = d["masks"]
    assert torch.equal(img[m], col[m])
    area = m.flatten(1).float().mean(1)
    assert area.min() > 0.02 and area.max() < 0.6  # visible, not the whole image
    # the shape stands out: its colour differs from most pixels just outside it
    outside_same = ((img == col).all(-1) & ~m).flatten(1).float().mean(1)
    assert outside_same.mean() < 0.01


def test_shape_scale_and_classes():
    d = generate_shapes(1000, seed=5, background="constant")
    counts = torch.bincount(d["labels"], minlength=10)
    assert counts.tolist() == [100] * 10  # balanced labels
    area = d["masks"].flatten(1).float().mean(1)
    by_class = torch.stack([area[d["labels"] == k].mean() for k in range(10)])
    # ring < circle; bars thinner than the square; all classes non-trivial
    assert by_class[4] < by_class[0] and by_class[7] < by_class[1] and by_class[8] < by_class[1]
    assert (by_class > 0.03).all()
    assert len(CLASS_NAMES) == len(TEXTURES) == 10


def test_background_agreement_train_rho_test_chance():
    tr = generate_shapes(10000, rho=0.9, seed=11)
    te = generate_shapes(10000, rho=None, seed=12)
    agree_tr = (tr["bg_type"] == tr["labels"]).double().mean().item()
    agree_te = (te["bg_type"] == te["labels"]).double().mean().item()
    assert abs(agree_tr - 0.9) < 0.02, agree_tr
    assert abs(agree_te - 0.1) < 0.02, agree_te
    # disagreeing backgrounds are spread over the other types
    off = tr["bg_type"][tr["bg_type"] != tr["labels"]]
    assert torch.bincount(off, minlength=10).min() > 50
    # other rho values
    d = generate_shapes(10000, rho=0.5, seed=13)
    assert abs((d["bg_type"] == d["labels"]).double().mean().item() - 0.5) < 0.02


def test_deterministic_by_seed():
    a, b = generate_shapes(300, seed=7), generate_shapes(300, seed=7)
    c = generate_shapes(300, seed=8)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["images"], c["images"])


def test_cifar_background_from_a_pool():
    g = torch.Generator().manual_seed(0)
    pool_x = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=g)
    pool_y = torch.arange(200) % 10
    d = generate_shapes(3000, rho=0.9, seed=1, background="cifar10", bg_pool=(pool_x, pool_y))
    assert torch.equal(d["bg_type"], pool_y[d["bg_index"]])
    agree = (d["bg_type"] == d["labels"]).double().mean().item()
    assert abs(agree - 0.9) < 0.03
    bg = pool_x[d["bg_index"]]
    outside = ~d["masks"][:, None].expand_as(bg)
    assert torch.equal(d["images"][outside], bg[outside])
    with pytest.raises(UserError):
        generate_shapes(10, background="cifar10")


def test_loader_with_real_cifar_backgrounds(cifar_root):
    from dhat.data.cifar import load_cifar

    b = load_dataset("shapes", root=str(cifar_root), n_train=1000, n_test=500, background="cifar10")
    assert b.train_x.shape == (1000, 3, 32, 32) and b.test_masks.shape == (500, 32, 32)
    assert b.name == "shapes-cifar10"
    # the training split is generate_shapes on CIFAR-10's training images: outside the
    # shape, every pixel is the named CIFAR-10 training image's
    pool_x, pool_y, _ = load_cifar(cifar_root, "cifar10", train=True)
    s_train = int(np.random.SeedSequence(0).spawn(2)[0].generate_state(1)[0])
    tr = generate_shapes(1000, 0.9, s_train, background="cifar10", bg_pool=(pool_x, pool_y))
    assert torch.equal(tr["images"], b.train_x) and torch.equal(tr["masks"], b.train_masks)
    bg = pool_x[tr["bg_index"]]
    outside = ~b.train_masks[:, None].expand_as(bg)
    assert torch.equal(b.train_x[outside], bg[outside])


@pytest.mark.slow
def test_registered_loader_full_size_and_fast():
    t0 = time.perf_counter()
    b = load_dataset("shapes")
    dt = time.perf_counter() - t0
    print(f"\nshapes 50k + 10k generated in {dt:.2f} s")
    assert dt < 60
    assert isinstance(b, DataBundle) and b.num_classes == 10 and b.class_names == CLASS_NAMES
    assert b.train_x.shape == (50000, 3, 32, 32) and b.train_x.dtype == torch.uint8
    assert b.test_x.shape == (10000, 3, 32, 32)
    assert b.train_y.dtype == torch.int64 and b.test_y.dtype == torch.int64
    assert b.train_masks.shape == (50000, 32, 32) and b.train_masks.dtype == torch.bool
    assert b.test_masks.shape == (10000, 32, 32) and b.test_masks.dtype == torch.bool
    assert all(0.2 < m < 0.8 for m in b.mean) and all(0.1 < s < 0.5 for s in b.std)
    assert not torch.equal(b.train_x[:100], b.test_x[:100])
    # stratified subsetting keeps the masks aligned
    sub = b.subset_train(1000)
    assert sub.train_masks.shape[0] == sub.train_x.shape[0] == 1000


def test_channel_stats_exact():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 1, 1).contiguous()
    mean, std = channel_stats(x)
    assert np.allclose(mean, 0.5) and np.allclose(std, 0.5)


def test_bad_arguments():
    with pytest.raises(UserError):
        generate_shapes(10, rho=1.5)
    with pytest.raises(UserError):
        generate_shapes(10, background="plasma")
    with pytest.raises(UserError):
        load_dataset("shapes", n_train=10, n_test=10, background="constant")
    assert generate_shapes(0)["images"].shape == (0, 3, 32, 32)

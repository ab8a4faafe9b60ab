import pytest
import torch

from dhat.data import BatchLoader, load_dataset, random_crop_flip, validation_split
from dhat.data.cifar import load_cifar
from dhat.errors import UserError


def test_cifar10_real_files(cifar_root):
    x, y, names = load_cifar(cifar_root, "cifar10", train=True)
    tx, ty, _ = load_cifar(cifar_root, "cifar10", train=False)
    assert x.shape == (50000, 3, 32, 32) and x.dtype == torch.uint8
    assert tx.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(y), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(ty), torch.full((10,), 1000))
    mean = x.float().div(255).mean((0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-3)
    assert names[0] == "airplane" and len(names) == 10
    # published pixel values of train image 0, R plane, first row
    assert x[0, 0, 0, :8].tolist() == [59, 43, 50, 68, 98, 119, 139, 145]


def test_missing_cifar_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_dataset("cifar10", str(tmp_path))


def test_random_crop_matches_explicit_padding():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(3)
    out = random_crop_flip(x, padding=2, flip=False, generator=g)
    g = torch.Generator().manual_seed(3)
    oy = torch.randint(0, 5, (2,), generator=g)
    ox = torch.randint(0, 5, (2,), generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert torch.equal(out[i], padded[i, :, oy[i] : oy[i] + 8, ox[i] : ox[i] + 8])


def test_flip_is_left_right_and_about_half():
    x = torch.rand(4000, 1, 2, 2)
    out = random_crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).all((1, 2, 3)) & ~(out == x).all((1, 2, 3))
    same = (out == x).all((1, 2, 3))
    assert bool((flipped | same).all())
    assert 0.45 < flipped.float().mean() < 0.55


def test_validation_split_is_deterministic_and_stratified():
    labels = torch.arange(10).repeat(100)
    tr, va = validation_split(labels, 100, seed=1)
    tr2, va2 = validation_split(labels, 100, seed=1)
    assert torch.equal(va, va2) and len(va) == 100 and len(tr) == 900
    assert torch.equal(torch.bincount(labels[va]), torch.full((10,), 10))
    assert not set(tr.tolist()) & set(va.tolist())


def test_loader_order_is_reproducible_from_generator_state():
    x = torch.randint(0, 255, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(50)
    g = torch.Generator().manual_seed(0)
    loader = BatchLoader(x, y, 16, shuffle=True, augment=True, generator=g)
    list(loader)
    state = g.get_state()
    first = [b.x for b in loader]
    g.set_state(state)
    again = [b.x for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert sum(len(b.y) for b in loader) == 50

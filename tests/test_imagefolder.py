"""ImageNet-style class folders (Pillow, in memory, cached) and the batched RandomResizedCrop."""

import numpy as np
import pytest
import torch
from PIL import Image

import dhat.data.imagefolder as imf
from dhat.data import list_datasets, load_dataset
from dhat.data.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    load_image,
    random_resized_crop,
)
from dhat.errors import UserError

CLASSES = ["cat", "dog", "emu"]


def make_folder(root, n_train=3, n_val=2, sizes=((40, 30), (36, 62), (64, 64))):
    """root/{train,val}/<class>/i.png (emu: i.JPEG): each class a flat colour with a white
    top-left quadrant; mixed sizes, one grayscale image."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, c in enumerate(CLASSES):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                w, h = sizes[(i + k) % len(sizes)]
                a = np.zeros((h, w, 3), np.uint8)
                a[:] = (80 * k + 40, 200 - 60 * k, int(rng.integers(0, 255)))
                a[: h // 2, : w // 2] = 255
                img = Image.fromarray(a)
                if split == "train" and i == 0 and k == 0:
                    img.convert("L").save(d / f"{i}.png")
                elif c == "emu":
                    img.save(d / f"{i}.JPEG", quality=95)  # ImageNet's spelling
                else:
                    img.save(d / f"{i}.png")
    return root


def test_resolution_is_a_dataset_arg_and_old_names_are_hidden_aliases(tmp_path, capsys):
    import re

    from dhat.cli import main

    names = list_datasets()
    assert "imagefolder" in names and not [n for n in names if re.fullmatch(r"imagefolder\d+", n)]
    assert "imagefolder32" in list_datasets(hidden=True)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    helptext = capsys.readouterr().out
    assert "imagefolder" in helptext and not re.search(r"imagefolder\d", helptext)
    root = make_folder(tmp_path / "data")
    new = load_dataset("imagefolder", str(root), resolution=32, cache=False)
    old = load_dataset("imagefolder32", str(root), cache=False)  # an old run's name still loads
    assert new.test_x.shape[-2:] == (32, 32) and old.resolution == new.resolution == 32
    assert torch.equal(old.test_x, new.test_x) and torch.equal(old.train_x, new.train_x)
    with pytest.raises(UserError, match="Did you mean 'imagefolder'") as e:
        load_dataset("imagefoldr", str(root))
    assert "imagefolder64" not in str(e.value)  # the error lists only the visible names


def test_bundle_shapes_labels_and_views(tmp_path):
    root = make_folder(tmp_path / "data")
    for i in range(2):  # val/dog/i.png := train/dog/i.png
        (root / "val" / "dog" / f"{i}.png").write_bytes(
            (root / "train" / "dog" / f"{i}.png").read_bytes()
        )
    data = load_dataset("imagefolder", str(root), resolution=16, workers=2)
    side = round(16 * 256 / 224)
    assert data.train_x.shape == (9, 3, side, side) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (6, 3, 16, 16)
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.class_names == CLASSES and data.num_classes == 3
    assert data.mean == IMAGENET_MEAN and data.std == IMAGENET_STD
    # the held-out view of a stored training image is the test view of the same file
    assert torch.equal(data.train_view(data.train_x[3:5]), data.test_x[2:4])  # dog 0, 1
    g = torch.Generator().manual_seed(0)
    aug = data.train_augment(data.train_x[:4], g)
    assert aug.shape == (4, 3, 16, 16) and aug.dtype == torch.float32
    assert 0 <= aug.min() and aug.max() <= 1


def test_load_image_orientation_and_grayscale(tmp_path):
    a = np.zeros((40, 60, 3), np.uint8)
    a[:20, :30] = 255  # white top-left quadrant
    Image.fromarray(a).convert("L").save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png", side=20, crop=20)  # 40x60 -> 20x30 -> centre 20x20
    assert x.shape == (3, 20, 20) and x.dtype == np.uint8
    assert (x[:, 2:8, 0:3] == 255).all() and (
        x[:, 12:, :] == 0
    ).all()  # 10-px white band at top left


def test_cache_is_used_on_the_second_load(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    first = load_dataset("imagefolder", str(root), resolution=16)
    assert list((root / ".dhat_cache").glob("*.pt"))

    def boom(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(imf, "decode_all", boom)
    second = load_dataset("imagefolder", str(root), resolution=16)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_x, second.test_x)


def test_class_and_image_limits(tmp_path):
    root = make_folder(tmp_path / "data")
    data = load_dataset(
        "imagefolder", str(root), resolution=16, num_classes=2, max_per_class=2, cache=False
    )
    assert data.train_y.tolist() == [0, 0, 1, 1] and data.test_y.tolist() == [0, 0, 1, 1]
    assert data.num_classes == 2 and data.class_names == CLASSES[:2]


def test_clear_errors(tmp_path):
    with pytest.raises(UserError, match="--data-root"):
        load_dataset("imagefolder", None)
    with pytest.raises(UserError, match="train"):
        load_dataset("imagefolder", str(tmp_path))
    root = make_folder(tmp_path / "data")
    (root / "val" / "zebra").mkdir()
    with pytest.raises(UserError, match="zebra"):
        load_dataset("imagefolder", str(root), resolution=16, cache=False)


# --- random_resized_crop ---------------------------------------------------------------------
def test_rrc_identity_and_integer_windows():
    x = torch.rand(4, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    same = random_resized_crop(x, 16, scale=(1, 1), ratio=(1, 1), flip=False, generator=g)
    torch.testing.assert_close(same, x)
    crops = random_resized_crop(x, 8, scale=(0.25, 0.25), ratio=(1, 1), flip=False, generator=g)
    for i in range(4):  # an 8x8 box resampled to 8x8 is exactly a window of the image
        err = min(
            (crops[i] - x[i, :, t : t + 8, s : s + 8]).abs().max().item()
            for t in range(9)
            for s in range(9)
        )
        assert err < 1e-6


def test_rrc_flip_fallback_dtype_and_determinism():
    x = torch.rand(8, 3, 12, 12)
    flipped = random_resized_crop(
        x, 12, scale=(1, 1), ratio=(1, 1), flip=True, generator=torch.Generator().manual_seed(1)
    )
    kinds = [torch.allclose(flipped[i], x[i], atol=1e-6) for i in range(8)]
    assert all(
        k or torch.allclose(flipped[i], x[i].flip(-1), atol=1e-6) for i, k in enumerate(kinds)
    )
    assert 0 < sum(kinds) < 8
    # no draw fits (area fraction 2): the fallback is the whole (square) image
    whole = random_resized_crop(x, 12, scale=(2, 2), flip=False)
    torch.testing.assert_close(whole, x)
    u8 = (x * 255).round().to(torch.uint8)
    a = random_resized_crop(u8, 10, generator=torch.Generator().manual_seed(5))
    b = random_resized_crop(u8.float() / 255, 10, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert a.shape == (8, 3, 10, 10) and not torch.equal(
        a, random_resized_crop(u8, 10, generator=torch.Generator().manual_seed(6))
    )


def test_rrc_box_statistics():
    """Crop area fractions follow torchvision: mean of U(0.08, 1) (capped by the fit test)."""
    n, side = 4000, 64
    x = torch.zeros(n, 1, side, side)
    x[..., :, :] = torch.arange(side, dtype=torch.float32).view(1, side) / side  # column ramp
    out = random_resized_crop(x, 8, flip=False, generator=torch.Generator().manual_seed(0))
    width = (out[..., -1] - out[..., 0]).mean((1, 2)) * side * 8 / 7  # crop width in px
    assert 0.35 * side < width.mean() < 0.75 * side


def test_center_crop():
    x = torch.arange(36.0).view(1, 1, 6, 6)
    assert center_crop(x, 4)[0, 0, 0, 0].item() == 7.0
    with pytest.raises(ValueError):
        center_crop(x, 7)


def test_trainer_on_an_image_folder(tmp_path):
    from dhat.config import TrainConfig
    from dhat.train import Trainer

    root = make_folder(tmp_path / "data", n_train=4)
    cfg = TrainConfig(
        dataset="imagefolder",
        data_root=str(root),
        dataset_args={"resolution": 16},
        model="small_cnn",
        model_args={"width": 4},
        method="pgd_at",
        eps=4 / 255,
        step_size=1 / 255,
        steps=2,
        val_steps=1,
        epochs=1,
        batch_size=4,
        val_size=4,
        milestones=[],
        progress=False,
        device="cpu",
        out_dir=str(tmp_path / "run"),
    )
    trainer = Trainer(cfg)
    trainer.fit()
    assert next(iter(trainer.loader)).x.shape[-2:] == (16, 16)  # random-resized crops
    assert trainer.val[0].shape[-2:] == (16, 16)  # center crops
    rec = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(rec) == 1 and "nan" not in rec[0].lower().replace("val_clean", "")

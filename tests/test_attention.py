"""Attention analysis: IoU, boxes, overlays, and Grad-CAM IoU on a model with a known CAM."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import make_checkpoint
from PIL import Image
from torch import nn

from dhat.analysis.attention import attention_iou, attention_maps, boxes_to_masks, iou
from dhat.analysis.overlay import save_overlay_grid
from dhat.errors import UserError
from dhat.models import Classifier

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _box(h, w, r0, r1, c0, c1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


def test_iou_closed_form():
    pred = torch.stack(
        [_box(8, 8, 2, 6, 2, 6), _box(8, 8, 0, 2, 0, 2), torch.zeros(8, 8, dtype=torch.bool)]
    )
    gt = torch.stack(
        [_box(8, 8, 2, 6, 3, 7), _box(8, 8, 4, 8, 4, 8), torch.zeros(8, 8, dtype=torch.bool)]
    )
    got = iou(pred, gt)
    # 4x4 boxes overlapping 4x3: 12 / (16 + 16 - 12); disjoint: 0; both empty: 1 by convention
    assert torch.allclose(got, torch.tensor([12 / 20, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(iou(gt, gt), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        iou(pred, gt[:, :4])


def test_boxes_to_masks_hand_example():
    m = boxes_to_masks([[1, 2, 4, 3]], 4, 5)  # x1 y1 x2 y2, exclusive ends
    want = torch.zeros(1, 4, 5, dtype=torch.bool)
    want[0, 2, 1:4] = True
    assert torch.equal(m, want)
    # fractional box: pixel centres decide (centre 0.5 is out, 1.5 is in)
    m = boxes_to_masks(torch.tensor([[0.6, 0.0, 1.6, 1.0]]), 2, 3)
    assert m[0].nonzero().tolist() == [[0, 1]]
    # several boxes per image: union; degenerate / NaN boxes are padding
    nan = float("nan")
    m = boxes_to_masks([[[0, 0, 1, 1], [2, 2, 3, 3]], [[nan, nan, nan, nan], [3, 3, 3, 3]]], 3, 3)
    assert m[0].nonzero().tolist() == [[0, 0], [2, 2]] and not m[1].any()


class _Pick(nn.Module):
    def forward(self, x):
        return x[:, :1] * 1.0


class KnownCam(Classifier):
    """logits_c = (c + 1) * mean(x[:, 0]): Grad-CAM of any class is minmax(x[:, 0])."""

    cam_layer = "pick"

    def __init__(self, num_classes=3):
        super().__init__(num_classes, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.pick = _Pick()
        self.head = nn.Linear(1, num_classes, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.arange(1, num_classes + 1, dtype=torch.float32)[:, None])

    def logits(self, x):
        return self.head(F.adaptive_avg_pool2d(self.pick(x), 1).flatten(1))


def _known_batch():
    x = torch.zeros(3, 3, 8, 8)
    x[0, 0, 2:6, 2:6] = 1.0  # attention: rows 2-5, cols 2-5 (16 px)
    x[1, 0, 0:2, 0:4] = 0.9  # attention: rows 0-1, cols 0-3 (8 px)
    x[1, 0, 4:8, 4:8] = 0.3  # below the threshold after min-max (0.3 / 0.9)
    x[2, 0, 2:6, 2:6] = 1.0
    masks = torch.stack([_box(8, 8, 2, 6, 3, 7), _box(8, 8, 0, 4, 0, 4), _box(8, 8, 2, 6, 2, 6)])
    y = torch.tensor([0, 0, 2])
    return x, y, masks


def test_known_model_cam_is_minmax_of_channel_0():
    x, y, _ = _known_batch()
    cams = attention_maps(KnownCam(), x, y, batch_size=2)
    ch0 = x[:, 0]
    lo = ch0.flatten(1).amin(1)[:, None, None]
    want = (ch0 - lo) / (1e-7 + (ch0 - lo).flatten(1).amax(1)[:, None, None])
    assert torch.allclose(cams, want, atol=1e-5)


def test_attention_iou_hand_computed():
    x, y, masks = _known_batch()
    res = attention_iou(KnownCam(), x, y, masks, threshold=0.5, batch_size=2)
    # image 0: attention 16 px, mask 16 px, overlap 12 -> fg 12/20; background: 48 px, overlap 4
    #          -> 4 / (16 + 48 - 4) = 1/15
    # image 1: attention 8 px inside a 16 px mask -> fg 8/16; bg: no overlap -> 0
    # image 2: attention == mask -> fg 1, bg 0
    fg = [12 / 20, 8 / 16, 1.0]
    bg = [1 / 15, 0.0, 0.0]
    assert res["n"] == 3 and res["threshold"] == 0.5
    assert res["fg_iou"] == pytest.approx(sum(fg) / 3)
    assert res["bg_iou"] == pytest.approx(sum(bg) / 3)
    assert res["cam_area"] == pytest.approx((16 + 8 + 16) / 64 / 3)
    assert res["mask_area"] == pytest.approx((16 + 16 + 16) / 64 / 3)
    assert res["accuracy"] == pytest.approx(1 / 3)  # the model always says class 2
    per = {r["cls"]: r for r in res["per_class"]}
    assert set(per) == {0, 2} and per[0]["n"] == 2 and per[2]["n"] == 1
    assert per[0]["fg_iou"] == pytest.approx((fg[0] + fg[1]) / 2)
    assert per[0]["bg_iou"] == pytest.approx((bg[0] + bg[1]) / 2)
    assert per[2]["fg_iou"] == pytest.approx(1.0) and per[2]["accuracy"] == 1.0
    assert "inverse" not in res
    # a lower threshold: image 1's 0.3-valued block (1/3 after min-max) joins the attention
    res_hi = attention_iou(KnownCam(), x, y, masks, threshold=0.2)
    # now image 1 also attends rows 4-7, cols 4-7 (0.333 >= 0.2): 24 px, fg overlap 8 -> 8/32
    assert res_hi["fg_iou"] == pytest.approx((12 / 20 + 8 / 32 + 1.0) / 3)


def test_attention_iou_inverse_images_keep_a_robust_map():
    # A 4/255 perturbation moves channel 0 by at most 4/255, so the binarised maps (and the
    # IoUs) are unchanged; the inverse result is keyed by its budget.
    torch.manual_seed(0)
    x, y, masks = _known_batch()
    res = attention_iou(KnownCam(), x, y, masks, inverse_eps=[4 / 255, 2 / 255])
    assert set(res["inverse"]) == {"4/255", "2/255"}
    inv = res["inverse"]["4/255"]
    assert inv["eps"] == pytest.approx(4 / 255)
    assert inv["fg_iou"] == pytest.approx(res["fg_iou"]) and inv["bg_iou"] == pytest.approx(
        res["bg_iou"]
    )


def test_attention_iou_bad_input():
    x, y, masks = _known_batch()
    with pytest.raises(UserError):
        attention_iou(KnownCam(), x, y, masks[:2])
    with pytest.raises(UserError):
        attention_iou(KnownCam(), x, y, masks, threshold=1.5)


@pytest.mark.parametrize("use_mpl", [True, False])
def test_overlay_png(tmp_path, use_mpl):
    if use_mpl:
        pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=g)
    masks = torch.rand(12, 16, 16, generator=g) > 0.5
    cams = torch.rand(12, 16, 16, generator=g)
    labels = torch.arange(12) % 3
    path = save_overlay_grid(
        tmp_path / "sub" / "grid.png",
        images,
        masks,
        cams,
        labels,
        ["a", "b", "c"],
        per_class=2,
        use_matplotlib=use_mpl,
    )
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > im.size[1] > 0


def attention(*argv):
    from dhat.cli import main

    return main(["attention", *map(str, argv)])


def test_cli_attention_defaults_to_the_checkpoints_dataset(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    assert (
        attention(
            ckpt,
            "--n",
            40,
            "--inverse-eps",
            "4/255",
            "2/255",
            "--device",
            "cpu",
            "--overlay",
            tmp_path / "ov.png",
        )
        == 0
    )
    out = json.loads((ckpt.parent / "attention.json").read_text())
    assert out["n"] == 40 and out["dataset"] == "shapes"
    assert out["dataset_source"] == "the checkpoint's"
    assert set(out["inverse"]) == {"4/255", "2/255"}
    assert 0 <= out["fg_iou"] <= 1 and 0 <= out["bg_iou"] <= 1
    assert {r["name"] for r in out["per_class"]} <= set(att_class_names())
    assert (tmp_path / "ov.png").read_bytes()[:8] == PNG_SIGNATURE
    text = capsys.readouterr().out
    assert "natural" in text and "inverse 4/255" in text and "fg IoU" in text
    assert "the checkpoint's" in text


def att_class_names():
    from dhat.data.shapes import CLASS_NAMES

    return CLASS_NAMES


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--inverse-eps", "abc"], "--inverse-eps"),
        (["--inverse-eps", "8"], "8/255"),
        (["--n", "0"], "--n"),
        (["--n", "4", "--layer", "nope"], "layer 'nope'"),
        (["--dataset", "nomask"], "no ground-truth masks"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, monkeypatch, capsys, args, needle):
    from dhat.data import datasets

    bundle = datasets.DataBundle(
        "nomask",
        torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
        torch.zeros(2, dtype=torch.long),
        torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
        torch.zeros(2, dtype=torch.long),
        10,
        (0.5,) * 3,
        (0.5,) * 3,
    )
    monkeypatch.setitem(datasets._DATASETS, "nomask", lambda root=None, **_: bundle)
    ckpt = make_checkpoint(tmp_path / "m.pt")
    assert attention(ckpt, "--device", "cpu", "--out", tmp_path / "a.json", *args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert attention(tmp_path / "missing.pt") == 2


def test_cli_boxes_become_masks(tmp_path, monkeypatch, capsys):
    from dhat.data import datasets

    ckpt = make_checkpoint(tmp_path / "m.pt")
    bundle = datasets.DataBundle(
        "boxed",
        torch.zeros(6, 3, 32, 32, dtype=torch.uint8),
        torch.zeros(6, dtype=torch.long),
        torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8),
        torch.arange(6) % 10,
        10,
        (0.5,) * 3,
        (0.5,) * 3,
    )
    monkeypatch.setitem(datasets._DATASETS, "boxed", lambda root=None, **_: bundle)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([[0, 0, 16, 16]] * 4))  # boxes for the first 4 images
    assert (
        attention(
            ckpt,
            "--dataset",
            "boxed",
            "--boxes",
            boxes,
            "--device",
            "cpu",
            "--out",
            tmp_path / "a.json",
        )
        == 0
    )
    res = json.loads((tmp_path / "a.json").read_text())
    assert res["n"] == 4 and res["mask_area"] == pytest.approx(0.25)
    boxes.write_text(json.dumps([[1, 2, 3]]))
    capsys.readouterr()
    assert attention(ckpt, "--dataset", "boxed", "--boxes", boxes, "--device", "cpu") == 2
    assert "--boxes" in capsys.readouterr().err

"""`dhat attention CHECKPOINT`: IoU of the binarised Grad-CAM with ground-truth object masks,
on the checkpoint's dataset (or --dataset), for every split that has masks."""

from __future__ import annotations

import argparse

from ..config import AttentionConfig
from ..schema import specs
from .common import Parser, add_config_options, from_flags, given

FIELDS = {f for f, s in specs(AttentionConfig).items() if s.flag}


def add_parser(sub, argv: list[str]) -> Parser:
    p = sub.add_parser(
        "attention",
        help="IoU of binarised Grad-CAM with ground-truth object masks",
        description="Grad-CAM (true class) of a checkpoint on a dataset with object masks, "
        "binarised at --threshold; reports foreground and background IoU, "
        "optionally also on inverse-adversarial images (--inverse-eps 4/255).",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a last.pt / best.pt of `dhat train`")
    add_config_options(p.add_argument_group("analysis settings (AttentionConfig)"), AttentionConfig)
    p.set_defaults(run=run)
    return p


def _fmt(v: float) -> str:
    return "   n/a" if v != v else f"{v:6.3f}"


def table(res: dict) -> str:
    lines = [f"{'split / images':<28}{'fg IoU':>8}{'bg IoU':>8}{'area':>8}{'acc':>8}"]
    for split, r in res["splits"].items():
        rows = [("natural", r)] + [(f"inverse {k}", v) for k, v in r.get("inverse", {}).items()]
        for kind, v in rows:
            lines.append(
                f"{split + ' / ' + kind:<28}{_fmt(v['fg_iou']):>8}{_fmt(v['bg_iou']):>8}"
                f"{_fmt(v['cam_area']):>8}{_fmt(v['accuracy']):>8}"
            )
    return "\n".join(lines)


def run(ns: argparse.Namespace) -> None:
    from ..analysis.attention import analyse_checkpoint

    cfg = from_flags(AttentionConfig, given(ns, FIELDS), checkpoint=ns.checkpoint)
    res = analyse_checkpoint(cfg)
    print(
        f"attention IoU: {res['dataset']} ({res['dataset_source']}), {res['n']} test images, "
        f"Grad-CAM >= {res['threshold']:g}" + (f", layer {cfg.layer}" if cfg.layer else "")
    )
    print(table(res))
    print(f"(the object covers {res['mask_area']:.1%} of the image on average) -> {res['path']}")
    if cfg.overlay:
        print(f"overlays -> {cfg.overlay}")

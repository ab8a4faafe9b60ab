"""`dhat attention CHECKPOINT`: IoU of the binarised Grad-CAM with ground-truth object masks,
on the checkpoint's dataset (or --dataset), for every split that has masks."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis import attention as analysis  # via the module: a test's stand-in is seen
from ..config import AttentionConfig
from ..errors import UserError
from ..io import check_output_path, same_file
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
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(run=run)
    return p


def _fmt(v: float) -> str:
    return "   n/a" if v != v else f"{v:6.3f}"


def table(res: dict) -> str:
    """Each measure beside its shuffled-mask null (in parentheses): object share, fg and bg
    IoU; then the attended area and accuracy."""
    head = ["share (null)", "fg IoU (null)", "bg IoU (null)", "area", "acc"]
    lines = [f"{'split / images':<28}" + "".join(f"{h:>16}" for h in head)]
    for split, r in res["splits"].items():
        rows = [("natural", r)] + [(f"inverse {k}", v) for k, v in r.get("inverse", {}).items()]
        for kind, v in rows:
            pairs = [("object_share", "object_share_null"), ("fg_iou", "fg_iou_null")]
            pairs.append(("bg_iou", "bg_iou_null"))
            cells = [f"{_fmt(v[a]).strip()} ({_fmt(v[b]).strip()})" for a, b in pairs]
            cells += [_fmt(v["cam_area"]).strip(), _fmt(v["accuracy"]).strip()]
            lines.append(f"{split + ' / ' + kind:<28}" + "".join(f"{c:>16}" for c in cells))
            if "scene_bg_share" in v:
                lines.append(
                    f"{'':<28}scene class's map on the background: "
                    f"{_fmt(v['scene_bg_share']).strip()} "
                    f"(null {_fmt(v['scene_bg_share_null']).strip()})"
                )
    lines.append(
        "null: the same measure with each image's map scored against another image's mask "
        "(docs/attention.md)"
    )
    return "\n".join(lines)


def check_outputs(cfg: AttentionConfig) -> None:
    """The JSON and the overlay PNG are refused (one line, before any Grad-CAM is computed) if
    one would overwrite an input (the checkpoint, the boxes file) or the other, has the wrong
    suffix, or lies where nothing can be written (e.g. under a file)."""
    inputs = [cfg.checkpoint, cfg.boxes]
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).parent / "attention.json"
    check_output_path(out, inputs, [".json"], flag="--out")
    if cfg.overlay:
        if same_file(cfg.overlay, out):
            raise UserError(f"--overlay {cfg.overlay} is also the JSON output; name another file")
        check_output_path(cfg.overlay, inputs, [".png"], flag="--overlay")


def run(ns: argparse.Namespace) -> None:
    cfg = from_flags(AttentionConfig, given(ns, FIELDS), checkpoint=ns.checkpoint)
    check_outputs(cfg)
    res = analysis.analyse_checkpoint(cfg, progress=ns.progress)
    print(
        f"attention IoU: {res['dataset']} ({res['dataset_source']}), {res['n']} test images, "
        f"Grad-CAM >= {res['threshold']:g}" + (f", layer {cfg.layer}" if cfg.layer else "")
    )
    print(table(res))
    print(f"(the object covers {res['mask_area']:.1%} of the image on average) -> {res['path']}")
    if cfg.overlay:
        print(f"overlays -> {cfg.overlay}")

"""`dhat export CKPT`: a checkpoint's weights as a plain safetensors state dict + JSON sidecar."""
from __future__ import annotations

import argparse

from .common import Parser


def add_parser(sub, argv: list[str]) -> Parser:
    p = sub.add_parser("export", help="export a checkpoint's weights as safetensors + JSON sidecar",
                       description="A plain, portable state dict of a trained model "
                                   "(normalisation inside; inputs in [0, 1]).")
    p.add_argument("checkpoint", help="a last.pt / best.pt written by `dhat train`")
    p.add_argument("--out", default=None,
                   help="the .safetensors path (default: beside the checkpoint); the sidecar is "
                        "the same path with .json")
    p.add_argument("--weights", default="model", help="'model' or an extra model, e.g. fawa, ema")
    p.set_defaults(run=run)
    return p


def run(ns: argparse.Namespace) -> None:
    from ..export import export_checkpoint
    out, side = export_checkpoint(ns.checkpoint, ns.out, ns.weights)
    print(f"weights written to {out}")
    print(f"metadata written to {side}")

"""Pack a class-balanced CIFAR-10 subset into one small uint8 .npz (for `device_check.py`).

    python benchmarks/pack_cifar_subset.py            # 1000 train + 100 test images a class

Reads the official python pickles (`dhat.data.cifar.load_cifar`) and writes
`train_x` (N, 3, 32, 32) uint8, `train_y` (N,) int64, `test_x`, `test_y`, `class_names`:
`--train-per-class` / `--test-per-class` images of each class, a seeded random choice kept
in the official order. The file must stay under `--max-mib` (default 40).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dhat.data.cifar import load_cifar  # noqa: E402
from dhat.errors import UserError  # noqa: E402

DEFAULT_ROOT = ROOT / ".." / "shared" / "data" / "cifar10"
DEFAULT_OUT = ROOT / "data" / "cifar10_subset.npz"


def balanced(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of `per_class` seeded random images of every class (N,) -> (K·per_class,)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            raise UserError(f"class {c} has {len(idx)} images, fewer than {per_class}")
        out.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(out).sort().values


def pack(
    root: str | Path,
    out: str | Path,
    *,
    train_per_class: int = 1000,
    test_per_class: int = 100,
    seed: int = 0,
    max_mib: float = 40.0,
) -> Path:
    """Write the subset to `out` (.npz, compressed); returns its path."""
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        x, y, names = load_cifar(root, "cifar10", train=split == "train")
        keep = balanced(y, per_class, seed)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x[keep].numpy(), y[keep].numpy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, class_names=np.array(names), **arrays)
    mib = tmp.stat().st_size / 2**20
    if mib > max_mib:
        tmp.unlink()
        raise UserError(
            f"the subset would take {mib:.1f} MiB, over --max-mib {max_mib:g}; "
            "pack fewer images a class"
        )
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="folder of the official pickles")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-mib", type=float, default=40.0)
    args = p.parse_args(argv)
    try:
        out = pack(
            args.root,
            args.out,
            train_per_class=args.train_per_class,
            test_per_class=args.test_per_class,
            seed=args.seed,
            max_mib=args.max_mib,
        )
    except UserError as e:  # the library's hint names dhat train's flags; this script has --root
        msg = str(e).replace("pass --download to fetch it, or --data-root to point at it", "")
        hint = "pass --root FOLDER of the official pickles"
        print(f"error: {msg.rstrip('; ')} ({hint})", file=sys.stderr)
        return 2
    with np.load(out) as z:
        shapes = ", ".join(f"{k} {z[k].shape}" for k in ("train_x", "test_x"))
    print(f"wrote {out}: {shapes}, {out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

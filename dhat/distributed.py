"""torchrun / DistributedDataParallel plumbing: setup, rank checks, metric reduction.

How a DDP run is arranged (`torchrun --nproc_per_node G [--nnodes N ...] -m dhat.cli train`):

* Every rank draws the same shuffle and augmentation of each *global* batch from one seeded
  generator and keeps its own contiguous slice (`BatchLoader(rank=, world_size=)`), so the
  global batch, the epoch length and the resume point are those of one process.
* Parameters stay equal: DDP averages gradients, and every rank applies the same optimizer
  step. BN running statistics are rank 0's at each DDP forward (`broadcast_buffers`); attacks
  and Grad-CAM run on the unwrapped module (input gradients only, outside DDP's reducer) and
  update the local running statistics in train mode, which rank 0's overwrite again.
  Differences from one process: BN batch statistics come from the rank's slice (not the
  global batch) and random attack starts are drawn per rank.
* Rank 0 alone writes config.yaml, log.jsonl and checkpoints; every rank reads last.pt on
  resume, so the run directory must be on a filesystem all nodes see.
* Per-step metrics are summed (weighted by slice size) over the epoch and all-reduced once.
* The global batch and its generated part are rounded to multiples of the world size
  (`split_batch`; rank 0 says so), so one recipe runs on 1, 2, 4 or 8 processes.
* After training, rank 0 alone prints, writes the card and runs the quick evaluation
  (`is_main_process`: the process group is gone by then).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether setup_distributed created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun job (or a single process); usable before
    the process group exists and after it is destroyed (torchrun's RANK)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class BatchSplit:
    """A global batch of `batch` images of which `aux` are generated, each divisible by the
    world size; `note` says what was rounded (None if nothing was)."""

    batch: int
    aux: int
    note: str | None = None


def _multiple(n: float, k: int) -> int:
    """The multiple of k nearest to n (halves up), at least k."""
    return k * max(1, int(n / k + 0.5))


def split_batch(batch_size: int, aux_fraction: float, world_size: int) -> BatchSplit:
    """The global batch and its generated part (round(aux_fraction · batch), 0 without
    generated data) rounded to the nearest multiples of `world_size` that leave a real and,
    with aux_fraction > 0, a generated part in every rank's slice."""
    w = world_size
    aux = round(aux_fraction * batch_size)
    batch = batch_size if batch_size % w == 0 else _multiple(batch_size, w)
    k = round(aux_fraction * batch)
    if aux_fraction and k % w:
        k = _multiple(k, w)
    if aux_fraction and k >= batch:
        if batch - w < w:
            raise UserError(
                f"--batch-size {batch_size} is too small to hold real and generated images "
                f"on each of {w} processes: use at least {2 * w}"
            )
        k = batch - w
    if (batch, k) == (batch_size, aux):
        return BatchSplit(batch, k)
    parts = []
    if batch != batch_size:
        parts.append(f"batch size {batch} (not {batch_size})")
    if k != aux:
        parts.append(f"{k} generated images per batch (not {aux}, aux_fraction {k / batch:.3f})")
    return BatchSplit(
        batch, k, f"{w} processes: {' and '.join(parts)}, so that each divides by {w}"
    )


def setup_distributed(device: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a single process.

    Backend: NCCL on CUDA, gloo on CPU. Each process takes GPU `LOCAL_RANK` (the rank within
    its node, so multi-node jobs work). A process group the caller already initialised is
    used as is (and not destroyed by `cleanup_distributed`).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world <= 1:
        return Dist(), torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    owns = not dist.is_initialized()
    if owns:
        if dev.type == "cuda":
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, owns), dev


def cleanup_distributed(d: Dist) -> None:
    """Destroy the process group if `setup_distributed` created it (after the last collective)."""
    if d.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def reduce_sums(values: dict[str, float], d: Dist, device: torch.device) -> dict[str, float]:
    """Sum each value over all ranks (a no-op for one process). Every rank must pass the same
    keys (they are sorted, so insertion order may differ)."""
    if not d.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def all_reduce_sum(t: torch.Tensor, d: Dist, device: torch.device) -> torch.Tensor:
    """The element-wise sum of `t` over all ranks, on t's device (a no-op for one process)."""
    if not d.enabled:
        return t
    out = t.to(device).clone()
    dist.all_reduce(out)
    return out.to(t.device)


def all_ranks(flag: bool, d: Dist, device: torch.device) -> bool:
    """True only if `flag` is true on every rank: a decision (e.g. "the loss is finite", "a
    checkpoint to resume exists") that all ranks must take together, or they deadlock."""
    if not d.enabled:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return t.item() == 0.0


def broadcast_module(module: nn.Module, d: Dist, *, params: bool = False) -> None:
    """Copy rank 0's buffers (BN running statistics), and its parameters with `params`, to
    every rank, e.g. before validation so that all ranks evaluate the model rank 0 saves."""
    if not d.enabled:
        return
    tensors = list(module.buffers()) + (list(module.parameters()) if params else [])
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def shard(n: int, d: Dist) -> slice:
    """This rank's strided share of n items (all of them for one process)."""
    return slice(d.rank, n, d.world_size)


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed for (run seed, epoch, rank): distinct random attack starts on each rank, and an
    exact resume at an epoch boundary (the torch RNG is reseeded at each epoch's start)."""
    digest = hashlib.sha256(f"dhat/{seed}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()

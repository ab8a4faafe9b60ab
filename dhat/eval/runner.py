"""Runners of an evaluation's attack batches (`registry.Context.batches`): resumable and sharded.

Every attack runs as numbered batches of work under a unique key ("pgd10", "aa/apgd-t", ...),
and a batch's result depends only on its images, the seed, the attack and its index
(`registry.batch_seed`; AutoAttack re-seeds itself per call). So a batch may be run by any
process, at any time, and the evaluation is the same:

* `Resumable` persists every finished batch atomically in a state file beside the card
  (`state_path`), keyed by what the evaluation is (checkpoint SHA-256, attacks, images,
  seed, ε, ...): after a kill, `dhat eval ... --resume` skips the finished batches. A state
  file of another evaluation is refused with one line.
* `Sharded` runs batch i on rank i mod W and gathers the results on every rank
  (`torch.distributed`, gloo or NCCL), so each attack's cascade goes on with every image's
  result.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..config import EvalConfig
from ..data import DataBundle
from ..errors import UserError
from .records import images_sha256

SUFFIX = ".eval-state.pt"


def state_path(card_path: str | Path) -> Path:
    """eval_best.json -> eval_best.eval-state.pt (beside the card)."""
    p = Path(card_path)
    return p.with_name(p.stem + SUFFIX)


class Resumable:
    """Persists each batch's result under (key, index) in `path`; with `resume`, reuses the
    results of a state file whose identity equals `identity` (a one-line UserError naming the
    first difference otherwise). `inner` runs the batches not done yet (local or sharded);
    `write` is False on every rank but the first of a sharded run."""

    def __init__(
        self,
        path: Path,
        identity: dict[str, Any],
        *,
        resume: bool,
        inner: Callable[[str, int, Callable[[int], Any]], list[Any]] | None = None,
        write: bool = True,
    ):
        self.path, self.identity, self.write = Path(path), identity, write
        self.inner = inner
        self.done: dict[str, dict[int, Any]] = {}
        self.resumed = 0
        if resume and self.path.exists():
            try:
                state = torch.load(self.path, weights_only=True)
            except Exception as e:
                raise UserError(
                    f"{self.path} is not a readable evaluation state ({type(e).__name__}); "
                    "delete it or run without --resume"
                ) from None
            theirs = state.get("identity", {})
            for k, v in identity.items():
                if theirs.get(k) != v:
                    raise UserError(
                        f"{self.path} is the state of another evaluation (its {k} differs); "
                        "delete it, or run without --resume to start over"
                    )
            self.done = state.get("done", {})
            self.resumed = sum(len(v) for v in self.done.values())

    def __call__(self, key: str, n: int, fn: Callable[[int], Any]) -> list[Any]:
        done = self.done.setdefault(key, {})
        todo = [i for i in range(n) if i not in done]

        def one(i: int) -> Any:
            r = fn(i)
            done[i] = r
            self._save()
            return r

        if self.inner is None:
            for i in todo:
                one(i)
        elif todo:
            for i, r in zip(todo, self.inner(key, len(todo), lambda j: fn(todo[j]))):
                done[i] = r
            self._save()
        return [done[i] for i in range(n)]

    def _save(self) -> None:
        if not self.write:
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        except OSError as e:  # a folder we may not write: evaluate on, without a state
            warnings.warn(f"no resumable state: cannot write {self.path} ({e})", stacklevel=3)
            self.write = False
            return
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"identity": self.identity, "done": self.done}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def finish(self) -> None:
        """The card is written: the state is no longer needed."""
        if self.write:
            self.path.unlink(missing_ok=True)


class Sharded:
    """Batch i of every key on rank i mod world_size; results all-gathered to every rank."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, key: str, n: int, fn: Callable[[int], Any]) -> list[Any]:
        mine = {i: fn(i) for i in range(self.rank, n, self.world_size)}
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, mine)
        out: dict[int, Any] = {}
        for part in gathered:
            out.update(part)
        return [out[i] for i in range(n)]


def evaluation_identity(
    cfg: EvalConfig,
    checkpoint_sha256: str,
    data: DataBundle,
    eps: float,
    aa_budget: dict[str, int] | None = None,
) -> dict[str, Any]:
    """What an evaluation is, for `Resumable`: a resumed state must match every entry (the
    checkpoint's SHA-256, the weights, attacks, test images, seed, budgets, batch size, amp)."""
    n = min(cfg.n_test or len(data.test_y), len(data.test_y))
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "weights": cfg.weights,
        "attacks": list(cfg.attacks),
        "images_sha256": images_sha256(data.test_x[:n], data.test_y[:n]),
        "aa_n": min(cfg.aa_n or n, n),
        "seed": cfg.seed,
        "eps": eps,
        "step_size": cfg.step_size,
        "batch_size": cfg.batch_size,
        "aa_budget": dict(aa_budget or {}),
        "amp": cfg.amp,
    }


def evaluation_runner(
    card_path: Path,
    identity: dict[str, Any],
    *,
    group: Any = None,
    resume: bool = False,
    write: bool = True,
    log: Callable[[str], None] | None = None,
) -> Resumable:
    """The runner of one evaluation's attack batches: a `Resumable` state beside the card,
    keyed by `identity`, over a `Sharded` runner when `group` (a `dhat.distributed.Dist`) is
    given; `log` says when it shards and how many batches it resumes."""
    sharded = Sharded(group.rank, group.world_size) if group is not None else None
    state = Resumable(state_path(card_path), identity, resume=resume, inner=sharded, write=write)
    if sharded is not None and log is not None:
        log(
            f"sharded: {sharded.world_size} processes run every attack's batches "
            "(curves, sanity checks, robust gap and background measures on every rank)"
        )
    if state.resumed and log is not None:
        log(f"resuming: {state.resumed} finished attack batches from {state.path}")
    return state

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

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
            import warnings

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
        import torch.distributed as dist

        mine = {i: fn(i) for i in range(self.rank, n, self.world_size)}
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, mine)
        out: dict[int, Any] = {}
        for part in gathered:
            out.update(part)
        return [out[i] for i in range(n)]

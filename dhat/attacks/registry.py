"""The evaluation attacks, one entry each: what `dhat eval --attacks` accepts.

An entry (`Attack`) has a name, a family, a human description, a cost estimate and one
`run(model, x, y, ctx) -> Outcome` (per-image correctness, plus a record for the card).
Evaluation, the curves, the sanity checks, the result card and `dhat report` ask this
registry (family, image set, description, record name) instead of matching names.

Families:
  clean       no attack
  pgd         dhat's PGD (`spec.AttackSpec`) in the context's threat model (`Context.norm`:
              L-inf by default, or L2): pgdK on cross-entropy, cwK on the CW margin
  autoattack  the official AutoAttack package, unchanged (`autoattack.py`): its single attacks
              apgd-ce, apgd-t, fab-t, square (each alone, with its standard-version settings)
              and 'aa', the standard cascade (L-inf only)

Image sets: "test" (the first n_test test images; the single AutoAttack attacks too, so that
their records "test|<name>" pair with the other test records) or "aa" (the first aa_n of them:
standard AutoAttack, record "aa|robust").

Randomness is drawn per batch: batch i of attack A is seeded from (seed, A, i)
(`batch_seed`), never from a global stream, so a batch gives the same result whichever
process runs it and whenever (sharded and resumed evaluations rely on this). AutoAttack
seeds itself per package call with the evaluation's seed.

Adding an attack is one `register(...)` call in this file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError
from . import autoattack
from .robust import correct_under
from .spec import AttackSpec, Loss
from .threat import ThreatModel, threat_class

Inspect = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
Batches = Callable[[str, int, Callable[[int], Any]], list[Any]]


def local_batches(key: str, n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run batches 0..n-1 of the work named `key` here, in order (the default runner)."""
    return [fn(i) for i in range(n)]


@dataclass
class Context:
    """What an attack run needs besides the model and images: the threat model (`eps`,
    `step_size`, `norm`: "Linf" or "L2"; the attack's name gives the steps), the seed,
    batching, and `batches`, the runner of a list of batches (local; resumable or sharded
    runners persist or distribute them). `aa_budget` shrinks AutoAttack (tests only).
    `inspect(x, y, x_adv)`, if given, sees every batch's final adversarial images."""

    eps: float
    step_size: float = 2 / 255
    seed: int = 0
    batch_size: int = 256
    device: Any = "cpu"
    progress: bool = False
    log: Callable[[str], None] | None = None
    batches: Batches = local_batches
    aa_budget: dict[str, int] = field(default_factory=dict)
    inspect: Inspect | None = None
    norm: str = "Linf"

    @classmethod
    def from_threat(cls, threat: ThreatModel, **kwargs: Any) -> Context:
        """The context of `threat` (its eps, step size and norm; its steps and random start
        are the attacks' own); `kwargs`: the other fields."""
        if isinstance(threat.eps, torch.Tensor):
            raise ValueError("an evaluation context takes one float eps, not a per-sample tensor")
        return cls(float(threat.eps), threat.step_size, norm=threat.norm, **kwargs)


@dataclass
class Outcome:
    """(N,) bool correctness after the attack, and the card's record of it (or None)."""

    correct: torch.Tensor
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class Attack:
    """One evaluation attack. `describe(eps, step_size, norm="Linf")` is the card's line; `cost` the
    forward(+backward) passes per image (an upper bound for AutoAttack); `images` the image
    set it runs on ("test" or "aa"); `record` its per-image record name."""

    name: str
    family: str
    title: str
    cost: int
    images: str
    record: str
    describe: Callable[..., str]  # (eps, step_size, norm="Linf") -> str
    run: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Context], Outcome]


def batch_seed(seed: int, attack: str, index: int) -> int:
    """The seed of batch `index` of `attack`: a hash of all three (63 bits)."""
    h = hashlib.sha256(f"{seed}|{attack}|{index}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def per_batch(
    name: str,
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    ctx: Context,
    attack: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """(N,) bool: correct after `attack` (None: clean), batch by batch, each batch seeded by
    `batch_seed(ctx.seed, name, i)` and run through `ctx.batches`."""
    bs = ctx.batch_size
    if attack is not None and ctx.inspect is not None:
        inner, look = attack, ctx.inspect

        def attack(m, xb, yb):
            x_adv = inner(m, xb, yb)
            look(xb, yb, x_adv)
            return x_adv

    def one(i: int) -> torch.Tensor:
        torch.manual_seed(batch_seed(ctx.seed, name, i))
        sl = slice(i * bs, (i + 1) * bs)
        return correct_under(model, x[sl], y[sl], attack, batch_size=bs, device=ctx.device)

    parts = ctx.batches(name, (len(y) + bs - 1) // bs, one)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


# ----------------------------------------------------------------------------- the entries
Builder = Callable[[re.Match], Attack]
_ENTRIES: list[tuple[re.Pattern, Builder, str]] = []


def register(pattern: str, usage: str) -> Callable[[Builder], Builder]:
    """Register a builder for the attack names matching `pattern` (full match); `usage` is
    how the name is written in the list of known attacks."""

    def deco(build: Builder) -> Builder:
        _ENTRIES.append((re.compile(pattern), build, usage))
        return build

    return deco


@register(r"clean", "clean")
def _clean(m: re.Match) -> Attack:
    return Attack(
        "clean",
        "clean",
        "Clean",
        1,
        "test",
        "test|clean",
        lambda eps, step, norm="Linf": "no attack",
        lambda model, x, y, ctx: Outcome(per_batch("clean", model, x, y, ctx, None)),
    )


@register(r"(pgd|cw)([1-9]\d*)?", "pgdK (pgd = pgd10), cw / cwK (cw = cw20)")
def _pgd(m: re.Match) -> Attack:
    loss: Loss = "ce" if m.group(1) == "pgd" else "cw"
    steps = int(m.group(2) or (10 if loss == "ce" else 20))
    name = m.group(0)

    def spec(eps: float, step: float, norm: str = "Linf") -> AttackSpec:
        threat_class(norm)  # an unknown norm: a one-line UserError
        return AttackSpec(loss, steps, eps, step, norm)

    def run(model, x, y, ctx: Context) -> Outcome:
        attack = spec(ctx.eps, ctx.step_size, ctx.norm)
        return Outcome(per_batch(name, model, x, y, ctx, attack))

    title = f"PGD-{steps}" if loss == "ce" else ("CW" if m.group(2) is None else f"CW-{steps}")
    return Attack(
        name,
        "pgd",
        title,
        steps + 1,
        "test",
        f"test|{name}",
        lambda eps, step, norm="Linf": spec(eps, step, norm).describe(),
        run,
    )


# cost: APGD 100 iterations; APGD-T and FAB-T 9 target classes x 100; Square 5000 queries
SINGLE_AA = {
    "apgd-ce": ("APGD-CE", 101, "APGD on cross-entropy, 100 iterations, 1 restart"),
    "apgd-t": ("APGD-T", 901, "targeted APGD on the DLR loss, 9 target classes x 100 iterations"),
    "fab-t": ("FAB-T", 901, "targeted FAB, 9 target classes x 100 iterations"),
    "square": ("Square", 5001, "Square Attack, 5000 queries (black-box)"),
}
AA_DESCRIPTION = (
    "AutoAttack, version 'standard' (APGD-CE, APGD-T, FAB-T, Square), L-inf, "
    "eps {eps}/255, official implementation"
)


def _linf_only(name: str, norm: str) -> str:
    """'' for the L-inf threat model, the only one AutoAttack runs in here (a one-line
    UserError otherwise)."""
    if threat_class(norm).norm != "Linf":
        raise UserError(f"attack '{name}' runs in the Linf threat model only, not {norm}")
    return ""


def _aa_kwargs(ctx: Context) -> dict[str, Any]:
    return dict(
        eps=ctx.eps,
        batch_size=ctx.batch_size,
        device=ctx.device,
        seed=ctx.seed,
        log=ctx.log,
        progress=ctx.progress,
        batches=ctx.batches,
        inspect=ctx.inspect,
        **ctx.aa_budget,
    )


@register(r"apgd-ce|apgd-t|fab-t|square", "apgd-ce, apgd-t, fab-t, square")
def _single_aa(m: re.Match) -> Attack:
    name = m.group(0)
    title, cost, what = SINGLE_AA[name]

    def run(model, x, y, ctx: Context) -> Outcome:
        _linf_only(name, ctx.norm)
        record, correct = autoattack.run_single(model, x, y, attack=name, **_aa_kwargs(ctx))
        return Outcome(correct, record)

    return Attack(
        name,
        "autoattack",
        title,
        cost,
        "test",
        f"test|{name}",
        lambda eps, step, norm="Linf": (
            _linf_only(name, norm)
            + (
                f"{title} alone, from AutoAttack's standard version ({what}), "
                f"L-inf, eps {eps * 255:g}/255, official implementation"
            )
        ),
        run,
    )


@register(r"aa", "aa (standard AutoAttack)")
def _aa(m: re.Match) -> Attack:
    def run(model, x, y, ctx: Context) -> Outcome:
        _linf_only("aa", ctx.norm)
        record, robust = autoattack.run_autoattack(
            model, x, y, return_flags=True, **_aa_kwargs(ctx)
        )
        return Outcome(torch.as_tensor(robust).bool(), record)

    return Attack(
        "aa",
        "autoattack",
        "AA",
        1 + sum(c for _, c, _ in SINGLE_AA.values()),
        "aa",
        "aa|robust",
        lambda eps, step, norm="Linf": (
            _linf_only("aa", norm) + AA_DESCRIPTION.format(eps=f"{eps * 255:g}")
        ),
        run,
    )


def known() -> str:
    return ", ".join(usage for _, _, usage in _ENTRIES)


def get_attack(name: str) -> Attack:
    """The attack called `name` (a one-line UserError naming the known ones otherwise)."""
    for pattern, build, _ in _ENTRIES:
        m = pattern.fullmatch(name)
        if m:
            return build(m)
    raise UserError(f"unknown attack '{name}': use {known()}")


def find_attack(name: str) -> Attack | None:
    """`get_attack`, or None for a name no entry matches (e.g. a report column)."""
    try:
        return get_attack(name)
    except UserError:
        return None


def check_attack_names(names) -> None:
    """Every name is a registered attack (a one-line error otherwise)."""
    for name in names:
        get_attack(name)


def describe(name: str, eps: float, step_size: float, norm: str = "Linf") -> str:
    """The card's line for attack `name` in the `norm` ball."""
    return get_attack(name).describe(eps, step_size, norm)


def uses_autoattack(names) -> bool:
    return any(get_attack(n).family == "autoattack" for n in names)

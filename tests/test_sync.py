"""No host reads per training step, per attack step or per evaluation batch.

A read (`.item()`, `.cpu()`, `.tolist()`, `.numpy()`, `bool()`, `float()`, `int()`,
`operator.index()` of a tensor) waits for the device to finish everything queued before it.
The wrappers below count the calls made from the `dhat` package (the caller's frame), so
torch's own Python internals are not counted. The trainer reads at its log points (every
`log_every` steps, and at the end of the epoch with validation): a whole epoch must make the
same number of reads for few and for many steps.
"""

import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import dhat
from dhat.attacks import inverse_pgd, pgd
from dhat.attacks.robust import correct_under
from dhat.attacks.spec import make_attack
from dhat.config import TrainConfig
from dhat.data import BatchLoader
from dhat.methods import RunInfo, create_method, list_methods, method_options
from dhat.train import train

READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
PACKAGE = Path(dhat.__file__).resolve().parent
# Reads of tensors that live on the host by construction, on every device (not syncs):
HOST_ONLY = {
    ("attacks/pgd.py", "_check_eps"): "validates a Python-float budget (or a CPU tensor); a "
    "per-sample budget on an accelerator is not read",
}
METHODS = [m for m in list_methods() if not m.startswith("_")]


@contextmanager
def counting_reads():
    """Counter of reads from dhat code, by (file, line, function, read); `HOST_ONLY` ones are
    left out."""
    reads = Counter()
    saved = {name: (torch.Tensor.__dict__.get(name), getattr(torch.Tensor, name)) for name in READS}

    def counted(name, original):
        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            path = Path(frame.f_code.co_filename)
            if path.is_relative_to(PACKAGE):
                where = (path.relative_to(PACKAGE).as_posix(), frame.f_code.co_name)
                if where not in HOST_ONLY:
                    reads[(where[0], frame.f_lineno, where[1], name)] += 1
            return original(self, *args, **kwargs)

        return read

    for name, (_, original) in saved.items():
        setattr(torch.Tensor, name, counted(name, original))
    try:
        yield reads
    finally:
        for name, (own, _) in saved.items():
            if own is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, own)


def test_the_counter_counts_reads_from_dhat_code_only():
    from dhat.train.state import _to_random_state

    t = torch.arange(3)
    with counting_reads() as reads:
        float(t.sum()), bool(t.all()), t.tolist()  # a test's: not counted
        _to_random_state({"version": 3, "internal": t, "gauss": None})  # dhat's: one tolist
    assert [(k[0], k[2], k[3]) for k in reads] == [("train/state.py", "_to_random_state", "tolist")]


# --- training steps -------------------------------------------------------------------------
def data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n,), generator=g),
    )


def build(spec: str, epoch: int):
    name, _, opts = spec.partition(":")
    options = dict(kv.split("=") for kv in filter(None, opts.split(",")))
    torch.manual_seed(0)
    model = dhat.create_model("small_cnn", num_classes=10, width=4)
    method = create_method(
        name, **TrainConfig(method=name, steps=2, method_args=options).method_kwargs()
    )
    method.setup(RunInfo(num_classes=10, num_train=32, epochs=110, device=torch.device("cpu")))
    method.start_epoch(epoch)
    return model, method, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def step(model, method, opt, batch):
    """What the trainer does per batch (its metric sums stay on the device)."""
    loss, metrics = method(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    method.after_step(model)
    return loss.detach(), metrics


# A method's step depends on the epoch only through its start options (SGLR's `es`, CFA's
# `begin`, AWP's `warmup`: dhat/methods reads `self.epoch` nowhere else), so epoch 100 (past
# every default) is a second case only for the methods that have one.
GATES = {"es", "begin", "warmup"}
STEP_CASES = [(spec, 0) for spec in [*METHODS, "dhat:batched_forward=true"]] + [
    (m, 100) for m in METHODS if GATES & set(method_options(m))
]


@pytest.mark.parametrize("spec, epoch", STEP_CASES, ids=[f"{s}-epoch{e}" for s, e in STEP_CASES])
def test_training_steps_read_nothing(spec, epoch, one_thread):
    model, method, opt = build(spec, epoch)
    x, y = data()
    loader = BatchLoader(
        x, y, 8, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)
    )
    step(model, method, opt, next(iter(loader)))  # warm-up: lazy initialisation
    with counting_reads() as reads:
        for batch in loader:  # 4 steps, with the loader's work
            step(model, method, opt, batch)
    assert not reads, f"{spec} reads per step: {dict(reads)}"


# --- the trainer's epoch ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["pgd_at", "dhat_cfa"])
def test_a_trainer_epoch_reads_the_same_for_few_and_many_steps(method, tmp_path, one_thread):
    def reads_of(train_subset):
        cfg = TrainConfig(
            dataset="blobs",
            model="small_cnn",
            model_args={"width": 4},
            method=method,
            epochs=1,
            batch_size=20,
            val_size=40,
            train_subset=train_subset,
            steps=1,
            val_steps=1,
            log_every=0,
            milestones=[],
            progress=False,
            device="cpu",
            out_dir=str(tmp_path / str(train_subset)),
        )
        with counting_reads() as reads:
            train(cfg)
        return reads

    few, many = reads_of(80), reads_of(180)  # 2 and 7 steps
    assert sum(few.values()) == sum(many.values()), (dict(few), dict(many))


# --- attacks and evaluation ---------------------------------------------------------------------
def attack_cases(model, x, y):
    eps = dict(eps=8 / 255, step_size=2 / 255, steps=3)
    return {
        "pgd_ce": lambda: pgd(model, x, y, **eps),
        "pgd_cw": lambda: pgd(model, x, y, loss="cw", **eps),
        "pgd_kl": lambda: pgd(model, x, y, loss="kl", p_ref=torch.softmax(model(x), 1), **eps),
        "pgd_per_sample_eps": lambda: pgd(
            model, x, y, **{**eps, "eps": torch.full((len(y),), 0.03)}
        ),
        "inverse_ce": lambda: inverse_pgd(model, x, y, loss="ce", **eps),
        "inverse_official": lambda: inverse_pgd(model, x, y, x_adv=x.flip(3), **eps),
        "inverse_recompute": lambda: inverse_pgd(
            model, x, y, x_adv=x.flip(3), recompute_adv=True, **eps
        ),
    }


@pytest.mark.parametrize("case", list(attack_cases(None, None, None)))
def test_attack_loops_read_nothing(case, one_thread):
    torch.manual_seed(0)
    model = dhat.create_model("small_cnn", num_classes=10, width=4).eval()
    x, y = data(8)
    run = attack_cases(model, x.float() / 255, y)[case]
    with counting_reads() as reads:
        run()
    assert not reads, dict(reads)


def test_evaluation_reads_at_most_once_per_batch(one_thread):
    torch.manual_seed(0)
    model = dhat.create_model("small_cnn", num_classes=10, width=4)
    x, y = data(10)
    attack = make_attack("pgd3", 8 / 255, 2 / 255)
    for spec in (None, attack):
        with counting_reads() as reads:
            correct_under(model, x, y, spec, batch_size=4)
        assert sum(reads.values()) <= 3, dict(reads)  # 3 batches

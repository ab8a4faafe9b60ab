import hashlib
import os
from pathlib import Path

import pytest
import torch

import dhat
from dhat.data.cifar import find_folder

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CIFAR_ROOT = Path(os.environ.get("DHAT_CIFAR10", SHARED_DATA / "cifar10"))
FASHION_ROOT = Path(os.environ.get("DHAT_FASHION_MNIST", SHARED_DATA / "fashion-mnist"))

# One intra-op thread for the whole suite: its networks are tiny, so a second OpenMP thread
# saves little even on an idle 2-core box, and on a busy one (CI neighbours, other jobs) the
# threads' barriers spin while one of them waits for a core: the same test then takes 10-100x
# as long. Subprocesses (DDP ranks, lock workers) get OMP_NUM_THREADS=1 likewise.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
_TOOL_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git"}


def _repo_listing() -> set[str]:
    """The repository root's entries and everything under tests/ (tools' caches left out):
    where a file written to the current directory, or beside the tests, lands. A listing,
    not `git status`: cheap, independent of .gitignore (a card or run folder written into an
    ignored place counts too), and blind to edits made meanwhile under dhat/ or docs/."""
    names = {p.name for p in REPO.iterdir() if p.name not in _TOOL_DIRS}
    for p in (REPO / "tests").rglob("*"):
        rel = p.relative_to(REPO)
        if not _TOOL_DIRS & set(rel.parts):
            names.add(rel.as_posix())
    return names


@pytest.fixture(scope="session", autouse=True)
def _no_files_left_in_the_repository():
    """Fails the run (an error in the last test's teardown) if it created files in the
    repository root or under tests/: outputs belong under tmp_path."""
    before = _repo_listing()
    yield
    created = sorted(_repo_listing() - before)
    if created:
        pytest.fail(f"the test run wrote into the repository: {created}", pytrace=False)


@pytest.fixture(autouse=True)
def _cwd_outside_the_repository(tmp_path_factory, monkeypatch):
    """Every test runs in a scratch folder of its own, so a fallback written to the current
    directory (e.g. an evaluation's result card when its folder is unwritable) cannot land in
    the repository, wherever pytest was started. Tests that need a known cwd chdir themselves."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd", numbered=True))


@pytest.fixture(scope="session")
def cifar_root():
    if find_folder(CIFAR_ROOT, "cifar10") is None:
        pytest.skip(f"real CIFAR-10 not found at {CIFAR_ROOT}")
    return CIFAR_ROOT


@pytest.fixture(scope="session")
def fashion_root():
    from dhat.data.fashion_scenes import find_fashion_folder

    folder = find_fashion_folder(FASHION_ROOT)
    if folder is None:
        pytest.skip(f"Fashion-MNIST not found at {FASHION_ROOT}")
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for tests running many tiny batches (AutoAttack, sanity checks):
    avoids OpenMP oversubscription on shared CPUs. Restored afterwards. (The suite already
    runs on one thread; this keeps such tests on one if that default changes, or if a test
    before them raised it, e.g. through a `threads` option.)"""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL_MODEL_KWARGS = {
    "preact_resnet18": dict(width=8),
    "resnet18": dict(width=8),
    "small_cnn": dict(width=4),
    "wide_resnet": dict(depth=10, widen=1),
    "resnet50": dict(width=8),
    "vgg16_bn": dict(width=8),
    "inception_v3": dict(width_mult=0.125),
    "dm_wrn": dict(depth=10, width=1),
    "dm_preact": dict(width=8),
    "per_image_wrn": dict(depth=10, widen=1),
}

# Fixed-size registrations with no size knob: each is exactly another registered model at
# full size (test_models checks this on the meta device), so the sweeps that compute run on
# that model's small configuration and these are built full-size on the meta device only.
FULL_SIZE_ALIASES = {
    "wrn_28_10": ("wide_resnet", dict(depth=28, widen=10)),
    "wrn_34_10": ("wide_resnet", dict(depth=34, widen=10)),
}


def small_model_kwargs(name):
    """Constructor arguments that make a registered model small enough for CPU tests."""
    if name in FULL_SIZE_ALIASES:
        raise ValueError(f"{name} has no small configuration: build it on the meta device")
    return SMALL_MODEL_KWARGS.get(name, {})


def computable_models():
    """The registered models that have a small configuration (all but FULL_SIZE_ALIASES)."""
    from dhat.models import list_models

    return [n for n in list_models() if n not in FULL_SIZE_ALIASES]


def blobs(n=256, seed=0, classes=4):
    """A learnable toy problem: each class is a constant colour plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = torch.rand(classes, 3, 1, 1, generator=g)
    x = (centres[y] + 0.15 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
    return x, y


def fit(model, x, y, *, epochs: int, batch_size: int, lr: float = 0.1):
    """Plain SGD (momentum 0.9) on CE: a briefly trained model for attack and eval tests."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for i in range(0, len(y), batch_size):
            loss = torch.nn.functional.cross_entropy(
                model(x[i : i + batch_size]), y[i : i + batch_size]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@pytest.fixture(scope="session")
def trained_tiny():
    """A small CNN trained briefly on `blobs`, in eval mode (for attack direction tests)."""
    torch.manual_seed(0)
    x, y = blobs()
    model = dhat.create_model("small_cnn", num_classes=4, width=4)
    fit(model, x, y, epochs=15, batch_size=64)  # 100% training accuracy
    return model.eval(), x, y


def register_blobs() -> str:
    """Register 'blobs', a tiny in-memory dataset for trainer, CLI and DDP tests (4 classes)."""
    from dhat.data import DataBundle, list_datasets, register_dataset

    if "blobs" not in list_datasets():

        @register_dataset("blobs")
        def _blobs(root=None, **_):
            x, y = blobs(n=200, seed=1)
            tx, ty = blobs(n=64, seed=2)
            u8 = lambda t: (t * 255).round().to(torch.uint8)  # noqa: E731
            return DataBundle(
                "blobs",
                u8(x),
                y,
                u8(tx),
                ty,
                4,
                (0.5, 0.5, 0.5),
                (0.25, 0.25, 0.25),
                ["a", "b", "c", "d"],
            )

    return "blobs"


@pytest.fixture(scope="session", autouse=True)
def blobs_dataset():
    return register_blobs()


TINY = [
    "--dataset",
    "blobs",
    "--model",
    "small_cnn",
    "--model-arg",
    "width=4",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--val-size",
    "40",
    "--steps",
    "1",
    "--val-steps",
    "1",
    "--no-progress",
    "--lr",
    "0.05",
    "--milestones",
    "1",
]


def make_checkpoint(
    path,
    *,
    model="small_cnn",
    num_classes=10,
    model_args=None,
    config=None,
    seed=0,
    method="standard",
):
    """A real dhat checkpoint of an untrained model (for eval/attention/export tests)."""
    from dhat.checkpoint import save_checkpoint

    model_args = dict(model_args or {"width": 4})
    torch.manual_seed(seed)
    net = dhat.create_model(model, num_classes=num_classes, **model_args)
    save_checkpoint(
        path,
        {
            "model": net.state_dict(),
            "epoch": 0,
            "method": method,
            "model_spec": dict(
                name=model,
                num_classes=num_classes,
                mean=[0.5] * 3,
                std=[0.25] * 3,
                kwargs=model_args,
            ),
            "config": {
                "dataset": "shapes",
                # another dataset given in `config` takes its own arguments (none by default)
                "dataset_args": {"n_train": 0, "n_test": 200}
                if (config or {}).get("dataset", "shapes") == "shapes"
                else {},
                "method": method,
                "method_args": {},
                "seed": 0,
                "val_size": 0,
                "eps": 8 / 255,
                **(config or {}),
            },
        },
    )
    return path


# --- shared by the run-directory, hostile-input and config tests ----------------------------
FAST = [*TINY, "--train-subset", "80", "--val-size", "16"]


def train_fast(out, *extra, method="standard"):
    """`dhat train` of the FAST tiny run into `out` (no quick evaluation); its exit status."""
    from dhat.cli import main

    return main(["train", *FAST, "--method", method, "--out-dir", str(out), "--no-eval", *extra])


def one_line(text: str) -> str:
    """The single line of an error output (fails on several lines or a traceback)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (links: their target path), by relative path."""
    return {
        str(p.relative_to(folder)): (
            "-> " + os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


@pytest.fixture
def no_data(monkeypatch):
    """Any data loading fails the test: a bad value must stop the run before data is read."""

    def boom(*a, **k):
        raise AssertionError("data was loaded before the configuration was valid")

    import dhat.train.assembly as assembly

    monkeypatch.setattr(assembly, "load_dataset", boom)

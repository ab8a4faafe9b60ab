"""BatchLoader keeps the data on the device and augments there, with the same batches as the
per-batch host loader it replaced (copied below as the oracle)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dhat.data import BatchLoader
from dhat.data.imagefolder import center_crop, train_augment


# --- the oracle: the loader and augmentation as they were before data moved to the device ----
def oracle_crop_flip(x, padding=4, flip=True, generator=None):
    b, _, h, w = x.shape
    gen_device = generator.device if generator is not None else x.device
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(
            x.device
        )
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(
            x.device
        )
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, rows, cols]
    if flip:
        do = torch.rand(b, generator=generator, device=gen_device).to(x.device) < 0.5
        x = torch.where(do[:, None, None, None], x.flip(3), x)
    return x


def oracle_batches(
    images,
    labels,
    batch_size,
    *,
    shuffle=False,
    augment=False,
    drop_last=False,
    generator,
    rank=0,
    world_size=1,
    padding=4,
    augment_fn=None,
    view_fn=None,
):
    n = len(labels)
    full, rest = divmod(n, batch_size)
    length = full + int(not drop_last and rest >= world_size)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(length):
        idx = order[i * batch_size : (i + 1) * batch_size]
        x = images[idx].float().div_(255)
        if augment and augment_fn is not None:
            x = augment_fn(x, generator=generator)
        elif augment:
            x = oracle_crop_flip(x, padding, generator=generator)
        elif view_fn is not None:
            x = view_fn(x)
        if world_size > 1:
            per = len(idx) // world_size
            sl = slice(rank * per, (rank + 1) * per)
            idx, x = idx[sl], x[sl]
        yield x, labels[idx], idx


# ------------------------------------------------------------------------------------------
def data(n=37, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n,), generator=g),
    )


def assert_same(loader, reference):
    got = [(b.x, b.y, b.index) for b in loader]
    want = list(reference)
    assert len(got) == len(want) == len(loader)
    for (x, y, i), (rx, ry, ri) in zip(got, want):
        assert x.dtype == rx.dtype and torch.equal(x, rx)
        assert torch.equal(y, ry) and torch.equal(i, ri)


def both(kwargs, epochs=2, seed=3, **ours_only):
    """Our loader and the oracle from equal generators, over `epochs` consecutive epochs."""
    x, y = data()
    ours = BatchLoader(x, y, generator=torch.Generator().manual_seed(seed), **kwargs, **ours_only)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        assert_same(ours, oracle_batches(x, y, generator=g, **kwargs))
    return ours


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch_size=8, shuffle=True, augment=True),
        dict(batch_size=8, shuffle=True, augment=True, drop_last=True),
        dict(batch_size=10, shuffle=True, augment=True, padding=0),
        dict(batch_size=10, shuffle=True, augment=True, padding=2),
        dict(batch_size=64, shuffle=True, augment=True),  # one partial batch
        dict(batch_size=8, shuffle=False, augment=True),
        dict(batch_size=8, shuffle=True, augment=False),
        dict(batch_size=8, shuffle=False, augment=False, drop_last=True),
    ],
    ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items()),
)
def test_batches_equal_the_per_batch_loader(kwargs):
    both(kwargs)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ddp_rank_slices_equal_the_per_batch_loader(world_size, drop_last):
    for rank in range(world_size):
        both(
            dict(
                batch_size=12,
                shuffle=True,
                augment=True,
                drop_last=drop_last,
                rank=rank,
                world_size=world_size,
            )
        )


def test_an_epoch_without_batches():
    x, y = data(1)
    loader = BatchLoader(x, y, 8, shuffle=True, augment=True, rank=1, world_size=2)
    assert len(loader) == 0 and list(loader) == []


def test_augment_fn_and_view_fn_keep_their_behaviour():
    aug = lambda x, generator: train_augment(x, generator, size=6)  # noqa: E731
    view = lambda x: center_crop(x, 6)  # noqa: E731
    both(dict(batch_size=8, shuffle=True, augment=True, augment_fn=aug, view_fn=view))
    both(dict(batch_size=8, shuffle=True, augment=True, augment_fn=aug, rank=1, world_size=2))
    both(dict(batch_size=8, shuffle=True, augment=False, augment_fn=aug, view_fn=view))


def test_generator_state_between_epochs_reproduces_the_epoch():
    ours = both(dict(batch_size=8, shuffle=True, augment=True), epochs=1)
    state = ours.generator.get_state()
    first = [b.x for b in ours]
    ours.generator.set_state(state)
    assert all(torch.equal(a, b.x) for a, b in zip(first, ours))


class CopyLog(TorchDispatchMode):
    """Records every copy between devices (CPU -> meta stands in for host -> GPU)."""

    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        devices = {t.device.type for t in tensors} | (
            {out.device.type} if isinstance(out, torch.Tensor) else set()
        )
        if (
            func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)
            and len(devices) > 1
        ):
            self.copies += 1
        return out


@pytest.mark.parametrize("n", [16, 64])
def test_no_host_copy_per_batch(n):
    """On the 'meta' device (a stand-in for a GPU), an epoch copies host data to the device a
    fixed number of times (the order and three draw vectors), whatever the number of batches."""
    x, y = data(n)
    loader = BatchLoader(x, y, 4, shuffle=True, augment=True, device="meta")
    assert loader.images.device.type == "meta"
    with CopyLog() as log:
        batches = list(loader)
    assert len(batches) == n // 4 and batches[0].x.device.type == "meta"
    assert log.copies == 4


def test_data_too_large_for_the_device_stays_on_the_host_with_the_same_batches():
    both(dict(batch_size=8, shuffle=True, augment=True), device_bytes=0)
    x, y = data(16)
    loader = BatchLoader(x, y, 4, shuffle=True, augment=True, device="meta", device_bytes=0)
    assert loader.images.device.type == "cpu"
    with CopyLog() as log:
        batches = list(loader)
    assert batches[0].x.device.type == "meta" and log.copies == 3 * len(batches)  # x, y, index

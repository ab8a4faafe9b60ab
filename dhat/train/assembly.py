"""What a run trains with, built from its config: data, model, method, optimiser, EMA.

`build` seeds torch and `random` with `cfg.seed` and then draws in one fixed order (the
dataset, the split, the model's initialisation, the method's frozen networks), so that one
config always gives the same starting point; the data order and augmentation draw from
their own generators (`loader.generator`, and `aux_generator` for generated data).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..data import Batch, BatchLoader, DataBundle, load_dataset, validation_split
from ..data.aux import AuxMixer, open_aux
from ..distributed import Dist, split_batch
from ..errors import UserError
from ..methods import Method, RunInfo, build_method
from ..methods.frozen import load_frozen_models
from ..models import create_model
from .ema import EMA


@dataclass
class Parts:
    """A run's working objects. Images are (N, 3, H, W): uint8 as stored, or float in [0, 1]."""

    data: DataBundle
    val: tuple[torch.Tensor, torch.Tensor]  # the held-out split: images, labels (N,)
    loader: BatchLoader  # this rank's batches of the training split
    batches: Iterable[Batch]  # what an epoch iterates: `loader`, or it mixed with generated data
    aux_generator: torch.Generator | None  # draws of the generated data (None without it)
    model_spec: dict[str, Any]  # how to rebuild the model (saved in checkpoints)
    model: nn.Module  # the trained model itself
    net: nn.Module  # what a step calls: `model`, compiled and DDP-wrapped as configured
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    method: Method
    ema: EMA | None  # the averaged weights (--ema-decay)


def build(cfg: TrainConfig, dist: Dist, device: torch.device) -> Parts:
    """Seed, then build the run's parts in the order of the module docstring."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data, val, loader, batches, aux_generator = _data(cfg, dist, device)
    model_spec = dict(
        name=cfg.model,
        num_classes=data.num_classes,
        mean=list(data.mean),
        std=list(data.std),
        kwargs=dict(cfg.model_args),
    )
    model = create_model(
        cfg.model, num_classes=data.num_classes, mean=data.mean, std=data.std, **cfg.model_args
    ).to(device)
    if cfg.channels_last:
        model = model.to(  # type: ignore[call-overload]  # torch's stub omits memory_format
            memory_format=torch.channels_last
        )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    method = build_method(cfg.method, cfg.method_kwargs())  # typed once, by the config
    method.setup(
        RunInfo(
            num_classes=data.num_classes,
            num_train=len(data.train_y),
            epochs=cfg.epochs,
            device=device,
            label_smoothing=cfg.label_smoothing,
            frozen_models=load_frozen_models(cfg.method, cfg.method_args, device),
        )
    )
    ema = EMA(model, cfg.ema_decay, cfg.ema_every) if cfg.ema_decay else None
    net: nn.Module = model
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]  # stub: Callable; it is a Module
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    return Parts(
        data=data,
        val=val,
        loader=loader,
        batches=batches,
        aux_generator=aux_generator,
        model_spec=model_spec,
        model=model,
        net=net,
        optimizer=optimizer,
        scaler=scaler,
        method=method,
        ema=ema,
    )


def _data(cfg: TrainConfig, dist: Dist, device: torch.device):
    """(dataset, validation split, loader, batches, aux generator); see `Parts`."""
    data = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download, **cfg.dataset_args)
    if cfg.train_subset:
        data.subset_train(cfg.train_subset, cfg.seed)
    if cfg.val_size >= len(data.train_y):
        raise UserError(
            f"--val-size {cfg.val_size} leaves nothing to train on: "
            f"{cfg.dataset} has {len(data.train_y)} training images here"
        )
    train_idx, val_idx = validation_split(data.train_y, cfg.val_size, cfg.seed)
    view = getattr(data, "train_view", None)  # stored images -> model inputs (imagefolder)
    val_x = data.train_x[val_idx]
    val = (view(val_x) if view else val_x, data.train_y[val_idx])
    gen = torch.Generator().manual_seed(cfg.seed)
    split = split_batch(cfg.batch_size, cfg.aux_fraction if cfg.aux_data else 0.0, dist.world_size)
    if split.note and dist.main:
        print(f"torchrun: {split.note}", flush=True)
    k_aux = split.aux
    loader = BatchLoader(
        data.train_x[train_idx],
        data.train_y[train_idx],
        split.batch - k_aux,
        shuffle=True,
        augment=cfg.augment,
        drop_last=False,
        generator=gen,
        device=device,
        rank=dist.rank,
        world_size=dist.world_size,
        augment_fn=getattr(data, "train_augment", None),
        view_fn=view,
    )
    if not k_aux:
        return data, val, loader, loader, None
    assert cfg.aux_data is not None  # k_aux > 0 only with aux_data
    images, labels = open_aux(cfg.aux_data)
    aux_generator = torch.Generator().manual_seed(cfg.seed + 1)
    batches = AuxMixer(
        loader,
        images,
        labels,
        k_aux,
        num_classes=data.num_classes,
        size=(data.train_x.shape[-2], data.train_x.shape[-1]),
        generator=aux_generator,
        augment=cfg.augment,
    )
    return data, val, loader, batches, aux_generator

"""Several train-mode forwards as one batched pass, with BatchNorm statistics kept per part.

`forward_parts(model, [x1, x2, x3])` concatenates the inputs, runs the network once, and
makes every BatchNorm layer normalise (and update its running statistics for) each part
separately and in order, exactly as three separate forwards would. Convolutions and linear
layers then see one larger batch, which is what can make it faster.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def _chunked_bn(bn: nn.modules.batchnorm._BatchNorm, sizes: list[int]):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not bn.training:
            return type(bn).forward(bn, x)
        outs = []
        for part in x.split(sizes):
            momentum = bn.momentum
            if bn.track_running_stats and bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
                if momentum is None:  # cumulative moving average, as nn.BatchNorm does
                    momentum = 1.0 / float(bn.num_batches_tracked)
            outs.append(
                F.batch_norm(
                    part,
                    bn.running_mean,
                    bn.running_var,
                    bn.weight,
                    bn.bias,
                    True,
                    momentum or 0.0,
                    bn.eps,
                )
            )
        return torch.cat(outs)

    return forward


@contextmanager
def per_part_batchnorm(model: nn.Module, sizes: list[int]):
    """Within the block, every BatchNorm in `model` treats its input as parts of `sizes`."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.forward = _chunked_bn(bn, sizes)  # type: ignore[method-assign]  # undone in finally
    try:
        yield model
    finally:
        for bn in bns:
            del bn.forward


def forward_parts(model: nn.Module, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logits of each input in `xs`, from one batched pass with per-part BatchNorm."""
    sizes = [len(x) for x in xs]
    with per_part_batchnorm(model, sizes):
        return list(model(torch.cat(xs)).split(sizes))

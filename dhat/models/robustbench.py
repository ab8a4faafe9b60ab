"""RobustBench's CIFAR-10/100 L∞ models by name: each row's architecture, arguments and input
normalisation in dhat's terms, so `--model Gowal2020Uncovering_70_16` (or a file that keeps
RobustBench's name, `Gowal2020Uncovering_70_16.pt`) loads with the outputs of RobustBench's
own `load_model`.

Rows whose forward does more than `(x - mean) / std` are matched exactly or refused:
Hendrycks2019Using computes `2x - 1` (= normalisation 0.5/0.5); Ding2020MMA standardises
each image by its own mean and std (`per_image_wrn`). Rows without a dhat architecture
(ensembles, ResNeSt, PSSiLU, ...) are refused with the reason. The table records RobustBench
1.1.1's rows; `tests/test_robustbench.py` checks it against RobustBench's own model zoo.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError, unknown_name
from .registry import ModelCfg, register_model
from .wide_resnet import WideResNet


class PerImageWideResNet(WideResNet):
    """WideResNet fed `(x - mean(x)) / max(std(x), 1/sqrt(CHW))`, mean and (unbiased) std over
    each image (Ding et al. 2020, MMA training). The `mean`/`std` buffers are unused."""

    per_image = True

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=(1, 2, 3), keepdim=True)
        sd = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mu) / sd.clamp_min(1 / math.sqrt(x[0].numel()))


@register_model("per_image_wrn", ModelCfg(cam_layer=WideResNet.cam_layer))
def per_image_wrn(num_classes=10, mean=None, std=None, depth=28, widen=4):
    return PerImageWideResNet(depth, widen, num_classes, 0.0, mean, std)


C10 = "0.4914,0.4822,0.4465/0.2471,0.2435,0.2616"  # = --normalization cifar10
C100_WU = (
    "0.5070751592371323,0.48654887331495095,0.4409178433670343/"
    "0.2673342858792401,0.2564384629170883,0.27615047132568404"
)


@dataclass(frozen=True)
class Row:
    """One RobustBench row in dhat's terms: registered `arch` built with `kwargs`, fed
    `normalization` (a --normalization value); `refused` says why it cannot load."""

    arch: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    normalization: str = "none"
    note: str = ""
    refused: str = ""


def _wrn(depth: int, widen: int, norm: str = "none", note: str = "") -> Row:
    return Row("wide_resnet", {"depth": depth, "widen": widen}, norm, note)


def _dm(depth: int, width: int, dataset: str) -> Row:
    return Row("dm_wrn", {"depth": depth, "width": width, "activation": "silu"}, dataset)


def _dm18(dataset: str) -> Row:
    return Row("dm_preact", {"depth": 18, "width": 64, "activation": "silu"}, dataset)


def _no(why: str) -> Row:
    return Row(refused=why)


HENDRYCKS = "its forward computes 2x - 1, i.e. normalisation 0.5/0.5"
PREACT_V1 = (
    "RobustBench's PreActResNet with PreActBlock (no final BatchNorm, shortcut on the raw "
    "input) has no dhat architecture"
)
ROWS: dict[str, dict[str, Row]] = {
    "cifar10": {
        "Andriushchenko2020Understanding": _no(PREACT_V1),
        "Carmon2019Unlabeled": _wrn(28, 10),
        "Sehwag2020Hydra": _wrn(28, 10),
        "Wang2020Improving": _wrn(28, 10),
        "Hendrycks2019Using": _wrn(28, 10, "0.5/0.5", HENDRYCKS),
        "Rice2020Overfitting": _wrn(34, 20, "cifar10"),
        "Zhang2019Theoretically": _wrn(34, 10),
        "Engstrom2019Robustness": Row(
            "resnet50", {"width": 64}, "0.4914,0.4822,0.4465/0.2023,0.1994,0.2010"
        ),
        "Chen2020Adversarial": _no("an ensemble of three ResNet-50s averaging their softmax"),
        "Huang2020Self": _wrn(34, 10),
        "Pang2020Boosting": _no("BoostingWideResNet normalises features and weights of its head"),
        "Wong2020Fast": _no(PREACT_V1),
        "Ding2020MMA": Row(
            "per_image_wrn",
            {"depth": 28, "widen": 4},
            "none",
            "its forward standardises each image by its own mean and std",
        ),
        "Zhang2019You": _wrn(34, 10),
        "Zhang2020Attacks": _wrn(34, 10),
        "Wu2020Adversarial_extra": _wrn(28, 10),
        "Wu2020Adversarial": _wrn(34, 10),
        "Gowal2020Uncovering_70_16": _dm(70, 16, "cifar10"),
        "Gowal2020Uncovering_70_16_extra": _dm(70, 16, "cifar10"),
        "Gowal2020Uncovering_34_20": _dm(34, 20, "cifar10"),
        "Gowal2020Uncovering_28_10_extra": _dm(28, 10, "cifar10"),
        "Sehwag2021Proxy": _wrn(34, 10),
        "Sehwag2021Proxy_R18": Row("resnet18", {"width": 64}),
        "Sehwag2021Proxy_ResNest152": _no("ResNeSt-152 has no dhat architecture"),
        "Sitawarin2020Improving": _wrn(34, 10),
        "Chen2020Efficient": _wrn(34, 10, "cifar10"),
        "Cui2020Learnable_34_20": _wrn(34, 20),
        "Cui2020Learnable_34_10": _wrn(34, 10),
        "Zhang2020Geometry": _wrn(28, 10),
        "Rebuffi2021Fixing_28_10_cutmix_ddpm": _dm(28, 10, "cifar10"),
        "Rebuffi2021Fixing_106_16_cutmix_ddpm": _dm(106, 16, "cifar10"),
        "Rebuffi2021Fixing_70_16_cutmix_ddpm": _dm(70, 16, "cifar10"),
        "Rebuffi2021Fixing_70_16_cutmix_extra": _dm(70, 16, "cifar10"),
        "Sridhar2021Robust": _wrn(28, 10),
        "Sridhar2021Robust_34_15": _wrn(34, 15),
        "Rebuffi2021Fixing_R18_ddpm": _dm18("cifar10"),
        "Rade2021Helper_R18_extra": _dm18("cifar10"),
        "Rade2021Helper_R18_ddpm": _dm18("cifar10"),
        "Rade2021Helper_extra": _dm(34, 10, "cifar10"),
        "Rade2021Helper_ddpm": _dm(28, 10, "cifar10"),
        "Huang2021Exploring": _no("RobustWideResNet has no dhat architecture"),
        "Huang2021Exploring_ema": _no("RobustWideResNet has no dhat architecture"),
        "Addepalli2021Towards_RN18": Row("resnet18", {"width": 64}),
        "Addepalli2021Towards_WRN34": _wrn(34, 10),
        "Gowal2021Improving_70_16_ddpm_100m": _dm(70, 16, "cifar10"),
        "Dai2021Parameterizing": _no("its PSSiLU WideResNet has no dhat architecture"),
        "Gowal2021Improving_28_10_ddpm_100m": _dm(28, 10, "cifar10"),
        "Gowal2021Improving_R18_ddpm_100m": _dm18("cifar10"),
        "Chen2021LTD_WRN34_10": _wrn(34, 10),
        "Chen2021LTD_WRN34_20": _wrn(34, 20),
        "Standard": _wrn(28, 10),
        "Jia2022LAS-AT_34_10": _wrn(34, 10),
        "Jia2022LAS-AT_70_16": _wrn(70, 16),
        "Pang2022Robustness_WRN28_10": _dm(28, 10, "cifar10"),
        "Pang2022Robustness_WRN70_16": _dm(70, 16, "cifar10"),
        "Addepalli2022Efficient_RN18": Row("resnet18", {"width": 64}),
        "Addepalli2022Efficient_WRN_34_10": _wrn(34, 10),
    },
    "cifar100": {
        "Gowal2020Uncovering": _dm(70, 16, "cifar100"),
        "Gowal2020Uncovering_extra": _dm(70, 16, "cifar100"),
        "Cui2020Learnable_34_20_LBGAT6": _wrn(34, 20),
        "Cui2020Learnable_34_10_LBGAT0": _wrn(34, 10),
        "Cui2020Learnable_34_10_LBGAT6": _wrn(34, 10),
        "Chen2020Efficient": _wrn(34, 10, "0.5071,0.4867,0.4408/0.2675,0.2565,0.2761"),
        "Wu2020Adversarial": _wrn(34, 10, C100_WU),
        "Sehwag2021Proxy": _wrn(34, 10),
        "Sitawarin2020Improving": _wrn(34, 10),
        "Hendrycks2019Using": _wrn(28, 10, "0.5/0.5", HENDRYCKS),
        "Rice2020Overfitting": Row("preact_resnet18", {"width": 64}, C100_WU),
        "Rebuffi2021Fixing_70_16_cutmix_ddpm": _dm(70, 16, "cifar100"),
        "Rebuffi2021Fixing_28_10_cutmix_ddpm": _dm(28, 10, "cifar100"),
        "Rebuffi2021Fixing_R18_ddpm": _dm18("cifar100"),
        "Rade2021Helper_R18_ddpm": _dm18("cifar100"),
        "Addepalli2021Towards_PARN18": Row("preact_resnet18", {"width": 64}),
        "Addepalli2021Towards_WRN34": _wrn(34, 10),
        "Chen2021LTD_WRN34_10": _wrn(34, 10),
        "Pang2022Robustness_WRN28_10": _dm(28, 10, "cifar100"),
        "Pang2022Robustness_WRN70_16": _dm(70, 16, "cifar100"),
        "Jia2022LAS-AT_34_10": _wrn(34, 10),
        "Jia2022LAS-AT_34_20": _wrn(34, 20),
        "Addepalli2022Efficient_RN18": Row("resnet18", {"width": 64}),
        "Addepalli2022Efficient_WRN_34_10": _wrn(34, 10),
    },
}
CLASSES = {"cifar10": 10, "cifar100": 100}
# RobustBench's row names: Author + year + tag (not 'Standard', a common file name)
ROW_NAME = re.compile(r"[A-Z][A-Za-z]+\d{4}[A-Za-z0-9_.-]*")


def is_row_name(name: str) -> bool:
    """Whether `name` is a RobustBench L∞ row of CIFAR-10 or CIFAR-100."""
    return any(name in rows for rows in ROWS.values())


def lookup(name: str, num_classes: int | None = None, dataset: str | None = None) -> Row:
    """RobustBench's row `name` of `dataset` (else of the dataset with `num_classes` classes,
    else the only dataset that has it). Refused rows raise a one-line UserError."""
    where = [d for d, rows in ROWS.items() if name in rows]
    if not where:
        raise unknown_name(
            "RobustBench CIFAR L∞ model", name, {n for r in ROWS.values() for n in r}
        )
    if dataset in where:
        pick = dataset
    elif len(where) == 1:
        pick = where[0]
    else:
        pick = next((d for d in where if CLASSES[d] == num_classes), "")
        if not pick:
            raise UserError(
                f"RobustBench has '{name}' for {' and '.join(where)}: pass --num-classes "
                f"{' or '.join(str(CLASSES[d]) for d in where)}"
            )
    row = ROWS[pick][name]
    if row.refused:
        raise UserError(f"RobustBench's {name} ({pick}, Linf) cannot be loaded: {row.refused}")
    if num_classes is not None and num_classes != CLASSES[pick]:
        raise UserError(
            f"RobustBench's {name} ({pick}) has {CLASSES[pick]} classes, the file {num_classes}"
        )
    return row


def dataset_of(name: str, num_classes: int | None, path_parts: tuple[str, ...]) -> str | None:
    """The dataset a RobustBench file belongs to: its `<dataset>/Linf/` folder if it sits in
    RobustBench's layout, else the one whose class count the file has."""
    if len(path_parts) >= 3 and path_parts[-2] == "Linf" and path_parts[-3] in ROWS:
        return path_parts[-3]
    where = [d for d, rows in ROWS.items() if name in rows]
    return next(
        (d for d in where if CLASSES[d] == num_classes), where[0] if len(where) == 1 else None
    )

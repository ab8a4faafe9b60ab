"""Named presets: the paper's rows and recipes (`dhat train --preset NAME`).

A preset is a dict of TrainConfig fields; flags and YAML files go on top of it.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The front door: a small CNN trained with DHAT on `toy_scenes` (shapes on textures that
    # agree with the class in 90 % of training images), about 2 minutes on a 2-core CPU.
    "smoke": dict(
        dataset="toy_scenes",
        dataset_args={"n_train": 4500, "n_test": 1000},
        model="small_cnn",
        model_args={"width": 16},
        val_size=500,
        epochs=5,
        milestones=[4],
        batch_size=64,
        steps=3,
        val_steps=3,
    ),
    # The official DHAT code's recipe, end to end: ResNet-18, 100 epochs, lr ÷10 at 90 and 95
    # (what its script intends), and the Grad-CAM mask from a separate, frozen,
    # standard-trained ResNet-18 of the same dataset, made by the `cifar10-standard` preset.
    "cifar10-standard": dict(
        dataset="cifar10", model="resnet18", method="standard", epochs=100, milestones=[90, 95]
    ),
    "cifar10-dhat-official": dict(
        dataset="cifar10",
        model="resnet18",
        method="dhat",
        epochs=100,
        milestones=[90, 95],
        method_args={"cam_model": "runs/cifar10-standard/best.pt"},
    ),
}

# Presets that train several methods on the same data and compare them (`dhat train --preset
# NAME`, run by `dhat.analysis.smoke.run_comparison`): each method is a run of `preset` in
# OUT_DIR/METHOD, evaluated like the smoke run on the first `eval_n` test images of each split
# (500 keeps the three evaluations within about 2 minutes on a 2-core CPU); one table and one
# figure compare them.
COMPARISONS: dict[str, dict[str, Any]] = {
    "smoke-compare": dict(preset="smoke", methods=("pgd_at", "uiat", "dhat"), eval_n=500),
}

# What to do when a preset's prerequisite is missing (named in the one-line error).
PRESET_HINTS = {
    "cifar10-dhat-official": "make the frozen CAM network first: dhat train --preset "
    "cifar10-standard --out-dir runs/cifar10-standard (or pass "
    "--cam-model PATH)",
}

# One preset per row of the paper's tables: WRN-28-10, ε 8/255 on CIFAR, ε 4/255 (step 1/255)
# on ImageNet-1K via an ImageNet-style class-folder dataset, and the cross-architecture rows on
# CIFAR-10. Recipe otherwise as the paper's: 110 epochs, ÷10 at 100 and 105.
_PAPER_ROWS = {
    "cifar10": ["mart", "awp", "uiat", "sglr", "dhat", "dhat_cfa", "pgd_at", "trades"],
    "cifar100": ["awp", "uiat", "dhat", "dhat_cfa"],
    "imagenet": ["awp", "uiat", "dhat", "dhat_cfa"],
}
for _data, _methods in _PAPER_ROWS.items():
    for _m in _methods:
        _row: dict[str, Any] = dict(
            dataset="imagefolder" if _data == "imagenet" else _data,
            model="wrn_28_10",
            method=_m,
            epochs=110,
            milestones=[100, 105],
        )
        if _data == "imagenet":  # WRN-28-10 at 224 px is infeasible: downsampled ImageNet, 64 px
            _row.update(eps=4 / 255, step_size=1 / 255, dataset_args={"resolution": 64})
        PRESETS.setdefault(f"{_data}-{_m}", _row)
for _arch in ("resnet50", "vgg16_bn", "inception_v3"):
    for _m in ("uiat", "dhat_cfa"):
        PRESETS[f"cifar10-{_arch}-{_m}"] = dict(
            dataset="cifar10", model=_arch, method=_m, epochs=110, milestones=[100, 105]
        )
for _m in ("pgd_at", "uiat", "dhat", "dhat_cfa"):  # full-resolution ImageNet, ResNet-50
    PRESETS[f"imagenet224-resnet50-{_m}"] = dict(
        dataset="imagefolder",
        dataset_args={"resolution": 224},
        model="resnet50",
        model_args={"variant": "imagenet"},
        method=_m,
        eps=4 / 255,
        step_size=1 / 255,
        val_size=10000,
        epochs=90,
        milestones=[30, 60],
        batch_size=256,
        lr=0.1,
        weight_decay=1e-4,
        amp="bf16",
        channels_last=True,
    )


# The modern recipe (Wang et al., ICML 2023, "Better Diffusion Models Further Improve
# Adversarial Training", code wzekai99/DM-Improves-AT, train-wa.py): WRN-28-10, batch 512,
# SGD lr 0.2 with Nesterov momentum and its per-epoch cosine one-cycle (2.5 % warm-up), weight
# decay 5e-4, 400 epochs, label smoothing 0.1, EMA of the weights (0.999 here), TRADES β 5, and
# generated images at 70 % of every batch when --aux-data is given. Recipes to run on GPUs,
# not results. (Their WRN uses Swish activations; ours ReLU.)
_MODERN = dict(
    dataset="cifar10",
    model="wrn_28_10",
    batch_size=512,
    lr=0.2,
    nesterov=True,
    lr_schedule="onecycle",
    lr_warmup=0.025,
    weight_decay=5e-4,
    epochs=400,
    milestones=[],
    label_smoothing=0.1,
    ema_decay=0.999,
    select="ema",
)
PRESETS["cifar10-dhat-modern"] = dict(_MODERN, method="dhat")
PRESETS["cifar10-trades-modern"] = dict(_MODERN, method="trades", method_args={"beta": 5.0})
PRESETS["cifar10-pgd_at-modern"] = dict(_MODERN, method="pgd_at")

# Fields a preset sets only when the user gives --aux-data.
PRESET_WITH_AUX = {name: {"aux_fraction": 0.7} for name in PRESETS if name.endswith("-modern")}


def register_preset(name: str, **fields: Any) -> None:
    """Add a named preset (a dict of TrainConfig fields)."""
    PRESETS[name] = fields

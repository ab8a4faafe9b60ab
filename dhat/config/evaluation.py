"""`EvalConfig` (`dhat eval`) and `AttentionConfig` (`dhat attention`): typed, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..attacks.registry import check_attack_names
from ..errors import UserError
from ..schema import AT_LEAST_1, NONNEG, SEED, THREADS, UNIT, Where, coerce, option, specs
from .train import check_device

DEFAULT_ATTACKS = ["clean", "pgd10", "pgd20", "pgd50", "cw"]


def _validate(cfg, where: Where = Where()) -> None:
    """Coerce every field of the frozen `cfg` being built (once, from `__post_init__`)."""
    for name, spec in specs(type(cfg)).items():
        object.__setattr__(cfg, name, coerce(spec, getattr(cfg, name), where.key(name)))
    check_device(cfg.device)


@dataclass(frozen=True)
class EvalConfig:
    """What `dhat eval` measures on one checkpoint (or on a plain third-party state dict)."""

    checkpoint: str = option("", "a last.pt / best.pt written by `dhat train`", flag=False)
    weights: str = option("model", "'model', or an extra model saved in the checkpoint (fawa, ema)")
    dataset: str | None = option(None, "default: the checkpoint's training dataset")
    data_root: str | None = option(None, "the dataset's folder (default: the run's)")
    attacks: list[str] = option(
        default_factory=lambda: list(DEFAULT_ATTACKS),
        help="clean, pgdK, cw, cwK, apgd-ce, apgd-t, fab-t, square, aa (standard AutoAttack); "
        "see dhat/attacks/registry.py",
    )
    eps: float | None = option(None, "L-inf budget (default: the run's training ε)", budget=True)
    step_size: float = option(2 / 255, "PGD step size", budget=True)
    n_test: int = option(0, "the first N test images (0 = all)", range=NONNEG)
    gap_train_images: int = option(
        10000, "robust gap: PGD-10 on this many training images (0 = skip)", range=NONNEG
    )
    batch_size: int = option(256, "evaluation batch size", range=AT_LEAST_1)
    seed: int = option(0, "seed of the attacks' random starts", range=SEED)
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    out: str | None = option(
        None, "result card path (default: eval_<name>.json beside the checkpoint)"
    )
    weights_file: str | None = option(
        None, "a plain state dict (.pt/.safetensors) instead of a checkpoint"
    )
    model: str | None = option(
        None,
        "the weights file's registered architecture, or a RobustBench CIFAR L-inf model name "
        "(e.g. Gowal2020Uncovering_70_16)",
    )
    model_args: dict = option(
        default_factory=dict, flag=False, help="the weights file's architecture arguments"
    )
    num_classes: int | None = option(
        None, "the weights file's class count (default: its final layer's rows)", range=AT_LEAST_1
    )
    normalization: str | None = option(
        None,
        "the weights file's input normalisation if it has "
        "no mean/std: none, cifar10, cifar100, imagenet, M,M,M/S,S,S (set by a RobustBench "
        "model name)",
    )
    aa_n: int = option(0, "AutoAttack on the first N test images (0 = n_test)", range=NONNEG)
    curves: bool = option(False, "accuracy vs ε and vs PGD steps (JSON + PNG)")
    curves_n: int = option(1000, "curves on the first N test images (0 = n_test)", range=NONNEG)
    sanity: bool = option(True, "sanity checks (docs/sanity_checks.md)")
    sanity_n: int = option(100, "images for the sanity checks", range=AT_LEAST_1)
    background: bool = option(
        True,
        "background-reliance measures where the dataset has the "
        "splits (mixed_same, mixed_rand, ...)",
    )
    background_n: int = option(0, "images per background split (0 = n_test)", range=NONNEG)
    inverse_eps: list[float] | None = option(
        None, "inverse images for the attention IoU (default: the run's ε_inv)", budget=True
    )
    threads: int = option(0, "CPU threads for torch (0 = torch's default)", range=THREADS)
    amp: Literal["off", "bf16"] = option(
        "off",
        "bf16: the forward and the attacks under bf16 autocast (inputs and perturbations stay "
        "fp32), checked against fp32 on --sanity-n images (sanity check amp_vs_fp32)",
    )
    records: str | None = option(
        None,
        "per-image records .npz (default: <card>.records.npz beside the card; 'off' = none)",
    )

    __hash__ = None  # type: ignore[assignment]  # frozen, but its list and dict fields are unhashable

    def __post_init__(self) -> None:
        _validate(self)
        check_attack_names(self.attacks)
        if self.weights_file and self.checkpoint:
            raise UserError("pass either a checkpoint or --weights-file, not both")
        if not self.weights_file:
            given = [
                f
                for f, v in (
                    ("--model", self.model),
                    ("--num-classes", self.num_classes),
                    ("--normalization", self.normalization),
                    ("--model-arg", self.model_args or None),
                )
                if v is not None
            ]
            if given:
                raise UserError(
                    f"{given[0]} describes a --weights-file; a dhat checkpoint "
                    "names its own model (drop the flag, or pass --weights-file)"
                )


@dataclass(frozen=True)
class AttentionConfig:
    """What `dhat attention` measures: Grad-CAM IoU with ground-truth masks."""

    checkpoint: str = option("", "a last.pt / best.pt written by `dhat train`", flag=False)
    dataset: str | None = option(None, "a dataset with test masks (default: the checkpoint's)")
    data_root: str | None = option(None, "the dataset's folder (default: the run's)")
    n: int = option(2000, "test images to analyse", range=AT_LEAST_1)
    boxes: str | None = option(
        None,
        "bounding boxes instead of masks: a .pt/.json file of "
        "(N, 4) or (N, K, 4) x1,y1,x2,y2 pixel boxes",
    )
    threshold: float = option(0.5, "attention = Grad-CAM >= threshold", range=UNIT)
    inverse_eps: list[float] | None = option(
        None, "also on inverse-adversarial images at these budgets (e.g. 4/255)", budget=True
    )
    layer: str | None = option(
        None, "Grad-CAM layer (dotted path; default the model's last convolutional stage)"
    )
    batch_size: int = option(256, "batch size", range=AT_LEAST_1)
    seed: int = option(0, "seed of the inverse attack's start and the null", range=SEED)
    out: str | None = option(None, "JSON output (default: attention.json beside the checkpoint)")
    overlay: str | None = option(None, "also write a PNG grid of overlays here")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")

    __hash__ = None  # type: ignore[assignment]  # frozen, but its list fields are unhashable

    def __post_init__(self) -> None:
        _validate(self)

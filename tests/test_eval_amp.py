"""`dhat eval --amp bf16`: the forward and the attacks under bf16 autocast, and the sanity
check amp_vs_fp32 that compares PGD-10 robust accuracy with fp32 (paired McNemar, 3 σ)."""

import pytest
import torch
from conftest import make_checkpoint
from torch import nn

from dhat.errors import UserError
from dhat.eval import sanity
from dhat.eval.card import CardError, validate_card
from dhat.eval.evaluate import Autocast, with_amp

EPS, STEP = 32 / 255, 8 / 255  # the tiny model keeps about 19% under PGD-10 in fp32


class MasksInBf16(nn.Module):
    """`base` unchanged in fp32; in bf16 its logits carry no gradient (a stand-in for the
    input gradients that round to zero in low precision): identical forward, masked attack."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, x):
        h = self.base(x)
        return h.detach() + 0 * h if h.dtype == torch.bfloat16 else h


def test_autocast_runs_in_bf16_with_fp32_inputs(trained_tiny):
    model, x, _ = trained_tiny
    seen = {}
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    hook = first.register_forward_hook(lambda m, i, o: seen.update(inp=i[0].dtype, out=o.dtype))
    try:
        wrapped = with_amp(model, "bf16", "cpu")
        xs = x[:8].clone().requires_grad_(True)
        logits = wrapped(xs)
        (grad,) = torch.autograd.grad(logits.sum(), xs)
    finally:
        hook.remove()
    assert isinstance(wrapped, Autocast) and with_amp(model, "off", "cpu") is model
    assert logits.dtype == torch.float32 and grad.dtype == torch.float32
    assert seen["out"] == torch.bfloat16  # the conv computed in bf16
    ref = model(x[:8])
    diff = (logits - ref).abs().max().item()
    assert 0 < diff < 0.05 * ref.abs().max().item()  # bf16, not fp32, and close to it
    with pytest.raises(UserError, match="amp"):
        with_amp(model, "fp16", "cpu")


def test_bf16_agrees_with_fp32_on_a_tiny_model(trained_tiny):
    model, x, y = trained_tiny
    r = sanity.check_amp_vs_fp32(
        model, with_amp(model, "bf16", "cpu"), x[:100], y[:100], eps=EPS, step_size=STEP
    )
    d = r["details"]
    assert r["status"] == "ok", r["message"]
    assert d["n"] == 100 and d["fp32"] < 1.0  # the attack does break images in fp32
    b, c = d["robust_only_low"], d["robust_only_fp32"]
    assert abs(d["low_precision"] - d["fp32"]) == pytest.approx((b - c) / 100)
    assert abs(b - c) <= 3 * (b + c) ** 0.5  # the stated tolerance, by hand


def test_check_fires_on_a_model_masking_gradients_in_bf16(trained_tiny):
    model, x, y = trained_tiny
    masked = MasksInBf16(model).eval()
    with torch.no_grad():  # same decisions in fp32: only the precision differs
        assert torch.equal(masked(x[:100]), model(x[:100]))
    r = sanity.check_amp_vs_fp32(
        masked, with_amp(masked, "bf16", "cpu"), x[:100], y[:100], eps=EPS, step_size=STEP
    )
    d = r["details"]
    assert r["status"] == "warn" and "masks the gradients" in r["message"]
    assert (
        d["robust_only_low"] - d["robust_only_fp32"]
        > 3 * (d["robust_only_low"] + d["robust_only_fp32"]) ** 0.5
    )
    assert d["low_precision"] > d["fp32"] + 0.1


@pytest.mark.filterwarnings("ignore::dhat.eval.sanity.SanityWarning")  # an untrained model
def test_card_records_amp_and_its_check(tmp_path):
    from dhat.config import EvalConfig
    from dhat.eval.evaluate import run_evaluation

    ck = make_checkpoint(tmp_path / "best.pt", num_classes=4, config={"dataset": "blobs"})
    kw = dict(
        checkpoint=str(ck),
        dataset="blobs",
        attacks=["clean", "pgd10"],
        n_test=16,
        sanity_n=16,
        gap_train_images=0,
        background=False,
        batch_size=16,
        records="off",
        device="cpu",
    )
    card = run_evaluation(EvalConfig(**kw, amp="bf16"), progress=False, check_out=False).card
    checks = {c["check"]: c for c in card["sanity"]}
    assert card["amp"] == "bf16" == card["eval_config"]["amp"]
    assert checks["amp_vs_fp32"]["status"] in ("ok", "warn")
    validate_card(card)
    with pytest.raises(CardError, match="amp"):
        validate_card({**card, "amp": "off"})
    with pytest.raises(CardError, match="amp_vs_fp32"):
        validate_card(
            {**card, "sanity": [c for c in card["sanity"] if c is not checks["amp_vs_fp32"]]}
        )
    with pytest.raises(UserError, match="amp"):
        EvalConfig(**kw, amp="fp16")

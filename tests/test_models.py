import pytest
import torch

import dhat
from dhat.errors import UserError
from dhat.models import cam_layer, list_models

from conftest import small_model_kwargs

@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name):
    torch.manual_seed(0)
    if name in ("wrn_28_10", "wrn_34_10"):
        model = dhat.create_model(name, num_classes=10)
        x = torch.rand(2, 3, 32, 32)
    else:
        model = dhat.create_model(name, num_classes=7, **small_model_kwargs(name))
        x = torch.rand(3, 3, 32, 32)
    out = model(x)
    assert out.shape == (len(x), model.num_classes)
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
    assert isinstance(cam_layer(model), torch.nn.Module)


def test_normalisation_inside_model():
    model = dhat.create_model("small_cnn", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.full((1, 3, 4, 4), 0.75)
    assert torch.allclose(model.normalise(x), torch.ones(1, 3, 4, 4))
    assert "mean" in model.state_dict() and "std" in model.state_dict()


def test_unknown_model_suggests_nearest():
    with pytest.raises(UserError, match="preact_resnet18"):
        dhat.create_model("preact_resnet_18")


def test_wrn_depth_and_width_are_parameters():
    m = dhat.create_model("wide_resnet", depth=16, widen=2)
    assert len(m.block1) == 2 and m.fc.in_features == 128

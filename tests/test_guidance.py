import pytest
import torch
from torch import nn

from ddpm_utils.guidance import guided_eps


class LabelModel(nn.Module):
    """eps depends on the label: eps = x * (y + 1) * 0.1 + t, and counts its forward passes."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        return x * (y.view(-1, 1, 1, 1) + 1) * 0.1 + t.view(-1, 1, 1, 1)


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    return torch.randn(4, 1, 3, 3), torch.tensor([1, 5, 9, 0]), torch.tensor([3, 1, 4, 1])


def test_scale_1_is_the_conditional_and_0_the_unconditional_prediction(inputs):
    x, t, y = inputs
    m = LabelModel()
    torch.testing.assert_close(guided_eps(m, x, t, y, 1.0, 10), m(x, t, y))
    torch.testing.assert_close(guided_eps(m, x, t, y, 0.0, 10), m(x, t, torch.full_like(y, 10)))


@pytest.mark.parametrize("s", [-0.5, 0.5, 3.0, 7.0])
def test_other_scales_follow_the_formula_in_one_batched_pass(inputs, s):
    x, t, y = inputs
    m = LabelModel()
    cond, uncond = m(x, t, y), m(x, t, torch.full_like(y, 10))
    m.calls = 0
    out = guided_eps(m, x, t, y, s, 10)
    assert m.calls == 1  # conditional and unconditional in one forward on cat([x, x])
    torch.testing.assert_close(out, uncond + s * (cond - uncond))
    w = s - 1  # Ho & Salimans 2022, Eq. 6: (1 + w) eps_cond - w eps_uncond
    torch.testing.assert_close(out, (1 + w) * cond - w * uncond)


def test_errors(inputs):
    x, t, y = inputs
    with pytest.raises(ValueError, match="needs class labels y"):
        guided_eps(LabelModel(), x, t, None, 3.0, 10)
    with pytest.raises(ValueError, match="needs the model's null label"):
        guided_eps(LabelModel(), x, t, y, 3.0, None)

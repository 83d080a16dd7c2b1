import pytest
import torch
from helpers import predicting
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


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_guiding_x0_or_v_equals_guiding_eps(inputs, prediction):
    """x0 and v are affine in eps at a fixed x_t, and the guidance weights (1 - s, s) sum to one."""
    from ddpm_utils.diffusion import GaussianDiffusion

    x, t, y = inputs
    d = GaussianDiffusion.from_schedule("cosine", 10, prediction=prediction)
    eps_d = GaussianDiffusion.from_schedule("cosine", 10)

    rewritten = predicting(prediction, LabelModel(), eps_d)
    for s in (0.0, 2.0, 5.0):
        eps_of_guided, _ = d.eps_and_x0(guided_eps(rewritten, x, t, y, s, 10), x, t)
        torch.testing.assert_close(eps_of_guided, guided_eps(LabelModel(), x, t, y, s, 10), atol=1e-4, rtol=1e-4)


def test_a_learned_variance_is_taken_from_the_conditional_prediction(inputs):
    x, t, y = inputs

    class WithVariance(LabelModel):
        def forward(self, x, t, y=None):
            eps = super().forward(x, t, y)
            return torch.cat([eps, y.view(-1, 1, 1, 1).float().expand_as(x)], dim=1)  # "variance" channel = the label

    out = guided_eps(WithVariance(), x, t, y, 3.0, 10)
    assert out.shape == (4, 2, 3, 3)
    torch.testing.assert_close(out[:, :1], guided_eps(LabelModel(), x, t, y, 3.0, 10))
    torch.testing.assert_close(out[:, 1:], y.view(-1, 1, 1, 1).float().expand_as(x))

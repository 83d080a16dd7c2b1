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


def test_classifier_guidance_adds_the_classifier_gradient_to_the_score():
    from ddpm_utils.diffusion import GaussianDiffusion
    from ddpm_utils.guidance import classifier_guided_eps

    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(6, 2, generator=g), torch.tensor([0, 10, 40, 60, 90, 99]), torch.tensor([0, 1, 2, 2, 1, 0])
    eps = torch.randn(6, 2, generator=g)
    W, b = torch.randn(3, 2, generator=g), torch.randn(3, generator=g)
    linear = lambda x, t: x @ W.T + b  # noqa: E731  (a linear classifier that ignores t)
    # closed form: grad_x log softmax(Wx + b)_y = W_y - sum_k p_k W_k
    p = (x @ W.T + b).softmax(-1)
    grad = W[y] - p @ W
    want = eps - 2.5 * diffusion.sqrt_one_minus_alphas_cumprod[t].view(-1, 1) * grad
    torch.testing.assert_close(classifier_guided_eps(linear, x, t, y, eps, 2.5, diffusion), want)
    assert torch.equal(classifier_guided_eps(linear, x, t, y, eps, 0.0, diffusion), eps)  # scale 0: unchanged
    with pytest.raises(ValueError, match="needs labels y of shape \\(B,\\) = \\(6,\\)"):
        classifier_guided_eps(linear, x, t, None, eps, 1.0, diffusion)
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        classifier_guided_eps(linear, x, t, torch.tensor([0, 1, 2, 3, 1, 0]), eps, 1.0, diffusion)


def test_exact_classifier_guidance_at_scale_1_is_the_exact_conditional_model():
    """Bayes: grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t). With the exact posterior
    p(y | x_t) of a labelled Gaussian mixture, guiding the exact unconditional eps at scale 1 gives
    the exact conditional eps."""
    from ddpm_utils.diffusion import GaussianDiffusion
    from ddpm_utils.guidance import classifier_guided_eps
    from ddpm_utils.toy import GaussianMixture

    mix = GaussianMixture(means=[[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], stds=[0.5, 0.7, 0.4], weights=[1.0, 2.0, 1.0],
                          labels=[0, 1, 1])
    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    abar = diffusion.alphas_cumprod.double()
    prior = torch.log(torch.tensor([0.25, 0.75], dtype=torch.float64))

    def exact_classifier(x, t):  # log p(y | x_t) up to a constant: log p_t(x | y) + log p(y)
        return torch.stack([mix.log_prob(x, abar[t], torch.full_like(t, c)) for c in (0, 1)], dim=1) + prior

    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(8, 2, generator=g, dtype=torch.float64) * 2, torch.randint(0, 100, (8,), generator=g)
    y = torch.tensor([0, 1] * 4)
    guided = classifier_guided_eps(exact_classifier, x, t, y, mix.eps(x, abar[t]), 1.0, diffusion)
    torch.testing.assert_close(guided, mix.eps(x, abar[t], y), atol=1e-5, rtol=1e-4)

import math

import pytest
import torch

from ddpm_utils.diffusion import GaussianDiffusion
from ddpm_utils.toy import GaussianMixture, IdealDenoiser, linear_gaussian_elbo, linear_gaussian_posterior


def test_elbo_is_below_log_px_and_tight_at_the_true_posterior():
    x, nv = 1.3, 0.5
    pm, pv = linear_gaussian_posterior(x, nv)
    exact = linear_gaussian_elbo(x, pm, pv, nv)
    torch.testing.assert_close(exact["elbo"], exact["log_px"])
    assert abs(exact["kl"].item()) < 1e-12
    for m, v in [(0.0, 1.0), (2.0, 0.1), (pm.item(), 0.9)]:
        out = linear_gaussian_elbo(x, m, v, nv)
        assert out["elbo"] < out["log_px"] and out["kl"] > 0
        torch.testing.assert_close(out["log_px"] - out["elbo"], out["kl"])  # log p(x) = ELBO + KL(q || p(z|x))


def test_elbo_matches_monte_carlo_and_log_px_matches_numerical_integration():
    x, m, v, nv = -0.7, 0.2, 0.3, 0.8
    g = torch.Generator().manual_seed(0)
    z = m + math.sqrt(v) * torch.randn(400_000, generator=g, dtype=torch.float64)

    def log_normal(a, mean, var):
        return -0.5 * (math.log(2 * math.pi * var) + (a - mean) ** 2 / var)

    mc = (log_normal(x, z, nv) + log_normal(z, 0.0, 1.0) - log_normal(z, m, v)).mean()
    out = linear_gaussian_elbo(x, m, v, nv)
    assert out["elbo"].item() == pytest.approx(mc.item(), abs=5e-3)
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    integral = (log_normal(x, grid, nv) + log_normal(grid, 0.0, 1.0)).exp().sum() * (grid[1] - grid[0])
    assert out["log_px"].item() == pytest.approx(integral.log().item(), abs=1e-8)
    with pytest.raises(ValueError, match="q_var and noise_var must be > 0"):
        linear_gaussian_elbo(x, m, 0.0, nv)


def test_ideal_denoiser_weights_and_prediction():
    diffusion = GaussianDiffusion.from_schedule("linear", 100)
    data = torch.tensor([[-1.0, 1.0], [1.0, -1.0], [0.5, 0.5]]).view(3, 1, 1, 2)
    ideal = IdealDenoiser(diffusion, data)
    x_t, t = torch.tensor([[0.3, -0.2], [-0.9, 0.8]]).view(2, 1, 1, 2), torch.tensor([40, 5])
    # Bayes by hand: weight_n proportional to exp(-||x_t - sqrt(abar) x0_n||^2 / (2 (1 - abar)))
    for b in range(2):
        abar = diffusion.alphas_cumprod[t[b]].double()
        logw = torch.stack([-((x_t[b].double() - abar.sqrt() * d) ** 2).sum() / (2 * (1 - abar)) for d in data.double()])
        torch.testing.assert_close(ideal.x0_weights(x_t, t)[b], logw.softmax(0))
    # with a single data point, the ideal eps is the eps that produced x_t
    single = IdealDenoiser(diffusion, data[:1])
    noise = torch.randn(4, 1, 1, 2)
    t = torch.tensor([0, 30, 60, 99])
    x_t = diffusion.q_sample(data[:1].expand(4, 1, 1, 2), t, noise)
    torch.testing.assert_close(single(x_t, t), noise, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="data must have shape \\(N, C, H, W\\)"):
        IdealDenoiser(diffusion, torch.zeros(3, 4))


def two_class_mixture():
    """Four 2-D blobs, two per class, of different widths and weights."""
    return GaussianMixture(means=[[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]], stds=[0.3, 0.5, 0.4, 0.2],
                           weights=[1.0, 2.0, 1.0, 1.0], labels=[0, 0, 1, 1])


@pytest.mark.parametrize("abar", [0.999, 0.5, 0.01])
def test_mixture_score_is_the_gradient_of_its_log_density(abar):
    mix = two_class_mixture()
    x = (torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2).requires_grad_(True)
    for y in (None, torch.tensor([0, 1, 2, 1] * 16)):  # 2 = the null label: unconditional rows
        grad = torch.autograd.grad(mix.log_prob(x, abar, y).sum(), x)[0]
        torch.testing.assert_close(mix.score(x.detach(), abar, y), grad)
    # the conditional densities are proper: p(x) = sum_y p(y) p(x | y), class weights 3/5 and 2/5
    xs = x.detach()
    by_class = torch.stack([mix.log_prob(xs, abar, torch.full((64,), c)) for c in (0, 1)], 1) + torch.tensor([0.6, 0.4]).log()
    torch.testing.assert_close(by_class.logsumexp(1), mix.log_prob(xs, abar))
    # at abar = 1 the noised density is the data's: a single blob's log density by hand
    one = GaussianMixture(means=[[1.0, -1.0]], stds=[0.5])
    point = torch.tensor([[0.2, 0.3]], dtype=torch.float64)
    by_hand = -math.log(2 * math.pi * 0.25) - ((point - torch.tensor([1.0, -1.0])) ** 2).sum() / (2 * 0.25)
    torch.testing.assert_close(one.log_prob(point, 1.0), by_hand.reshape(1))


def test_mixture_eps_is_the_best_noise_prediction_and_tweedie_holds():
    mix, g, n, abar = two_class_mixture(), torch.Generator().manual_seed(1), 200_000, 0.4
    x0, labels = mix.sample(n, generator=g)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * eps
    for y in (None, labels):
        residual = eps - mix.eps(x_t, abar, y)  # E[eps | x_t] leaves a residual uncorrelated with any function of x_t
        for feature in (torch.ones(n, 1, dtype=torch.float64), x_t, x_t**2):
            moment = (residual[:, :, None] * feature[:, None, :]).flatten(1)
            assert (moment.mean(0).abs() < 5 * moment.std(0) / n**0.5).all()
        best = (residual**2).mean()
        assert best < ((eps - 0.9 * mix.eps(x_t, abar, y)) ** 2).mean() and best < ((eps - x_t) ** 2).mean()
    torch.testing.assert_close(mix.posterior_mean(x_t[:5], abar), (x_t[:5] - (1 - abar) ** 0.5 * mix.eps(x_t[:5], abar)) / abar**0.5)
    residual0 = x0 - mix.posterior_mean(x_t, abar)  # Tweedie: E[x0 | x_t], checked the same way
    assert (residual0.mean(0).abs() < 5 * residual0.std(0) / n**0.5).all()
    assert torch.bincount(labels).tolist() == pytest.approx([0.6 * n, 0.4 * n], rel=0.01)  # weights 3 : 2 by class


def test_mixture_rejects_bad_input():
    with pytest.raises(ValueError, match="stds must be > 0"):
        GaussianMixture(means=[[0.0, 0.0]], stds=[0.0])
    with pytest.raises(ValueError, match="weights must be K = 2 positive"):
        GaussianMixture(means=[[0.0, 0.0], [1.0, 1.0]], stds=1.0, weights=[1.0, -1.0])
    mix = two_class_mixture()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        mix.score(torch.zeros(3, 3), 0.5)
    with pytest.raises(ValueError, match="y must lie in 0..2"):
        mix.score(torch.zeros(2, 2), 0.5, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="has no labels"):
        GaussianMixture(means=[[0.0, 0.0]], stds=1.0).score(torch.zeros(1, 2), 0.5, torch.tensor([0]))


def test_class_log_probs_is_bayes_rule_and_differentiable():
    from ddpm_utils.toy import GaussianMixture

    mix = GaussianMixture(means=[[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], stds=[0.5, 0.7, 0.4], weights=[1.0, 2.0, 1.0], labels=[0, 1, 1])
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    log_probs = mix.class_log_probs(x, 0.6)
    prior = torch.tensor([0.25, 0.75], dtype=torch.float64)
    joint = torch.stack([mix.log_prob(x, 0.6, torch.full((6,), c)) for c in (0, 1)], 1) + prior.log()  # log p(x_t | y) p(y)
    torch.testing.assert_close(log_probs, joint.log_softmax(1))
    grad = torch.autograd.grad(log_probs[:, 0].sum(), x)[0]  # what classifier guidance needs
    torch.testing.assert_close(grad, mix.score(x.detach(), 0.6, torch.zeros(6)) - mix.score(x.detach(), 0.6))  # Bayes for scores
    with pytest.raises(ValueError, match="no labels"):
        GaussianMixture(means=[[0.0, 0.0]], stds=1.0).class_log_probs(x, 0.5)

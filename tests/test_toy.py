import math

import pytest
import torch

from ddpm_utils.diffusion import GaussianDiffusion
from ddpm_utils.toy import IdealDenoiser, linear_gaussian_elbo, linear_gaussian_posterior


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

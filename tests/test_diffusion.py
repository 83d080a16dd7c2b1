import math
import re

import pytest
import torch
from helpers import LinearEps, predicting

from ddpm_utils.diffusion import (
    PREDICTIONS,
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    extract,
    normal_kl,
)
from ddpm_utils.schedules import linear_betas
from ddpm_utils.toy import IdealDenoiser


@pytest.fixture
def diffusion():
    return GaussianDiffusion.from_schedule("linear", 100, beta_end=0.2)


def test_buffers_are_float32_and_follow_the_definitions(diffusion):
    T = diffusion.num_timesteps
    for name in ["betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2"]:
        buf = getattr(diffusion, name)
        assert buf.dtype == torch.float32 and buf.shape == (T,), name
    betas = linear_betas(100, beta_end=0.2)
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(diffusion.alphas_cumprod, abar.float())
    assert diffusion.alphas_cumprod_prev[0].item() == 1.0  # the value "before" t = 0
    torch.testing.assert_close(diffusion.alphas_cumprod_prev[1:], diffusion.alphas_cumprod[:-1])
    assert diffusion.posterior_variance[0].item() == 0.0  # x_{-1} = x_0 is known exactly
    assert (diffusion.posterior_variance[1:] > 0).all()
    assert (diffusion.posterior_variance[1:] <= diffusion.betas[1:]).all()  # beta-tilde <= beta
    torch.testing.assert_close(diffusion.posterior_log_variance_clipped[1:], diffusion.posterior_variance[1:].log())


def test_buffers_move_with_to_and_schedule_is_recorded(diffusion):
    assert diffusion.schedule == {"name": "linear", "T": 100, "beta_end": 0.2}
    assert set(dict(diffusion.named_buffers())) >= {"betas", "alphas_cumprod"}
    assert diffusion.state_dict() == {}  # derived from the schedule, not saved twice


def test_extract_shape_and_values():
    a = torch.arange(10.0)
    out = extract(a, torch.tensor([3, 0, 9]), (3, 1, 28, 28))
    assert out.shape == (3, 1, 1, 1) and out.flatten().tolist() == [3.0, 0.0, 9.0]
    with pytest.raises(ValueError, match="shape \\(B,\\)"):
        extract(a, torch.tensor([[1]]), (1, 1, 2, 2))


def test_q_sample_closed_form_matches_iterating_the_markov_chain(diffusion):
    torch.manual_seed(0)
    n, k = 200_000, 60
    x0 = torch.full((n, 1, 1, 1), 0.7)
    x = x0.clone()
    for s in range(k + 1):  # x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) z, code steps 0..k
        x = (1 - diffusion.betas[s]).sqrt() * x + diffusion.betas[s].sqrt() * torch.randn_like(x)
    closed = diffusion.q_sample(x0, torch.full((n,), k))
    abar = diffusion.alphas_cumprod[k].item()
    for samples in (x, closed):
        # mean sqrt(abar) x0 and variance 1 - abar (Eq. 4); tolerances ~ 5 standard errors
        assert samples.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=5 * math.sqrt((1 - abar) / n))
        assert samples.var().item() == pytest.approx(1 - abar, abs=5 * (1 - abar) * math.sqrt(2 / n))


def test_q_sample_with_given_noise_and_x0_recovery(diffusion):
    x0, noise = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    t = torch.tensor([0, 10, 50, 99])
    x_t = diffusion.q_sample(x0, t, noise)
    abar = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    torch.testing.assert_close(diffusion.predict_x0_from_eps(x_t, t, noise), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(diffusion.predict_eps_from_x0(x_t, t, x0), noise, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("k", [1, 5, 50, 99])
def test_posterior_matches_bayes_rule_on_a_grid(diffusion, k):
    """q(x_{t-1} | x_t, x0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x0): evaluate on a grid."""
    x0, x_t = 0.6, -0.3
    abar_prev = diffusion.alphas_cumprod_prev[k].double()
    beta = diffusion.betas[k].double()
    grid = torch.linspace(-6, 6, 400_001, dtype=torch.float64)
    log_prior = -((grid - abar_prev.sqrt() * x0) ** 2) / (2 * (1 - abar_prev))
    log_lik = -((x_t - (1 - beta).sqrt() * grid) ** 2) / (2 * beta)
    w = (log_prior + log_lik).softmax(0)
    mean_grid = (w * grid).sum()
    var_grid = (w * (grid - mean_grid) ** 2).sum()
    mean, var, _ = diffusion.q_posterior_mean_variance(
        torch.full((1, 1, 1, 1), x0), torch.full((1, 1, 1, 1), x_t), torch.tensor([k])
    )
    assert mean.item() == pytest.approx(mean_grid.item(), abs=1e-5)
    assert var.item() == pytest.approx(var_grid.item(), rel=1e-3)


def test_normal_kl_matches_monte_carlo():
    torch.manual_seed(0)
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-0.5), torch.tensor(-0.2), torch.tensor(0.4)
    x = m1 + (0.5 * lv1).exp() * torch.randn(1_000_000, dtype=torch.float64)

    def log_normal(x, m, lv):
        return -0.5 * (math.log(2 * math.pi) + lv + (x - m) ** 2 / lv.exp())

    mc = (log_normal(x, m1, lv1) - log_normal(x, m2, lv2)).mean()
    assert normal_kl(m1, lv1, m2, lv2).item() == pytest.approx(mc.item(), abs=3e-3)
    assert normal_kl(m1, lv1, m1, lv1).item() == 0.0


def test_discretized_gaussian_probabilities_sum_to_one():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 values of 8-bit data in [-1, 1]
    for mean, std in [(0.0, 0.01), (0.3, 0.2), (-1.0, 0.003), (0.9, 1.5)]:
        log_p = discretized_gaussian_log_likelihood(levels, torch.tensor(mean, dtype=torch.float64),
                                                    torch.tensor(math.log(std), dtype=torch.float64))
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        assert (log_p <= 0).all()
    # a level at the mean, width-2/255 bin, std sigma: log(2 Phi(1/(255 sigma)) - 1), via math.erf
    sigma = 0.004
    expected = math.log(math.erf(1 / (255 * sigma) / math.sqrt(2)))
    got = discretized_gaussian_log_likelihood(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(math.log(sigma)))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_training_loss_is_zero_for_a_model_that_knows_the_noise(diffusion):
    x0, noise = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    t = torch.randint(0, 100, (8,))

    def cheat(x_t, t_, y=None):
        return diffusion.predict_eps_from_x0(x_t, t_, x0)

    assert diffusion.training_loss(cheat, x0, t=t, noise=noise).item() < 1e-8
    zero = diffusion.training_loss(lambda x, t_, y=None: torch.zeros_like(x), x0, t=t, noise=noise)
    torch.testing.assert_close(zero, (noise**2).mean())


def test_training_loss_label_dropout_rate_and_null_label(diffusion):
    seen = []

    class Spy(torch.nn.Module):
        num_classes = 10

        def forward(self, x, t, y=None):
            seen.append(y.clone())
            return torch.zeros_like(x)

    x0, y = torch.zeros(20_000, 1, 1, 1), torch.randint(0, 10, (20_000,))
    g = torch.Generator().manual_seed(0)
    diffusion.training_loss(Spy(), x0, y=y, p_uncond=0.2, generator=g)
    dropped = seen[-1] == 10
    assert dropped.float().mean().item() == pytest.approx(0.2, abs=0.015)
    assert torch.equal(seen[-1][~dropped], y[~dropped])  # the others keep their label
    diffusion.training_loss(Spy(), x0, y=y, p_uncond=1.0)
    assert (seen[-1] == 10).all()
    diffusion.training_loss(Spy(), x0, y=y, p_uncond=0.0)
    assert torch.equal(seen[-1], y)


def test_training_loss_is_reproducible_with_a_generator(diffusion):
    model = LinearEps(100)
    x0 = torch.randn(6, 1, 3, 3)
    a = diffusion.training_loss(model, x0, generator=torch.Generator().manual_seed(1))
    b = diffusion.training_loss(model, x0, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item()


def test_bad_inputs_raise_clear_errors(diffusion):
    x0 = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="t must be a tensor of shape \\(B,\\) = \\(2,\\), got \\(3,\\)"):
        diffusion.q_sample(x0, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="t must lie in 0..99, got values 5..100"):
        diffusion.q_sample(x0, torch.tensor([5, 100]))
    with pytest.raises(ValueError, match="integer timesteps"):
        diffusion.q_sample(x0, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="x0 must have shape \\(B, C, H, W\\) \\(images\\) or \\(B, D\\) \\(points\\)"):
        diffusion.training_loss(LinearEps(100), torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match="p_uncond must lie in \\[0, 1\\]"):
        diffusion.training_loss(LinearEps(100), x0, y=torch.tensor([1, 2]), p_uncond=1.5)
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        diffusion.training_loss(LinearEps(100), x0, y=torch.tensor([1, 2]), p_uncond=0.5)
    with pytest.raises(ValueError, match="model output must have the input's shape"):
        diffusion.training_loss(lambda x, t, y=None: x[:, :, :2], x0)
    with pytest.raises(ValueError, match="variance must be one of"):
        diffusion.p_mean_variance(x0, x0, torch.tensor([1, 2]), variance="learned")
    with pytest.raises(ValueError, match="betas must lie in \\(0, 1\\)"):
        GaussianDiffusion(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        GaussianDiffusion(torch.zeros(0))


# ----- the variational bound ------------------------------------------------------------------
def _grid_image(values):
    """An image on the 8-bit grid in [-1, 1] (what the decoder L_0 assumes)."""
    return (torch.tensor(values, dtype=torch.float32).round() / 127.5 - 1).view(1, 1, 2, 2)


def test_bound_of_a_perfect_denoiser_on_one_point():
    """Data = one image x*. The oracle's p(x_{t-1}|x_t) is exactly q(x_{t-1}|x_t, x*): every KL term is 0,
    and what is left is the prior L_T and the decoder L_0, both known in closed form."""
    diffusion = GaussianDiffusion.from_schedule("cosine", 40)
    x_star = _grid_image([0, 64, 191, 255])  # two edge levels, two interior levels
    model = IdealDenoiser(diffusion, x_star)
    out = diffusion.variational_bound(model, x_star.repeat(8, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    assert out["terms_bpd"].shape == (8, 40) and out["total_bpd"].shape == (8,)
    assert out["terms_bpd"][:, 1:].abs().max().item() < 1e-4  # KL(q || q) = 0 at every t >= 1

    # L_T: KL(N(sqrt(abar) x, 1 - abar) || N(0, 1)) per pixel, averaged, in bits
    abar = diffusion.alphas_cumprod[-1].double().item()
    kl = [0.5 * (abar * v * v + (1 - abar) - 1 - math.log(1 - abar)) for v in x_star.flatten().tolist()]
    assert out["prior_bpd"][0].item() == pytest.approx(sum(kl) / 4 / math.log(2), rel=1e-3)

    # L_0: decoder N(x*, sigma^2) with sigma^2 = beta-tilde at code t = 1 (clipped log-variance);
    # an interior level keeps mass 2 Phi(d) - 1 and an edge level Phi(d), d = 1 / (255 sigma).
    d = 1 / (255 * math.sqrt(diffusion.posterior_variance[1].item()))
    phi = 0.5 * (1 + math.erf(d / math.sqrt(2)))
    expected_l0 = -(2 * math.log2(phi) + 2 * math.log2(2 * phi - 1)) / 4
    assert out["terms_bpd"][:, 0].mean().item() == pytest.approx(expected_l0, rel=1e-3)
    torch.testing.assert_close(out["total_bpd"], out["prior_bpd"] + out["terms_bpd"].sum(1))


def test_bound_of_a_perfect_denoiser_on_two_points_pays_one_bit_per_image():
    """Data = two images, equally likely: -log2 p(x0) >= 1 bit per image for any model. The oracle
    pays exactly that entropy in the KL terms as the steps get fine (the bound becomes tight), while
    its decoder and prior terms are those of the one-point case. (Measured: 1.004 bits, s.e. 0.024.)"""
    diffusion = GaussianDiffusion.from_schedule("cosine", 200)
    points = torch.cat([_grid_image([0, 0, 255, 255]), _grid_image([255, 255, 0, 0])])
    x0 = points.repeat(64, 1, 1, 1)  # (128, 1, 2, 2)
    out = diffusion.variational_bound(IdealDenoiser(diffusion, points), x0, generator=torch.Generator().manual_seed(0))
    kl_bits_per_image = (out["terms_bpd"][:, 1:].sum(1) * 4).mean().item()
    assert kl_bits_per_image == pytest.approx(1.0, abs=0.1)
    assert (out["terms_bpd"] >= -1e-5).all()  # every term is a KL or a negative log-probability
    assert (out["total_bpd"] * 4).mean().item() > 1.0

    # a worse model has a worse bound: predicting eps = 0 everywhere
    zero = diffusion.variational_bound(lambda x, t, y=None: torch.zeros_like(x), x0[:16],
                                       generator=torch.Generator().manual_seed(0))
    assert zero["total_bpd"].mean() > out["total_bpd"].mean() + 1.0


# ----- what the network predicts, learned variances, loss weighting ----------------------------
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_target_converts_back_to_eps_and_x0_at_every_t(diffusion, prediction):
    d = GaussianDiffusion(diffusion.betas.double(), prediction=prediction)
    T = d.num_timesteps
    x0, noise = torch.randn(T, 1, 3, 3), torch.randn(T, 1, 3, 3)
    t = torch.arange(T)  # every t, 0 and T-1 included
    x_t = d.q_sample(x0, t, noise)
    eps, x0_back = d.eps_and_x0(d.training_target(x0, t, noise), x_t, t)
    torch.testing.assert_close(eps, noise, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(x0_back, x0, atol=2e-3, rtol=1e-3)


def test_eps_to_x0_to_v_to_eps_round_trip(diffusion):
    t = torch.tensor([0, 1, 50, 98, 99])
    x0, noise = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    x_t = diffusion.q_sample(x0, t, noise)
    x0_from_eps = diffusion.predict_x0_from_eps(x_t, t, noise)
    v = diffusion.v_target(x0_from_eps, t, noise)
    abar = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(v, abar.sqrt() * noise - (1 - abar).sqrt() * x0, atol=1e-4, rtol=1e-4)  # Salimans & Ho
    torch.testing.assert_close(diffusion.predict_x0_from_v(x_t, t, v), x0, atol=1e-4, rtol=1e-4)
    v_model = GaussianDiffusion(diffusion.betas.double(), prediction="v")
    eps_back, _ = v_model.eps_and_x0(v, x_t, t)
    torch.testing.assert_close(eps_back, noise, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("weighting", ["none", "min-snr"])
def test_the_three_targets_have_zero_loss_for_an_exact_model(diffusion, weighting):
    x0, noise = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    t = torch.randint(0, 100, (8,), generator=torch.Generator().manual_seed(0))
    for prediction in PREDICTIONS:
        d = GaussianDiffusion(diffusion.betas.double(), prediction=prediction)
        exact = lambda x_t, t_, y=None, d=d: d.training_target(x0, t_, noise)  # noqa: E731
        assert d.training_loss(exact, x0, t=t, noise=noise, loss_weighting=weighting).item() < 1e-10
        zero = d.training_loss(lambda x, t_, y=None: torch.zeros_like(x), x0, t=t, noise=noise, loss_weighting=weighting)
        assert zero.item() > 0.01


def test_min_snr_weights_the_same_x0_error_the_same_for_every_target(diffusion):
    """A model whose x0 guess is off by a fixed delta, written as eps, x0 or v: Min-SNR gives one loss
    (min(SNR, 5) |delta|^2), while the unweighted losses differ by the factors SNR and 1 + SNR."""
    B = 6
    x0, noise, delta = torch.randn(B, 1, 4, 4), torch.randn(B, 1, 4, 4), 0.1 * torch.randn(B, 1, 4, 4)
    t = torch.tensor([0, 5, 20, 50, 80, 99])
    losses = {}
    for prediction in PREDICTIONS:
        d = GaussianDiffusion(diffusion.betas.double(), prediction=prediction)

        def off_by_delta(x_t, t_, y=None, d=d):
            x0_hat = x0 + delta  # the same wrong x0 at the same x_t, in the target's own form
            eps_hat = d.predict_eps_from_x0(x_t, t_, x0_hat)
            return d.training_target(x0_hat, t_, eps_hat)  # in the target's own form

        losses[prediction] = {w: d.training_loss(off_by_delta, x0, t=t, noise=noise, loss_weighting=w).item()
                              for w in ("none", "min-snr")}
    snr = diffusion.snr(t).double().view(-1, 1, 1, 1)
    expected = (snr.clamp(max=5) * delta.double() ** 2).flatten(1).mean(1).mean().item()
    for prediction in PREDICTIONS:
        assert losses[prediction]["min-snr"] == pytest.approx(expected, rel=2e-3), prediction
    assert losses["x0"]["none"] == pytest.approx((delta**2).mean().item(), rel=1e-4)
    assert losses["eps"]["none"] == pytest.approx((snr * delta.double() ** 2).flatten(1).mean(1).mean().item(), rel=2e-3)
    assert losses["v"]["none"] == pytest.approx(((1 + snr) * delta.double() ** 2).flatten(1).mean(1).mean().item(), rel=2e-3)


def test_learned_log_variance_lies_between_beta_and_beta_tilde(diffusion):
    t = torch.arange(100)
    shape = (100, 1, 1, 1)
    log_beta, log_tilde = diffusion.betas.log().view(shape), diffusion.posterior_log_variance_clipped.view(shape)
    torch.testing.assert_close(diffusion.learned_log_variance(torch.ones(shape), t, shape), log_beta)
    torch.testing.assert_close(diffusion.learned_log_variance(-torch.ones(shape), t, shape), log_tilde)
    for v in (-0.5, 0.0, 0.7):
        mid = diffusion.learned_log_variance(torch.full(shape, v), t, shape)
        assert ((mid <= log_beta + 1e-6) & (mid >= log_tilde - 1e-6)).all()
    torch.testing.assert_close(diffusion.learned_log_variance(torch.zeros(shape), t, shape), (log_beta + log_tilde) / 2)


def test_l_hybrid_vlb_term_trains_only_the_variance(diffusion):
    """Nichol & Dhariwal 2021, Sec. 3.1: the mean's gradient comes from L_simple alone."""

    class TwoHeads(torch.nn.Module):  # output channels: eps = a x, then v = b (a constant)
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Parameter(torch.tensor(0.3)), torch.nn.Parameter(torch.tensor(0.2))

        def forward(self, x, t, y=None):
            return torch.cat([self.a * x, self.b.expand_as(x)], dim=1)

    x0 = (torch.randint(0, 256, (16, 1, 4, 4)).float() / 127.5) - 1
    kw = dict(t=torch.arange(0, 96, 6), noise=torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0)))
    grads = {}
    for lam in (0.0, 0.001, 1.0):
        model = TwoHeads()
        diffusion.training_loss(model, x0, hybrid_lambda=lam, **kw).backward()
        grads[lam] = (model.a.grad.item(), 0.0 if model.b.grad is None else model.b.grad.item())
    assert grads[0.0][0] == pytest.approx(grads[1.0][0], rel=1e-6) == pytest.approx(grads[0.001][0], rel=1e-6)
    assert grads[0.0][1] == 0.0 and grads[1.0][1] != 0.0
    assert grads[1.0][1] == pytest.approx(1000 * grads[0.001][1], rel=1e-4)  # L_vlb enters linearly in lambda


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_the_bound_of_an_ideal_model_does_not_depend_on_what_it_predicts(prediction):
    """Notebook 01's ideal denoiser of 8 points, rewritten to predict x0 or v: the same bits/dim."""
    eps_diffusion = GaussianDiffusion.from_schedule("cosine", 60)
    points = torch.cat([_grid_image([v, 255 - v, v // 2, 200]) for v in range(0, 256, 32)])  # 8 images
    ideal = IdealDenoiser(eps_diffusion, points)
    d = GaussianDiffusion.from_schedule("cosine", 60, prediction=prediction)

    rewritten = predicting(prediction, ideal, eps_diffusion)
    x0 = points.repeat(2, 1, 1, 1)
    want = eps_diffusion.variational_bound(ideal, x0, generator=torch.Generator().manual_seed(0))
    got = d.variational_bound(rewritten, x0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got["total_bpd"], want["total_bpd"], atol=1e-3, rtol=1e-3)


def test_objective_bad_values_raise_clear_errors(diffusion):
    with pytest.raises(ValueError, match=re.escape(f"prediction must be one of {tuple(PREDICTIONS)}, got 'score'")):
        GaussianDiffusion(diffusion.betas.double(), prediction="score")
    x0 = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        diffusion.training_loss(LinearEps(100), x0, loss_weighting="snr")
    with pytest.raises(ValueError, match="hybrid_lambda must be >= 0"):
        diffusion.training_loss(LinearEps(100), x0, hybrid_lambda=-0.1)
    with pytest.raises(ValueError, match="\\(or 2 channels with learned variances\\), got \\(2, 3, 4, 4\\)"):
        diffusion.training_loss(lambda x, t, y=None: x.repeat(1, 3, 1, 1), x0)  # a 3-channel head on 1-channel images


def test_v_turns_into_eps_by_a_rotation_accurate_at_both_ends():
    """eps = sigma x_t + alpha v never divides: float32 keeps eps to about 1e-6 even at code t = 0 and T-1, where going
    through x0 (a division by sqrt(1 - abar) or sqrt(abar)) lost 1e-5 and more."""
    d = GaussianDiffusion.from_schedule("cosine", 1000, prediction="v")
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 1, 500, 998, 999])
    x0, noise = torch.randn(5, 1, 8, 8, generator=g), torch.randn(5, 1, 8, 8, generator=g)
    x_t = d.q_sample(x0, t, noise)
    eps, x0_back = d.eps_and_x0(d.training_target(x0, t, noise), x_t, t)
    assert (eps - noise).abs().max() < 1e-5 and (x0_back - x0).abs().max() < 1e-5


def test_every_prediction_is_one_table_entry():
    a, s = torch.tensor(0.6), torch.tensor(0.8)  # alpha^2 + sigma^2 = 1
    x0, eps = torch.randn(3, 2), torch.randn(3, 2)
    x_t = a * x0 + s * eps
    for name, p in PREDICTIONS.items():
        eps_back, x0_back = p.to_eps_x0(p.target(x0, eps, a, s), x_t, a, s)
        torch.testing.assert_close(eps_back, eps, msg=name)
        torch.testing.assert_close(x0_back, x0, msg=name)
        # the loss scale: the target's error for a given x0 error at the same x_t, over that x0 error squared
        dx0 = 0.01 * torch.randn(3, 2)
        d_eps = -a / s * dx0  # the eps that goes with x0 + dx0 at the same x_t
        err = (p.target(x0 + dx0, eps + d_eps, a, s) - p.target(x0, eps, a, s)).square().sum() / dx0.square().sum()
        torch.testing.assert_close(err, p.error_scale(a**2 / s**2), msg=name)

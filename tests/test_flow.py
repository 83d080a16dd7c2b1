"""Flow matching: the path, its exact velocity on a mixture, the conversions, the loss, sampling, reflow, checkpoints."""

import dataclasses
import math

import pytest
import torch

from ddpm_utils import flow as flow_module
from ddpm_utils.checkpoints import load_checkpoint, save_checkpoint
from ddpm_utils.diffusion import PREDICTIONS, GaussianDiffusion
from ddpm_utils.flow import T_MAX, TIME_SCALE, FlowMatching, diffusion_abar, flow_sigma, reflow_pairs
from ddpm_utils.points import PointMLP, PointMLPConfig
from ddpm_utils.sampler_study import notebook_mixture
from ddpm_utils.samplers import noise_levels, sample
from ddpm_utils.training import TrainConfig, train
from ddpm_utils.unet import UNet, UNetConfig


class Exact:
    """A mixture's exact answer as a model, with the null label a guided model has."""

    def __init__(self, answer, num_classes):
        self.answer, self.num_classes = answer, num_classes

    def __call__(self, x, t, y=None):
        return self.answer(x, t, y)


def exact_velocity(mix):
    """The mixture's exact marginal velocity as a model: told TIME_SCALE t, as a flow network is."""
    return Exact(lambda x, t, y=None: mix.flow_velocity(x, t.double() / TIME_SCALE, y), mix.num_classes)


def exact_eps(mix, diffusion):
    return Exact(lambda x, t, y=None: mix.eps(x, diffusion.alpha_sigma(t)[0].double() ** 2, y), mix.num_classes)


@pytest.mark.parametrize("t", [0.1, 0.4, 0.8])
@pytest.mark.parametrize("y", [None, 1])
def test_flow_velocity_is_the_monte_carlo_mean_of_z_minus_x0_given_x_t(t, y):
    mix = notebook_mixture()
    g = torch.Generator().manual_seed(int(10 * t))
    x0, labels = mix.sample(60, generator=g)
    x0 = x0[labels == y][:6] if y is not None else x0[:6]  # points where p_t(x | y) has its mass
    x = (1 - t) * x0 + t * torch.randn(6, 2, dtype=torch.float64, generator=g)
    # self-normalised importance sampling: x0 from the (class's) mixture, weighted by N(x; (1 - t) x0, t^2 I)
    pool, labels = mix.sample(200_000, generator=g)
    if y is not None:
        pool = pool[labels == y]
    w = (-((x[:, None] - (1 - t) * pool[None]) ** 2).sum(-1) / (2 * t**2)).softmax(1)  # (6, N)
    u = (x[:, None] - (1 - t) * pool[None]) / t - pool[None]  # z - x0 for every pool point
    mc = (w[..., None] * u).sum(1)
    se = ((w[..., None] ** 2 * (u - mc[:, None]) ** 2).sum(1)).sqrt()  # the estimate's standard error
    exact = mix.flow_velocity(x, t, y)
    assert bool(((exact - mc).abs() < 5 * se + 1e-3).all()), ((exact - mc).abs().max(), se.max())


def test_flow_velocity_at_the_ends_and_its_errors():
    mix = notebook_mixture()
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.allclose(mix.flow_velocity(x, 0.0), -x)  # at t = 0 z is independent of x_t = x0: E[z] = 0
    assert torch.allclose(mix.flow_velocity(x, 1.0), x - mix.weights @ mix.means)  # x_t = z: E[x0 | z] is the mean
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        mix.flow_velocity(x, 1.5)
    with pytest.raises(ValueError, match="shape"):
        mix.flow_velocity(torch.zeros(5, 3), 0.5)


def test_the_path_the_target_and_the_conversion_agree_for_every_prediction():
    g = torch.Generator().manual_seed(0)
    x0, z = torch.randn(4, 1, 6, 6, generator=g), torch.randn(4, 1, 6, 6, generator=g)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    for prediction in ("velocity", "eps", "x0"):
        flow = FlowMatching(prediction)
        x_t = flow.q_sample(x0, t, z)
        assert torch.allclose(x_t, (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * z)
        eps, x0_back = flow.eps_and_x0(flow.training_target(x0, t, z), x_t, t)
        inner = slice(1, 3) if prediction != "velocity" else slice(0, 4)  # eps and x0 targets divide by 0 at an end
        assert torch.allclose(x0_back[inner], x0[inner], atol=1e-5) and torch.allclose(eps[inner], z[inner], atol=1e-5)
    assert torch.equal(FlowMatching().training_target(x0, t, z), z - x0)
    with pytest.raises(ValueError, match=r"float tensor in \[0, 1\]"):
        FlowMatching().q_sample(x0, torch.tensor([0, 1, 2, 3]), z)


def test_velocity_prediction_also_reads_on_a_variance_preserving_path_and_its_error_scale_is_right():
    diffusion = GaussianDiffusion.from_schedule("cosine", 100, prediction="velocity")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([5, 50, 95])
    x_t = diffusion.q_sample(x0, t, eps)
    eps_back, x0_back = diffusion.eps_and_x0(eps - x0, x_t, t)
    assert torch.allclose(eps_back, eps, atol=1e-4) and torch.allclose(x0_back, x0, atol=1e-4)
    # |d u|^2 = (1 + sqrt(snr))^2 |d x0|^2 at the same x_t
    a, s = diffusion.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1), diffusion.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    du = 0.01 * torch.randn(3, 1, 4, 4, generator=g)
    _, x0_moved = PREDICTIONS["velocity"].to_eps_x0(eps - x0 + du, x_t, a, s)
    ratio = du.square().flatten(1).sum(1) / (x0_moved - x0_back).square().flatten(1).sum(1)
    assert torch.allclose(ratio, PREDICTIONS["velocity"].error_scale(diffusion.snr(t)), rtol=1e-3)


def test_the_flow_path_is_a_variance_preserving_diffusion_rescaled():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    abar = diffusion_abar(t)
    assert torch.allclose(((1 - abar) / abar).sqrt(), flow_sigma(t))  # the same noise level sigma
    x0, z = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    vp = ((1 - t) * x0 + t * z) / ((1 - t) ** 2 + t**2).sqrt()
    assert torch.allclose(vp, abar.sqrt() * x0 + (1 - abar).sqrt() * z)


def test_uniform_levels_are_evenly_spaced_flow_times_from_t_max():
    flow = FlowMatching()
    levels = noise_levels(flow, 4, "uniform")
    t = levels / (1 + levels)
    assert torch.allclose(t, torch.tensor([T_MAX, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    assert noise_levels(flow, 1, "uniform").tolist() == [flow_sigma(T_MAX), 0.0]
    assert noise_levels(flow, 5, "karras")[0].item() == 80.0  # EDM's start, as for a diffusion


def test_euler_on_a_flow_is_the_plain_euler_loop_in_t():
    mix, flow = notebook_mixture(), FlowMatching()
    velocity = exact_velocity(mix)
    z = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = sample(velocity, flow, z.shape, sampler="euler", num_steps=8, x_T=z, progress=False)
    t_grid = noise_levels(flow, 8, "uniform").div(1 + noise_levels(flow, 8, "uniform")).tolist()
    x = z * 1.0
    for t, t_next in zip(t_grid[:-1], t_grid[1:], strict=True):  # x_{t'} = x_t + (t' - t) u(x_t, t)
        x = x + (t_next - t) * mix.flow_velocity(x, t)
    assert torch.allclose(ours.double(), x, atol=1e-5)


def test_with_exact_answers_the_flow_ode_and_ddpms_ode_send_the_same_noise_to_the_same_point():
    mix, flow, diffusion = notebook_mixture(), FlowMatching(), GaussianDiffusion.from_schedule("linear", 1000)
    z = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    via_flow = sample(exact_velocity(mix), flow, z.shape, sampler="heun", spacing="karras", num_steps=200, x_T=z, progress=False)
    via_ddpm = sample(exact_eps(mix, diffusion), diffusion, z.shape, sampler="heun", spacing="karras", num_steps=200, x_T=z,
                      progress=False)
    # both start at sigma = 80 from z (same x = 81 z vs sqrt(1 + 80^2) z: 1.2 % apart) and follow one ODE in sigma
    assert (via_flow - via_ddpm).norm(dim=1).mean() < 0.05 * via_ddpm.norm(dim=1).mean()


def test_the_flow_denoiser_reads_the_exact_velocity_as_the_exact_posterior_mean():
    mix, flow = notebook_mixture(), FlowMatching()
    calls = []
    from ddpm_utils.denoiser import make_denoiser

    denoise = make_denoiser(lambda x, t, y=None: calls.append(t) or exact_velocity(mix)(x, t, y), flow)
    x = torch.randn(10, 2, dtype=torch.float64) * 3
    for sigma in (0.1, 1.0, 7.0):
        out = denoise(x, sigma)
        abar = 1 / (1 + sigma**2)
        assert torch.allclose(out.x0, mix.posterior_mean(x * abar**0.5, abar), atol=1e-5)  # E[x0 | x] whatever the path
        assert torch.allclose(out.eps, (x - out.x0) / sigma)
    assert [c[0].item() for c in calls] == pytest.approx([TIME_SCALE * s / (1 + s) for s in (0.1, 1.0, 7.0)])


def test_classifier_guidance_of_a_flow_model_matches_the_same_guidance_of_a_diffusion():
    mix, flow, diffusion = notebook_mixture(), FlowMatching(), GaussianDiffusion.from_schedule("linear", 1000)

    class ExactClassifier(torch.nn.Module):  # the mixture's p(y | x_t) for the linear schedule's x_t
        schedule = diffusion.schedule

        def forward(self, x, t):
            return mix.class_log_probs(x, diffusion.alpha_sigma(t)[0].double() ** 2)

    z = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    kw = dict(sampler="dpm-solver++", num_steps=60, x_T=z, y=2, guidance_scale=0.0, classifier=ExactClassifier(),
              classifier_scale=3.0, progress=False)
    via_flow = sample(exact_velocity(mix), flow, z.shape, **kw)
    via_ddpm = sample(exact_eps(mix, diffusion), diffusion, z.shape, **kw)
    assert (via_flow - via_ddpm).norm(dim=1).mean() < 0.05 * via_ddpm.norm(dim=1).mean()
    assert (mix.class_log_probs(via_flow, 1.0).argmax(1) == 2).double().mean() > 0.9  # it did guide
    del ExactClassifier.schedule
    with pytest.raises(ValueError, match="needs the classifier's schedule"):
        sample(exact_velocity(mix), flow, z.shape, **kw)


def test_the_loss_is_the_squared_velocity_error_and_time_sampling_is_as_named():
    flow, g = FlowMatching(), torch.Generator().manual_seed(5)
    x0, z, t = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g), torch.rand(8, generator=g)
    seen = {}

    def model(x, t_net, y=None):
        seen["t"] = t_net
        return torch.zeros_like(x)

    loss = flow.training_loss(model, x0, t=t, noise=z)
    assert torch.allclose(loss, (z - x0).square().mean()) and torch.allclose(seen["t"], TIME_SCALE * t)
    oracle = flow.training_loss(lambda x, tn, y=None: z - x0, x0, t=t, noise=z)
    assert oracle.item() == 0.0
    uniform = FlowMatching(time_sampling="uniform").sample_t(100_000, "cpu", torch.Generator().manual_seed(0))
    logit = FlowMatching(time_sampling="logit-normal").sample_t(100_000, "cpu", torch.Generator().manual_seed(0))
    assert abs(uniform.mean().item() - 0.5) < 0.01 and abs(((uniform > 0.25) & (uniform < 0.75)).float().mean().item() - 0.5) < 0.01
    inside = ((logit > torch.tensor(-1.0).sigmoid()) & (logit < torch.tensor(1.0).sigmoid())).float().mean().item()
    assert abs(inside - 0.6827) < 0.01  # logit(t) ~ N(0, 1): 68 % within one standard deviation
    with pytest.raises(ValueError, match="time_sampling must be one of"):
        FlowMatching(time_sampling="cosine")
    with pytest.raises(ValueError, match="no learned variance"):
        flow.training_loss(lambda x, tn, y=None: torch.cat([x, x], 1), torch.zeros(2, 1, 4, 4))


def test_min_snr_weighting_gives_the_same_loss_for_the_same_x0_error_whatever_is_predicted():
    g = torch.Generator().manual_seed(6)
    x0, z, t = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g), torch.rand(5, generator=g) * 0.9 + 0.05
    err = 0.1 * torch.randn(5, 2, generator=g)  # the same error of the x0 estimate at the same x_t
    losses = []
    for prediction in ("velocity", "eps", "x0"):
        flow = FlowMatching(prediction)
        x_t = flow.q_sample(x0, t, z)
        a, s = (1 - t)[:, None], t[:, None]
        x0_hat = x0 + err
        eps_hat = (x_t - a * x0_hat) / s
        output = PREDICTIONS[prediction].target(x0_hat, eps_hat, a, s)
        losses.append(flow.training_loss(lambda x, tn, y=None, out=output: out, x0, t=t, noise=z, loss_weighting="min-snr"))
    assert torch.allclose(torch.stack(losses), losses[0].expand(3), rtol=1e-4)


def test_reflow_pairs_are_the_flow_odes_end_points_and_need_a_flow():
    mix, flow = notebook_mixture(), FlowMatching()
    z, x0 = reflow_pairs(exact_velocity(mix), flow, (32, 2), steps=20, generator=torch.Generator().manual_seed(7))
    again = sample(exact_velocity(mix), flow, (32, 2), sampler="euler", num_steps=20, x_T=z, progress=False, clip_x0=False)
    assert torch.equal(x0, again) and z.shape == (32, 2)
    with pytest.raises(ValueError, match="needs a FlowMatching process"):
        reflow_pairs(exact_velocity(mix), GaussianDiffusion.from_schedule("linear", 10), (4, 2))


def test_a_reflowed_model_takes_one_euler_step_almost_as_well_as_many():
    """Reflow on the 2-D mixture: a small MLP trained on the exact flow's (z, x0) pairs straightens the paths."""
    mix, flow = notebook_mixture(), FlowMatching()
    g = torch.Generator().manual_seed(8)
    z, x0 = reflow_pairs(exact_velocity(mix), flow, (4000, 2), steps=30, generator=g)
    torch.manual_seed(0)
    model = PointMLP(PointMLPConfig(hidden=64, depth=2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        i = torch.randint(0, 4000, (256,), generator=g)
        loss = flow.training_loss(model, x0[i].float(), noise=z[i].float(), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        one = sample(model, flow, (4000, 2), sampler="euler", num_steps=1, x_T=z.float(), progress=False)
        curved = sample(exact_velocity(mix), flow, (4000, 2), sampler="euler", num_steps=1, x_T=z, progress=False)
    # one step of the reflowed model lands near the pair's x0; one step of the curved (exact) flow lands at the mean
    assert (one.double() - x0).norm(dim=1).mean() < 0.5 * (curved - x0).norm(dim=1).mean()


def test_flow_config_defaults_to_velocity_and_refuses_what_a_flow_has_not():
    assert TrainConfig(process="flow").network_target == "velocity" and TrainConfig().network_target == "eps"
    assert dataclasses.replace(TrainConfig(), process="flow").network_target == "velocity"  # resolved late, not stored
    assert TrainConfig(process="flow", prediction="v").network_target == "v"
    with pytest.raises(ValueError, match="a flow .* has none"):
        TrainConfig(process="flow", learned_variance=True)
    with pytest.raises(ValueError, match="process must be one of"):
        TrainConfig(process="rectified")


def test_a_flow_checkpoint_round_trips_and_the_other_process_is_refused_with_a_reason(tmp_path):
    model = UNet(UNetConfig.preset("tiny", image_size=8, in_channels=1, num_classes=3))
    path = save_checkpoint(tmp_path / "flow.pt", model, FlowMatching(time_sampling="logit-normal"))
    ckpt = load_checkpoint(path)
    assert ckpt.diffusion.process == "flow" and ckpt.diffusion.time_sampling == "logit-normal"
    assert ckpt.diffusion.prediction == "velocity"
    with pytest.raises(ValueError, match="holds a flow-matching model, but it was given a diffusion .* on its own path"):
        load_checkpoint(path, diffusion=GaussianDiffusion.from_schedule("cosine", 1000))
    ddpm = save_checkpoint(tmp_path / "ddpm.pt", model, GaussianDiffusion.from_schedule("cosine", 1000))
    with pytest.raises(ValueError, match=r"holds a diffusion \(DDPM\) model, but it was given a flow-matching"):
        load_checkpoint(ddpm, diffusion=FlowMatching())
    with pytest.raises(ValueError, match="predicts 'velocity'"):
        load_checkpoint(path, diffusion=FlowMatching("eps"))


def test_training_a_flow_writes_a_flow_checkpoint_that_samples(tmp_path):
    config = TrainConfig(process="flow", preset="tiny", max_steps=3, batch_size=4, sample_steps=2, data_source="bundled",
                         val_every=3)
    result = train(config, tmp_path, device="cpu", progress=False)
    ckpt = load_checkpoint(result["checkpoint"], use_ema=True)
    assert ckpt.diffusion.process == "flow" and len(result["val_history"]) == 1
    assert all(math.isfinite(v) for v in result["val_history"][0][1:])
    images, trajectory = sample(ckpt.model.eval(), ckpt.diffusion, (2, 1, 28, 28), sampler="ddim", num_steps=3, y=torch.tensor([1, 2]),
                                guidance_scale=2.0, return_trajectory=True, progress=False)
    assert images.shape == (2, 1, 28, 28)
    assert torch.allclose(trajectory["t"].double(), torch.tensor([T_MAX, 2 / 3, 1 / 3], dtype=torch.float64))
    with pytest.raises(ValueError, match="trajectory_at names a DDPM's code timesteps"):
        sample(ckpt.model, ckpt.diffusion, (2, 1, 28, 28), num_steps=3, return_trajectory=True, trajectory_at=[0], progress=False)
    assert flow_module.PROCESSES == ("diffusion", "flow")

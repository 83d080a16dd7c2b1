import math
import re
from pathlib import Path

import pytest
import torch
from helpers import LinearEps, predicting

from ddpm_utils.diffusion import GaussianDiffusion
from ddpm_utils.sampler_study import exact_denoiser, notebook_mixture
from ddpm_utils.samplers import (
    DEFAULT_SPACING,
    SAMPLERS,
    SPACINGS,
    ddim_step,
    ddpm_step,
    level_pairs,
    noise_levels,
    respace,
    sample,
    timestep_pairs,
)
from ddpm_utils.toy import IdealDenoiser
from ddpm_utils.unet import UNet, UNetConfig

T = 50


@pytest.fixture
def diffusion():
    return GaussianDiffusion.from_schedule("cosine", T)


def test_timestep_pairs_start_at_T_minus_1_and_end_at_minus_1():
    assert timestep_pairs(10) == [(9, 8), (8, 7), (7, 6), (6, 5), (5, 4), (4, 3), (3, 2), (2, 1), (1, 0), (0, -1)]
    assert timestep_pairs(1000, 4) == [(999, 666), (666, 333), (333, 0), (0, -1)]
    assert timestep_pairs(1000, 1) == [(999, -1)]
    for n in (2, 7, 33, 999):
        ts = [t for t, _ in timestep_pairs(1000, n)]
        assert len(set(ts)) == n and ts[0] == 999 and ts[-1] == 0
    for bad in (0, 11, 2.5):
        with pytest.raises(ValueError, match="num_steps must be an int in 1..T = 1..10"):
            timestep_pairs(10, bad)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_step_adds_no_noise_at_t_0_and_some_before(diffusion, variance):
    x, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 0, 0])
    a, x0a = ddpm_step(diffusion, eps, t, x, noise=torch.randn_like(x), variance=variance)
    b, x0b = ddpm_step(diffusion, eps, t, x, noise=torch.randn_like(x), variance=variance)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, x0a)  # the last step returns the predicted x0
    t = torch.tensor([5, 5, 5])
    a, _ = ddpm_step(diffusion, eps, t, x, noise=torch.zeros_like(x), variance=variance)
    b, _ = ddpm_step(diffusion, eps, t, x, noise=torch.ones_like(x), variance=variance)
    var = diffusion.posterior_variance[5] if variance == "posterior" else diffusion.betas[5]
    torch.testing.assert_close(b - a, var.sqrt().expand_as(a))


def test_ddpm_mean_equals_eq_11_of_ho_et_al(diffusion):
    """mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) (Ho et al. 2020, Eq. 11)."""
    x, eps, t = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3), torch.tensor([1, 10, 30, 49])
    mean, _ = ddpm_step(diffusion, eps, t, x, noise=torch.zeros_like(x))
    b, a, abar = (v[t].view(-1, 1, 1, 1) for v in (diffusion.betas, diffusion.alphas, diffusion.alphas_cumprod))
    torch.testing.assert_close(mean, (x - b / (1 - abar).sqrt() * eps) / a.sqrt(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_eta_1_over_all_steps_equals_ddpm_with_posterior_variance_step_by_step(diffusion, clip_x0):
    model = LinearEps(T)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 5, 5, generator=g) * 2
    for t_int, t_prev_int in timestep_pairs(T):
        t = torch.full((4,), t_int)
        eps, noise = model(x, t), torch.randn(x.shape, generator=g)
        x_ddpm, x0_ddpm = ddpm_step(diffusion, eps, t, x, noise, "posterior", clip_x0)
        x_ddim, x0_ddim = ddim_step(diffusion, eps, t, torch.full((4,), t_prev_int), x, 1.0, noise, clip_x0)
        torch.testing.assert_close(x_ddim, x_ddpm, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(x0_ddim, x0_ddpm, atol=1e-4, rtol=1e-4)
        x = x_ddpm


def test_sample_loop_ddim_eta_1_equals_ancestral_ddpm(diffusion):
    model = LinearEps(T)
    a = sample(model, diffusion, (3, 1, 4, 4), sampler="ddpm", num_steps=None, generator=torch.Generator().manual_seed(3), progress=False)
    b = sample(model, diffusion, (3, 1, 4, 4), num_steps=T, eta=1.0, generator=torch.Generator().manual_seed(3), progress=False)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ddim_eta_0_is_deterministic(diffusion):
    model, x_T = LinearEps(T), torch.randn(2, 1, 4, 4)
    a = sample(model, diffusion, (2, 1, 4, 4), num_steps=10, x_T=x_T, generator=torch.Generator().manual_seed(1), progress=False)
    b = sample(model, diffusion, (2, 1, 4, 4), num_steps=10, x_T=x_T, generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a, b)
    c = sample(model, diffusion, (2, 1, 4, 4), num_steps=10, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(2), progress=False)
    assert not torch.allclose(a, c)
    t, t_prev, eps = torch.tensor([20, 20]), torch.tensor([10, 10]), torch.randn(2, 1, 4, 4)
    s1, _ = ddim_step(diffusion, eps, t, t_prev, x_T, eta=0.0, noise=torch.randn_like(x_T))
    s2, _ = ddim_step(diffusion, eps, t, t_prev, x_T, eta=0.0, noise=torch.randn_like(x_T))
    assert torch.equal(s1, s2)


@pytest.mark.parametrize("kwargs", [{"sampler": "ddpm", "num_steps": None}, {"sampler": "ddpm", "num_steps": 9}, {"num_steps": 7},
                                    {"num_steps": 1}, {"num_steps": 12, "eta": 0.5}, {"sampler": "dpm-solver++", "num_steps": 6},
                                    {"sampler": "dpm-solver++", "num_steps": 1}])
def test_every_sampler_returns_the_single_data_point_from_its_oracle(diffusion, kwargs):
    """With data = one image, the exact denoiser predicts x0 = x*: every sampler must land on it."""
    x_star = torch.tensor([-0.8, 0.1, 0.5, 0.9]).view(1, 1, 2, 2)
    out = sample(IdealDenoiser(diffusion, x_star), diffusion, (5, 1, 2, 2), generator=torch.Generator().manual_seed(0),
                 progress=False, **kwargs)
    torch.testing.assert_close(out, x_star.expand(5, 1, 2, 2), atol=1e-4, rtol=0)


def test_sample_is_reproducible_and_trajectory_has_the_right_shape(diffusion):
    model = LinearEps(T)
    kw = dict(num_steps=5, generator=None, progress=False, return_trajectory=True)
    a, traj = sample(model, diffusion, (2, 1, 3, 3), **{**kw, "generator": torch.Generator().manual_seed(0)})
    b, _ = sample(model, diffusion, (2, 1, 3, 3), **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert torch.equal(a, b)
    assert traj["t"].tolist() == [49, 37, 24, 12, 0]
    assert traj["x_t"].shape == traj["x0_pred"].shape == (5, 2, 1, 3, 3)
    torch.testing.assert_close(traj["x0_pred"][-1], a)  # the last prediction is the sample
    _, some = sample(model, diffusion, (2, 1, 3, 3), num_steps=5, return_trajectory=True, trajectory_at=[49, 0, 3],
                     progress=False)
    assert some["t"].tolist() == [49, 0]


def test_clip_x0_keeps_samples_in_range(diffusion):
    wild = lambda x, t, y=None: -10 * torch.ones_like(x)  # noqa: E731  (predicts huge x0)
    out = sample(wild, diffusion, (2, 1, 3, 3), num_steps=5, progress=False)
    assert out.min() >= -1 and out.max() <= 1
    out = sample(wild, diffusion, (2, 1, 3, 3), num_steps=5, progress=False, clip_x0=False)
    assert out.abs().max() > 1


def test_sample_with_labels_and_guidance_runs_the_unet():
    diffusion = GaussianDiffusion.from_schedule("linear", 20)
    model = UNet(UNetConfig.preset("tiny")).eval()
    out = sample(model, diffusion, (3, 1, 28, 28), num_steps=4, y=torch.tensor([0, 5, 9]), guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(0), progress=False)
    assert out.shape == (3, 1, 28, 28) and torch.isfinite(out).all()
    same = sample(model, diffusion, (3, 1, 28, 28), num_steps=4, y=7, progress=False, generator=torch.Generator().manual_seed(0))
    assert same.shape == (3, 1, 28, 28)


def test_sample_bad_inputs(diffusion):
    model = LinearEps(T)
    with pytest.raises(ValueError, match="shape must be \\(B, C, H, W\\) \\(images\\) or \\(B, D\\)"):
        sample(model, diffusion, (2, 4, 4), progress=False)
    with pytest.raises(ValueError, match=re.escape(f"sampler must be one of {tuple(SAMPLERS)}, got 'lms'")):
        sample(model, diffusion, (2, 1, 4, 4), sampler="lms", progress=False)
    with pytest.raises(ValueError, match="eta=0.5 is not an option of sampler 'dpm-solver\\+\\+' \\(its options: none\\)"):
        sample(model, diffusion, (2, 1, 4, 4), sampler="dpm-solver++", eta=0.5, progress=False)
    with pytest.raises(ValueError, match="num_steps must be an int in 1..T"):
        sample(model, diffusion, (2, 1, 4, 4), sampler="ddpm", num_steps=0, progress=False)
    with pytest.raises(ValueError, match="needs class labels y"):
        sample(model, diffusion, (2, 1, 4, 4), guidance_scale=3.0, progress=False)
    with pytest.raises(ValueError, match="y must be an int, labels of shape \\(B,\\) = \\(2,\\) or prompts"):
        sample(model, diffusion, (2, 1, 4, 4), y=torch.tensor([1, 2, 3]), progress=False)
    with pytest.raises(ValueError, match="num_steps must be an int in 1..T"):
        sample(model, diffusion, (2, 1, 4, 4), num_steps=51, progress=False)
    with pytest.raises(ValueError, match="contains none of the timesteps walked"):
        sample(model, diffusion, (2, 1, 4, 4), num_steps=2, return_trajectory=True, trajectory_at=[5], progress=False)
    with pytest.raises(ValueError, match="t_prev must have t's shape"):
        ddim_step(diffusion, torch.zeros(1, 1, 2, 2), torch.tensor([3]), torch.tensor([3]), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim_step(diffusion, torch.zeros(1, 1, 2, 2), torch.tensor([3]), torch.tensor([2]), torch.zeros(1, 1, 2, 2), eta=-1)


def test_respaced_ancestral_sampling_equals_ddim_with_eta_one():
    """beta-tilde of the respaced chain is DDIM's sigma^2 at eta = 1, so both walk the same chain."""
    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    model = LinearEps(100)
    m, d = respace(model, diffusion, 10)
    assert d.num_timesteps == 10 and m.timesteps.tolist() == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    torch.testing.assert_close(d.alphas_cumprod, diffusion.alphas_cumprod[m.timesteps])
    for clip in (False, True):
        a = sample(m, d, (3, 1, 4, 4), sampler="ddpm", num_steps=None, generator=torch.Generator().manual_seed(1), clip_x0=clip,
                   progress=False)
        b = sample(model, diffusion, (3, 1, 4, 4), num_steps=10, eta=1.0, generator=torch.Generator().manual_seed(1),
                   clip_x0=clip, progress=False)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    full_m, full_d = respace(model, diffusion, 100)  # all steps: the original chain
    torch.testing.assert_close(full_d.betas, diffusion.betas)


class WithVariance(torch.nn.Module):
    """A fixed-variance model plus a constant learned-variance channel v."""

    def __init__(self, model, v: float):
        super().__init__()
        self.model, self.v, self.num_classes = model, v, getattr(model, "num_classes", None)

    def forward(self, x, t, y=None):
        eps = self.model(x, t, y)
        return torch.cat([eps, torch.full_like(eps, self.v)], dim=1)


@pytest.mark.parametrize("num_steps", [None, 10])
def test_a_learned_variance_at_its_ends_is_the_fixed_beta_or_beta_tilde_sampler(num_steps):
    """v = +1 is sigma^2 = beta_t and v = -1 the posterior's beta-tilde_t, of the chain being walked:
    for a respaced chain these are the respaced betas' own (as improved-diffusion recomputes them)."""
    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    model = LinearEps(100)
    for v, variance in ((1.0, "beta"), (-1.0, "posterior")):
        m, d = (model, diffusion) if num_steps is None else respace(model, diffusion, num_steps)
        mv, dv = (WithVariance(model, v), diffusion) if num_steps is None else respace(WithVariance(model, v), diffusion, num_steps)
        kw = dict(sampler="ddpm", num_steps=None, generator=torch.Generator().manual_seed(3), progress=False)
        fixed = sample(m, d, (3, 1, 4, 4), variance=variance, **kw)
        learned = sample(mv, dv, (3, 1, 4, 4), variance="beta" if variance == "posterior" else "posterior", sampler="ddpm",
                         num_steps=None, generator=torch.Generator().manual_seed(3), progress=False)  # the fixed choice is ignored
        torch.testing.assert_close(learned, fixed)
    _, d = respace(model, diffusion, 10)
    i = torch.tensor([5])
    respaced_betas = 1 - d.alphas_cumprod[5] / d.alphas_cumprod[4]
    torch.testing.assert_close(d.learned_log_variance(torch.ones(1, 1, 1, 1), i, (1, 1, 1, 1)).flatten(),
                               respaced_betas.log().view(1), rtol=1e-4, atol=1e-5)
    assert respaced_betas > 5 * diffusion.betas[55]  # not the original chain's beta at that timestep


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_sampling_a_model_rewritten_to_predict_x0_or_v_gives_the_same_images(diffusion, prediction):
    eps_model = LinearEps(T)
    d = GaussianDiffusion.from_schedule("cosine", T, prediction=prediction)

    rewritten = predicting(prediction, eps_model, diffusion)
    for kw in ({"sampler": "ddpm", "num_steps": None}, {"num_steps": 7}, {"sampler": "dpm-solver++", "num_steps": 7, "spacing": "uniform"}):
        want = sample(eps_model, diffusion, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0), progress=False, **kw)
        got = sample(rewritten, d, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0), progress=False, **kw)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    m, d_respaced = respace(rewritten, d, 5)
    assert d_respaced.prediction == prediction


def test_dpm_solver_first_order_is_ddim_and_second_order_beats_it_against_the_exact_ode():
    """With the exact eps of a Gaussian mixture, the probability-flow ODE has one answer; DDIM with
    1,000 steps is that answer. DPM-Solver++ at 10-20 steps must land closer to it than DDIM does."""
    from ddpm_utils.samplers import dpm_solver_step
    from ddpm_utils.toy import GaussianMixture

    mix = GaussianMixture(means=[[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], stds=[0.6, 0.8, 0.7])
    diffusion = GaussianDiffusion.from_schedule("cosine", 1000)

    class Exact(torch.nn.Module):
        def forward(self, x, t, y=None):
            return mix.eps(x.double(), diffusion.alphas_cumprod[t].double()).float()

    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(x_T=x_T, progress=False)
    truth = sample(Exact(), diffusion, x_T.shape, num_steps=1000, **kw)
    def error(sampler, steps):  # mean distance to the 1,000-step solution
        return (sample(Exact(), diffusion, x_T.shape, sampler=sampler, num_steps=steps, spacing="uniform", **kw)
                - truth).norm(dim=1).mean()

    for steps in (10, 20):
        assert error("dpm-solver++", steps) < 0.7 * error("ddim", steps), steps  # measured: 0.079 vs 0.21, 0.021 vs 0.10
    # second order: doubling the steps divides DPM-Solver++'s error by about 4, DDIM's (first order) by about 2
    assert error("dpm-solver++", 40) / error("dpm-solver++", 80) > 3 and error("ddim", 40) / error("ddim", 80) < 2.5
    # one first-order step is exactly a DDIM step with eta = 0
    x_t, eps = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    t, t_prev = torch.full((4,), 700), torch.full((4,), 400)
    x0 = diffusion.predict_x0_from_eps(x_t, t, eps)
    first, (kept, h) = dpm_solver_step(diffusion, x0, t, t_prev, x_t)
    torch.testing.assert_close(first, ddim_step(diffusion, eps, t, t_prev, x_t, eta=0.0)[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(kept, x0) and bool((h > 0).all())  # log-SNR grows towards the data
    last, _ = dpm_solver_step(diffusion, x0, t, torch.full((4,), -1), x_t)
    assert torch.equal(last, x0)  # the last step returns the predicted data


@pytest.mark.parametrize("sampler,steps", [("ddim", 20), ("dpm-solver++", 10), ("ddpm", 25)])
def test_sampling_with_the_exact_classifier_equals_sampling_the_exact_conditional_model(sampler, steps):
    """Through `sample`, classifier guidance at scale 1 with the exact p(y | x_t) of a labelled mixture turns
    the exact unconditional eps into the exact conditional one, step for step (respaced "ddpm" included:
    the classifier must be called at the original timesteps)."""
    from ddpm_utils.toy import GaussianMixture

    mix = GaussianMixture(means=[[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], stds=[0.5, 0.7, 0.4], labels=[0, 1, 1])
    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    abar = diffusion.alphas_cumprod.double()
    log_prior = torch.log(torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))

    class Exact(torch.nn.Module):
        num_classes = 2

        def forward(self, x, t, y=None):
            return mix.eps(x.double(), abar[t], y).float()

    def classifier(x, t):  # log p(y | x_t) up to a constant
        return torch.stack([mix.log_prob(x, abar[t], torch.full_like(t, c)) for c in (0, 1)], dim=1) + log_prior

    y, x_T = torch.tensor([0, 1] * 8), torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(sampler=sampler, num_steps=steps, x_T=x_T, generator=torch.Generator().manual_seed(1), progress=False,
              spacing="uniform")  # Exact and the classifier look their schedule up at integer t
    conditional = sample(Exact(), diffusion, x_T.shape, y=y, **kw)
    kw["generator"] = torch.Generator().manual_seed(1)
    guided = sample(Exact(), diffusion, x_T.shape, y=y, guidance_scale=0.0, classifier=classifier, classifier_scale=1.0, **kw)
    torch.testing.assert_close(guided, conditional, atol=1e-4, rtol=1e-4)
    kw["generator"] = torch.Generator().manual_seed(1)
    unconditional = sample(Exact(), diffusion, x_T.shape, y=y, guidance_scale=0.0, classifier=classifier, classifier_scale=0.0, **kw)
    assert (unconditional - conditional).abs().max() > 0.1  # scale 0: the classifier plays no part


def test_classifier_guidance_bad_inputs(diffusion):
    model, clf = LinearEps(T), lambda x, t: x.flatten(1)[:, :3]  # noqa: E731
    with pytest.raises(ValueError, match="classifier_scale=2.0 needs a classifier"):
        sample(model, diffusion, (2, 1, 4, 4), classifier_scale=2.0, progress=False)
    with pytest.raises(ValueError, match="classifier_scale=2.0 needs class labels y"):
        sample(model, diffusion, (2, 1, 4, 4), classifier=clf, classifier_scale=2.0, progress=False)
    clf.schedule = {"name": "linear", "T": 1000}
    with pytest.raises(ValueError, match="trained on x_t of schedule \\{'name': 'linear', 'T': 1000\\}, but the diffusion has"):
        sample(model, diffusion, (2, 1, 4, 4), y=1, classifier=clf, classifier_scale=2.0, progress=False)


# ----- the redesign: samplers as functions over one denoiser, noise levels, spacings -------------------------------
REFERENCE = torch.load(Path(__file__).parent / "data" / "sampler_reference.pt")


# All T = 100 ancestral steps are rerun for eps-prediction (with and without learned variances) only: the other
# objectives' conversions are covered by their shorter cases, and this keeps the test near 8 s.
SKIPPED = {f"{p}/ddpm_all/s{s}" for p in ("v", "x0") for s in (1, 3)} | {"eps_learned/ddpm_all/s1"}


def _recorded_cases():
    """The cases of tests/data/record_sampler_reference.py, rerun with the code of today."""
    source = (Path(__file__).parent / "data" / "record_sampler_reference.py").read_text()
    scope = {"SKIP": SKIPPED}
    exec(compile(source.replace('torch.save(out, "tests/data/sampler_reference.pt")', ""), "record", "exec"), scope)
    return scope["out"]


def test_old_samplers_give_the_samples_recorded_before_the_redesign(monkeypatch):
    """ddpm (all steps and respaced, both variances, learned variances), ddim (eta 0 and 0.7) and dpm-solver++, with
    and without guidance, eps/x0/v predictions, and points with classifier guidance and trajectories: the same numbers
    as the sampler code before the redesign (tests/data/record_sampler_reference.py) for the same seed. eps-prediction
    agrees to float32 rounding; x0 and v to 1e-3, because the old code turned x0 into eps and back in float32, which
    at t = T-1 (sqrt(abar) = 5e-4 for this cosine schedule) lost 4e-4; the new one never divides there."""
    monkeypatch.setitem(DEFAULT_SPACING, "dpm-solver++", "uniform")  # the only spacing before the redesign
    now = _recorded_cases()
    assert now.keys() == REFERENCE.keys() - SKIPPED
    for key, before in ((k, v) for k, v in REFERENCE.items() if k not in SKIPPED):
        tol = 1e-3 if key.startswith(("v/", "x0/")) else 3e-5
        if key.endswith("/t"):
            assert torch.equal(now[key], before), key
        else:
            torch.testing.assert_close(now[key], before, atol=tol, rtol=0, msg=key)


def _unet(prediction="eps"):
    torch.manual_seed(0)
    return UNet(UNetConfig.preset("tiny", num_classes=10)).eval(), GaussianDiffusion.from_schedule("cosine", 100, prediction=prediction)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_euler_is_ddim_with_eta_zero(prediction, spacing):
    """DDIM's step x0 + sigma_next eps is Euler's x + (sigma_next - sigma) eps, since x = x0 + sigma eps (Karras et al. 2022)."""
    model, diffusion = _unet(prediction)
    kw = dict(num_steps=6, y=torch.tensor([1, 2]), guidance_scale=2.0, spacing=spacing, progress=False)
    a = sample(model, diffusion, (2, 1, 28, 28), sampler="euler", generator=torch.Generator().manual_seed(0), **kw)
    b = sample(model, diffusion, (2, 1, 28, 28), sampler="ddim", generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_euler_ancestral_is_ddim_with_the_same_eta_and_noise(eta):
    model, diffusion = _unet()
    kw = dict(num_steps=7, y=3, eta=eta, spacing="karras", progress=False)
    a = sample(model, diffusion, (2, 1, 28, 28), sampler="euler-ancestral", generator=torch.Generator().manual_seed(0), **kw)
    b = sample(model, diffusion, (2, 1, 28, 28), sampler="ddim", generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    c = sample(model, diffusion, (2, 1, 28, 28), sampler="euler-ancestral", generator=torch.Generator().manual_seed(1), **kw)
    assert (a - c).abs().max() > 0.1  # it is stochastic


def test_euler_ancestral_defaults_to_eta_one():
    model, diffusion = _unet()
    kw = dict(num_steps=5, y=3, progress=False, spacing="uniform")
    a = sample(model, diffusion, (2, 1, 28, 28), sampler="euler-ancestral", generator=torch.Generator().manual_seed(0), **kw)
    b = sample(model, diffusion, (2, 1, 28, 28), sampler="ddim", eta=1.0, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def exact_ode():
    """Run a sampler on the exact probability-flow ODE of notebook 10's mixture; the truth is Heun with 1,000 steps."""
    mix, diffusion = notebook_mixture(), GaussianDiffusion.from_schedule("linear", 1000)
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(name, n, spacing, sigma_max=None):
        levels = noise_levels(diffusion, n, spacing, sigma_max=sigma_max)
        return SAMPLERS[name](exact_denoiser(mix), z * (1 + levels[0].item() ** 2) ** 0.5, levels, None)

    return run, {s: run("heun", 1000, "karras", noise_levels(diffusion, 2, s)[0].item()) for s in ("karras", "uniform")}


@pytest.mark.parametrize("spacing", ["karras", "uniform"])
def test_heun_converges_at_second_order_and_euler_at_first_on_the_exact_2d_ode(exact_ode, spacing):
    """Error against the exact ODE solution (from the same start) at 20 and 40 steps: Heun's falls by about 4
    (order 2), Euler's by 2."""
    run, truths = exact_ode
    truth = truths[spacing]
    errors = {name: [(run(name, n, spacing) - truth).norm(dim=1).mean().item() for n in (20, 40)] for name in ("heun", "euler")}
    orders = {name: math.log2(e[0] / e[1]) for name, e in errors.items()}
    assert 1.8 < orders["heun"] < 2.6 and 0.9 < orders["euler"] < 1.1, errors
    assert errors["heun"][1] < errors["euler"][1] / 5


def test_heun_takes_two_evaluations_per_step_but_the_last():
    calls = []
    model, diffusion = _unet()

    def counting(x, t, y=None):
        calls.append(t[0].item())
        return model(x, t, y)

    counting.num_classes = 10
    sample(counting, diffusion, (1, 1, 28, 28), sampler="heun", num_steps=5, y=1, guidance_scale=3.0, progress=False)
    assert len(calls) == 2 * 5 - 1  # guidance batches cond and uncond into one evaluation
    assert calls.count(0) == 2 and calls[-1] == 0  # the last level is the schedule's smallest (t = 0), reached twice...
    assert all(not float(t).is_integer() for t in calls if t != 0)  # ...and the other "karras" levels fall between timesteps


def test_noise_levels():
    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    sigmas = diffusion.sigmas
    uniform = noise_levels(diffusion, 4, "uniform")
    torch.testing.assert_close(uniform, torch.cat([sigmas[[99, 66, 33, 0]], torch.zeros(1, dtype=torch.float64)]))
    assert sigmas[-1] > 1000  # the cosine schedule's last level: "karras" and "logsnr" start at EDM's 80 instead
    for spacing in SPACINGS:
        levels = noise_levels(diffusion, 8, spacing)
        assert levels.shape == (9,) and levels.dtype == torch.float64
        assert levels[0] == (sigmas[-1] if spacing == "uniform" else 80) and levels[-2] == sigmas[0] and levels[-1] == 0
        assert bool((levels[1:] < levels[:-1]).all())
    assert noise_levels(diffusion, 8, "karras", sigma_max=1e9)[0] == sigmas[-1]  # never above the schedule's own
    assert noise_levels(diffusion, 8, "logsnr", sigma_max=5.0)[0] == 5.0
    logsnr = noise_levels(diffusion, 8, "logsnr")[:-1].log()
    torch.testing.assert_close(logsnr.diff(), torch.full((7,), (logsnr[-1] - logsnr[0]).item() / 7, dtype=torch.float64))
    karras = noise_levels(diffusion, 8, "karras")[:-1] ** (1 / 7)  # Karras et al. 2022, Eq. 5: linear in sigma^(1/rho)
    torch.testing.assert_close(karras.diff(), torch.full((7,), (karras[-1] - karras[0]).item() / 7, dtype=torch.float64))
    assert noise_levels(diffusion, 1, "karras").tolist() == [80.0, 0.0]
    with pytest.raises(ValueError, match="sigma_max must lie above the schedule's smallest level"):
        noise_levels(diffusion, 8, "karras", sigma_max=1e-4)
    assert len(noise_levels(diffusion, 300, "karras")) == 301  # between the table's levels, more than T is allowed
    with pytest.raises(ValueError, match=re.escape(f"spacing must be one of {SPACINGS}, got 'even'")):
        noise_levels(diffusion, 8, "even")
    with pytest.raises(ValueError, match="num_steps must be an int in 1..T"):
        noise_levels(diffusion, 300, "uniform")


def test_t_at_and_alpha_sigma_agree_between_and_on_the_timesteps():
    diffusion = GaussianDiffusion.from_schedule("linear", 50)
    sigmas = diffusion.sigmas
    assert [diffusion.t_at(s) for s in sigmas[[0, 7, 49]].tolist()] == [0.0, 7.0, 49.0]  # exactly, on the table
    t = diffusion.t_at((sigmas[7] * sigmas[8]).sqrt().item())  # halfway in log sigma
    assert abs(t - 7.5) < 1e-9
    alpha, sigma = diffusion.alpha_sigma(torch.tensor([7.5, 7.0]))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(2))
    torch.testing.assert_close(sigma[0] / alpha[0], (sigmas[7] * sigmas[8]).sqrt().float())
    torch.testing.assert_close(alpha[1], diffusion.sqrt_alphas_cumprod[7])
    with pytest.raises(ValueError, match="outside this schedule's range"):
        diffusion.t_at(1e6)


@pytest.mark.parametrize("sampler", ["euler", "heun", "euler-ancestral", "ddpm", "dpm-solver++"])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_sampler_and_spacing_lands_on_the_single_data_point(sampler, spacing):
    diffusion = GaussianDiffusion.from_schedule("cosine", T)
    x_star = torch.tensor([-0.8, 0.1, 0.5, 0.9]).view(1, 1, 2, 2)
    out = sample(IdealDenoiser(diffusion, x_star), diffusion, (3, 1, 2, 2), sampler=sampler, spacing=spacing, num_steps=6,
                 generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(out, x_star.expand(3, 1, 2, 2), atol=1e-4, rtol=0)


def test_trajectory_keeps_one_entry_per_level_for_heun():
    model, diffusion = _unet()
    out, traj = sample(model, diffusion, (2, 1, 28, 28), sampler="heun", num_steps=4, y=2, return_trajectory=True,
                       spacing="uniform", progress=False)
    assert traj["t"].tolist() == [99, 66, 33, 0]
    assert traj["x_t"].shape == (4, 2, 1, 28, 28)


def test_a_new_sampler_is_one_function_and_one_entry(monkeypatch):
    """CONTRIBUTING.md's worked example: Euler written as a new sampler, added by name, gives Euler's samples."""

    def my_euler(denoise, x, levels, generator):
        for sigma, sigma_next in level_pairs(levels):
            x = x + (sigma_next - sigma) * denoise(x, sigma).eps
        return x

    monkeypatch.setitem(SAMPLERS, "my-euler", my_euler)  # no DEFAULT_SPACING entry: evenly spaced t
    model, diffusion = _unet()
    kw = dict(num_steps=5, y=4, progress=False, x_T=torch.randn(2, 1, 28, 28))
    torch.testing.assert_close(sample(model, diffusion, (2, 1, 28, 28), sampler="my-euler", **kw),
                               sample(model, diffusion, (2, 1, 28, 28), sampler="euler", spacing="uniform", **kw))
    with pytest.raises(ValueError, match="eta=0.5 is not an option of sampler 'my-euler'"):
        sample(model, diffusion, (2, 1, 28, 28), sampler="my-euler", eta=0.5, **kw)


def test_every_shipped_sampler_has_a_measured_default_spacing():
    assert DEFAULT_SPACING.keys() == SAMPLERS.keys() and set(DEFAULT_SPACING.values()) <= set(SPACINGS)


def test_a_model_that_indexes_by_t_gets_a_clear_error_between_timesteps():
    model, diffusion = LinearEps(T), GaussianDiffusion.from_schedule("cosine", T)
    with pytest.raises(ValueError, match="fractional t = .*spacing='uniform'"):
        sample(model, diffusion, (2, 1, 4, 4), sampler="dpm-solver++", num_steps=5, progress=False)  # "logsnr" by default
    out = sample(model, diffusion, (2, 1, 4, 4), sampler="dpm-solver++", num_steps=5, spacing="uniform", progress=False)
    assert torch.isfinite(out).all()

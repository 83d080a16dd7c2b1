"""Every sampler a small function over one denoiser and an explicit sequence of noise levels (as in k-diffusion, EDM).

| code                        | paper                                                       |
|-----------------------------|-------------------------------------------------------------|
| `ddpm`                      | Ho et al. 2020, Algorithm 2; respaced: Nichol & Dhariwal 2021, Sec. 4 |
| `ddim`                      | Song et al. 2021 (DDIM), Eq. (12), sigma from Eq. (16)      |
| `dpm_solver_pp`             | Lu et al. 2022 (DPM-Solver++), Algorithm 2, "2M"            |
| `euler`, `heun`             | Karras et al. 2022 (EDM), Eq. (3), Algorithm 1              |
| `euler_ancestral`           | k-diffusion's `sample_euler_ancestral` (Crowson)            |
| `noise_levels(..., "karras")` | Karras et al. 2022, Eq. (5)                               |
| sigma (a noise level)       | Karras et al.'s sigma = sqrt((1 - abar) / abar)             |

`sample` builds one denoiser (`denoiser.make_denoiser`) and the levels (`noise_levels`), and runs one function
of SAMPLERS over them. To add a sampler, write one function (denoise, x, levels, generator, **options) -> x at
sigma = 0 and add its name to SAMPLERS (CONTRIBUTING.md). The one-step functions at integer
t that notebooks 06 and 10 derive (`ddpm_step`, `ddim_step`, `dpm_solver_step`, `respace`) live in `steps` and
are importable from here too.
"""

from __future__ import annotations

import inspect
import math

import torch

from .denoiser import make_denoiser, progress_bar
from .diffusion import VARIANCES, GaussianDiffusion, randn
from .steps import RespacedModel, ddim_step, ddpm_step, dpm_solver_step, respace, timestep_pairs  # noqa: F401 (public here too)

# ----- noise levels ------------------------------------------------------------------------------
SPACINGS = ("uniform", "karras", "logsnr")  # how the levels are spread: see `noise_levels`


EDM_SIGMA_MAX = 80.0  # Karras et al. 2022, Table 1: where their samplers start, VP models included


def noise_levels(diffusion, num_steps: int | None = None, spacing: str = "uniform", rho: float = 7.0,
                 sigma_max: float | None = None) -> torch.Tensor:
    """The levels sigma_0 > ... > sigma_{N-1} > sigma_N = 0 that a sampler walks in N = `num_steps` steps, float64
    (N + 1,), from sigma_0 (where x ~ N(0, I) / sqrt(abar) starts) to the schedule's smallest level sigma(0), then 0.

    - "uniform": the levels of evenly spaced code t (`timestep_pairs`: DDPM's and DDIM's steps), from t = T-1; for a
      flow (`flow.FlowMatching`), evenly spaced flow time t from 1 to 0 (`uniform_levels`);
    - "karras": evenly spaced in sigma^(1 / rho), rho = 7 (Karras et al. 2022, Eq. 5): small steps at low noise;
    - "logsnr": evenly spaced in log sigma = -log-SNR / 2 (Lu et al. 2022, DPM-Solver's choice for small images).
    `sigma_max`: the first level of "karras" and "logsnr" (None: the smaller of the schedule's largest level and
    EDM's 80). The cosine schedule's last level is about 2e4, where x_t is pure noise to within 1e-4: steps spent
    above 80 are wasted, and Heun's correction over a step from 2e4 diverges (README, "Samplers").
    """
    T, sigmas = diffusion.num_timesteps, diffusion.sigmas.cpu()
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if spacing == "uniform" and diffusion.process == "flow":
        return diffusion.uniform_levels(num_steps)  # evenly spaced flow time t
    if spacing == "uniform":
        ts = [t for t, _ in timestep_pairs(T, num_steps)]
        return torch.cat([sigmas[ts], torch.zeros(1, dtype=torch.float64)])
    n = T if num_steps is None else num_steps  # between the schedule's levels, more than T of them is allowed
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    s_max = min(sigmas[-1].item(), EDM_SIGMA_MAX if sigma_max is None else sigma_max)
    s_min = sigmas[0].item()
    if not s_min < s_max:
        raise ValueError(f"sigma_max must lie above the schedule's smallest level {s_min:.4g}, got {sigma_max!r}")
    if spacing == "karras":
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        levels = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    else:
        levels = torch.linspace(math.log(s_max), math.log(s_min), n, dtype=torch.float64).exp()
    levels[-1], levels[0] = s_min, s_max  # exactly the ends, whatever the rounding (one step: s_max alone)
    return torch.cat([levels, torch.zeros(1, dtype=torch.float64)])


def level_pairs(levels: torch.Tensor) -> list[tuple[float, float]]:
    """The (sigma, sigma_next) pairs of consecutive levels, as plain floats."""
    values = levels.tolist()
    return list(zip(values[:-1], values[1:], strict=True))


def _noise(x, generator):
    return randn(x.shape, x.device, generator).to(x.dtype)


# ----- the samplers: each a few lines over one denoiser D(x, sigma) -> (x0, eps, var_frac) ---------
# x is x_t / sqrt(abar) = x0 + sigma eps (see `denoiser`); the probability-flow ODE is dx / dsigma = eps.
def ddpm(denoise, x, levels, generator, variance="posterior"):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) on the chain through `levels` (Nichol & Dhariwal 2021,
    Sec. 4, when they are fewer than T): between levels abar -> abar_next, beta = 1 - abar / abar_next.

    x_next ~ N(posterior mean, var) (Eq. 7): mean = x0 + (sigma_next^2 / sigma) eps; var = beta-tilde
    ("posterior"), beta ("beta"), or learned between them (Nichol & Dhariwal 2021, Eq. 15). No noise
    into sigma = 0. One noise draw per step, the last included.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    for sigma, sigma_next in level_pairs(levels):
        x0, eps, var_frac = denoise(x, sigma)
        z = _noise(x, generator)
        abar, abar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
        beta = 1 - abar / abar_next
        beta_tilde = beta * (1 - abar_next) / (1 - abar)  # Eq. (7)
        var = beta_tilde if variance == "posterior" else beta
        x = x0 + sigma_next**2 / sigma * eps
        if sigma_next > 0:
            if var_frac is not None:
                var = torch.exp(var_frac * math.log(beta) + (1 - var_frac) * math.log(beta_tilde))
            x = x + (var / abar_next) ** 0.5 * z  # the chain's noise, in x_t / sqrt(abar_next)
    return x


def ddim(denoise, x, levels, generator, eta=0.0):
    """DDIM (Song et al. 2021, Eq. 12, sigma_t from Eq. 16 scaled by eta), with sigma_up = sigma_t / sqrt(abar_next):
    x_next = x0 + sqrt(sigma_next^2 - sigma_up^2) eps + sigma_up z. eta = 0 is deterministic; eta = 1 is
    ancestral sampling with beta-tilde. One noise draw per step, the last included."""
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    for sigma, sigma_next in level_pairs(levels):
        x0, eps, _ = denoise(x, sigma)
        z = _noise(x, generator)
        sigma_up = eta * sigma_next * (1 - sigma_next**2 / sigma**2) ** 0.5
        x = x0 + max(sigma_next**2 - sigma_up**2, 0.0) ** 0.5 * eps + (sigma_up * z if eta > 0 else 0)
    return x


def euler(denoise, x, levels, generator):
    """Euler's method on the probability-flow ODE dx / dsigma = eps (Karras et al. 2022, Eq. 3 and Algorithm 1
    without its correction): x_next = x + (sigma_next - sigma) eps. For any model this is DDIM with eta = 0."""
    for sigma, sigma_next in level_pairs(levels):
        x = x + (sigma_next - sigma) * denoise(x, sigma).eps
    return x


def heun(denoise, x, levels, generator):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1, no churn): an Euler step, then the
    average of the slopes at both ends; the last step (to sigma = 0) is plain Euler. 2N - 1 evaluations."""
    for sigma, sigma_next in level_pairs(levels):
        d = denoise(x, sigma).eps  # Algorithm 1, line 4: d_i = (x_i - D(x_i; sigma_i)) / sigma_i
        x_next = x + (sigma_next - sigma) * d  # line 5
        if sigma_next > 0:  # lines 6-8: the trapezoidal correction
            x_next = x + (sigma_next - sigma) * (d + denoise(x_next, sigma_next).eps) / 2
        x = x_next
    return x


def euler_ancestral(denoise, x, levels, generator, eta=1.0):
    """k-diffusion's ancestral Euler: an Euler step down to sigma_down, then fresh noise up to sigma_next, with
    sigma_up = min(sigma_next, eta sigma_next sqrt(1 - sigma_next^2 / sigma^2)), sigma_down^2 = sigma_next^2 - sigma_up^2.
    The same step as DDIM with this eta; eta = 1 (the default) is ancestral sampling with beta-tilde."""
    for sigma, sigma_next in level_pairs(levels):
        d = denoise(x, sigma).eps
        z = _noise(x, generator)
        sigma_up = min(sigma_next, eta * sigma_next * (1 - sigma_next**2 / sigma**2) ** 0.5)
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x = x + (sigma_down - sigma) * d + sigma_up * z
    return x


def dpm_solver_pp(denoise, x, levels, generator):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), here with alpha = 1: with h = log(sigma / sigma_next),
    x_next = (sigma_next / sigma) x - (exp(-h) - 1) D, D = x0 on the first step and the last two (first order,
    exactly DDIM: into sigma(0), the largest log-SNR step, and then to x0: the reference's "lower_order_final"),
    else D = (1 + 1 / (2r)) x0 - 1 / (2r) x0_before with r = h_before / h."""
    before = None  # (x0, h) of the previous step
    pairs = level_pairs(levels)
    for i, (sigma, sigma_next) in enumerate(pairs):
        x0 = denoise(x, sigma).x0
        if sigma_next == 0:
            return x0  # the ODE's end point is the denoised estimate
        h = math.log(sigma / sigma_next)
        D = x0
        if before is not None and i < len(pairs) - 2:
            r = before[1] / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * before[0]
        x = sigma_next / sigma * x - math.expm1(-h) * D
        before = (x0, h)
    return x


# The seam for a new sampler: one function (denoise, x, levels, generator, **options) -> x at sigma = 0, and its name here
# (and its spacing in DEFAULT_SPACING, once measured; without an entry it walks evenly spaced t).
SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpm-solver++": dpm_solver_pp, "euler": euler, "heun": heun,
            "euler-ancestral": euler_ancestral}
# The spacing each sampler uses unless told, chosen by the measurements in README.md ("Samplers"): evenly spaced t for the
# first-order samplers (ahead of both others at 5-10 evaluations on the bundled model, paired), log-SNR for DPM-Solver++
# (ahead of evenly spaced t at 10 evaluations, paired), and for Heun EDM's own "karras" (Heun diverges on evenly spaced t of
# the cosine schedule; "karras" and "logsnr" could not be told apart).
DEFAULT_SPACING = {"ddpm": "uniform", "ddim": "uniform", "dpm-solver++": "logsnr", "euler": "uniform", "heun": "karras",
                   "euler-ancestral": "uniform"}


def _labels(y, batch: int, device) -> torch.Tensor | None:
    if y is None:
        return None
    y = torch.full((batch,), y, dtype=torch.long) if isinstance(y, int) else torch.as_tensor(y)
    if y.ndim not in (1, 2) or y.shape[0] != batch:
        raise ValueError(f"y must be an int, labels of shape (B,) = ({batch},) or prompts (B, L) (notebook 12), "
                         f"got {tuple(y.shape)}")
    return y.to(device)


def _device(model, diffusion) -> torch.device:
    device = next(iter(diffusion.buffers())).device
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if param is not None and param.device != device:
        raise ValueError(f"model is on {param.device} but diffusion on {device}; call diffusion.to({str(param.device)!r})")
    return device


@torch.no_grad()
def sample(
    model,
    diffusion,
    shape,
    *,
    sampler="ddim",  # a name in SAMPLERS
    num_steps=50,  # steps walked (levels before 0); None = all T
    eta=None,  # the noise scale of "ddim" and "euler-ancestral" (0 deterministic, 1 = DDPM's posterior); None = 0 and 1
    y=None,
    guidance_scale=1.0,
    generator=None,
    return_trajectory=False,
    progress=True,
    clip_x0=None,  # clip the predicted x0 to the data range [-1, 1] at every step; None = for images, not points or latents
    variance="posterior",  # "ddpm" only: "posterior" (beta-tilde_t) or "beta" (beta_t)
    trajectory_at=None,  # timesteps to record when return_trajectory; None = every level walked
    x_T=None,  # starting noise (B, C, H, W); None = drawn from `generator`
    classifier=None,  # classifier guidance: `classifier(x_t, t) -> logits`, trained on noisy x_t (needs y)
    classifier_scale=0.0,  # its scale: eps - scale sqrt(1 - abar_t) grad log p(y | x_t, t); 0 = off
    spacing=None,  # how the levels are spread: "uniform", "karras" or "logsnr"; None = the sampler's DEFAULT_SPACING
):
    """Draw samples of `shape` (B, C, H, W), or points (B, D): build the denoiser once, pick the levels, run the sampler.

    - `sampler`: "ddpm" (ancestral, Ho et al. 2020; fewer than T steps = a respaced chain, Nichol & Dhariwal 2021;
      a model with learned variances uses them), "ddim" (Song et al. 2021, with `eta`), "dpm-solver++" (Lu et al.
      2022, 2nd-order multistep), "euler", "heun" (Karras et al. 2022, Algorithm 1; 2 evaluations per step but
      the last), "euler-ancestral" (k-diffusion's). Each is a function in SAMPLERS.
    - `num_steps` levels from sigma(T-1) ("uniform") or sigma = 80 ("karras", "logsnr") down to sigma(0), spread by
      `spacing` (`noise_levels`), then a last step to sigma = 0.
    - `y` (int or (B,) labels) with `guidance_scale` s: eps = eps_uncond + s (eps_cond - eps_uncond).
    - `classifier` with `classifier_scale` c > 0: classifier guidance on top (Dhariwal & Nichol 2021, Eq. 14);
      `guidance_scale=0` guides the unconditional model alone.
    - `diffusion`: a `GaussianDiffusion` or a `flow.FlowMatching` path (notebook 11); every sampler runs on both.
    Returns x_0, or (x_0, trajectory) where trajectory is a dict of CPU tensors `t` (K,) (code t: integer, or
    fractional between timesteps for "karras" and "logsnr"), `x_t` (K, B, ...) (what the model saw at each level)
    and `x0_pred` (K, B, ...).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    if len(shape) not in (2, 4):
        raise ValueError(f"shape must be (B, C, H, W) (images) or (B, D) (points), got {tuple(shape)}")
    accepted, options = inspect.signature(SAMPLERS[sampler]).parameters, {}
    for name, value, neutral in (("eta", eta, 0), ("variance", variance, "posterior")):
        if value is not None and name in accepted:
            options[name] = value
        elif value not in (None, neutral):
            raise ValueError(f"{name}={value!r} is not an option of sampler {sampler!r} (its options: "
                             f"{', '.join(list(accepted)[4:]) or 'none'})")
    if clip_x0 is None:  # images live in [-1, 1]; points (notebook 10) and latents (notebook 12) anywhere
        clip_x0 = len(shape) == 4 and not getattr(getattr(model, "config", None), "latent", False)
    device = _device(model, diffusion)
    if classifier_scale and classifier is None:
        raise ValueError(f"classifier_scale={classifier_scale} needs a classifier (e.g. classifier.load_noisy_classifier())")
    trained_on, classifier_diffusion = getattr(classifier, "schedule", None), None
    if classifier_scale and diffusion.process == "flow":  # guided through the classifier's own x_t (make_denoiser)
        if not trained_on:
            raise ValueError("classifier guidance of a flow model needs the classifier's schedule (classifier.schedule), "
                             "to show it x at each level as the diffusion it was trained on")
        classifier_diffusion = GaussianDiffusion.from_schedule(**trained_on).to(device)
    elif classifier_scale and trained_on and diffusion.schedule and trained_on != diffusion.schedule:
        raise ValueError(f"the classifier was trained on x_t of schedule {trained_on}, but the diffusion has {diffusion.schedule}")
    levels = noise_levels(diffusion, num_steps, spacing or DEFAULT_SPACING.get(sampler, "uniform"))
    y = _labels(y, shape[0], device)
    if y is None and guidance_scale != 1:
        raise ValueError(f"guidance_scale={guidance_scale} needs class labels y")
    if y is None and classifier_scale:
        raise ValueError(f"classifier_scale={classifier_scale} needs class labels y (the class to guide towards)")
    if trajectory_at is not None and diffusion.process == "flow":
        raise ValueError("trajectory_at names a DDPM's code timesteps; a flow's trajectory records every level (leave it None)")
    walked = {round(diffusion.t_at(s)) for s in levels[:-1].tolist()}
    trace_at = None if trajectory_at is None else set(trajectory_at)
    if return_trajectory and trace_at is not None and not trace_at & walked:
        raise ValueError(f"trajectory_at={trajectory_at!r} contains none of the timesteps walked")

    x = randn(shape, device, generator) if x_T is None else x_T.to(device)
    if x.shape != tuple(shape):
        raise ValueError(f"x_T must have shape {tuple(shape)}, got {tuple(x.shape)}")
    dtype = torch.float32 if device.type == "mps" else torch.float64  # the sampler's arithmetic (MPS has no float64)
    x = x.to(dtype) / diffusion.scales(levels[0].item())[0]  # x_T / a at the first level: the sampler's x
    trace = {} if return_trajectory else None
    with progress_bar(len(levels) - 1, progress) as bar:
        denoise = make_denoiser(model, diffusion, y=y, guidance_scale=guidance_scale, classifier=classifier,
                                classifier_scale=classifier_scale, clip_x0=clip_x0, trace=trace, trace_at=trace_at,
                                bar=bar, classifier_diffusion=classifier_diffusion)
        x = SAMPLERS[sampler](denoise, x, levels, generator, **options).float()
    if not return_trajectory:
        return x
    ts, x_ts, x0s = zip(*trace.values(), strict=True)
    t = torch.tensor(ts)
    return x, {"t": t.long() if bool((t == t.round()).all()) else t, "x_t": torch.stack(x_ts), "x0_pred": torch.stack(x0s)}

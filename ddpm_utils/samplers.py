"""Reverse-process steps and the one sampling loop: ancestral DDPM, strided DDIM, guidance.

| code                        | paper                                                       |
|-----------------------------|-------------------------------------------------------------|
| `ddpm_step`                 | Ho et al. 2020, Algorithm 2, line 4                         |
| `ddim_step`                 | Song et al. 2021 (DDIM), Eq. (12), sigma from Eq. (16)      |
| `t_prev = -1`               | "before the first step": alpha-bar = 1 (never index [-1])   |
| `respace`                   | Nichol & Dhariwal 2021, Section 4 (fewer ancestral steps)   |
| `dpm_solver_step`           | Lu et al. 2022 (DPM-Solver++), Algorithm 2, "2M"            |

`sample(..., sampler=)` picks one of SAMPLERS; each is a name and one step function.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .diffusion import GaussianDiffusion, extract, randn
from .guidance import classifier_guided_eps, guided_eps


def _alphas_cumprod_prev(diffusion, t_prev: torch.Tensor, x_shape) -> torch.Tensor:
    """alpha-bar at t_prev (B,), with alpha-bar = 1 where t_prev == -1. Returns (B, 1, 1, 1)."""
    abar = extract(diffusion.alphas_cumprod, t_prev.clamp(min=0), x_shape)
    first = (t_prev < 0).reshape(abar.shape)
    return torch.where(first, torch.ones_like(abar), abar)


def ddpm_step(diffusion, eps, t, x_t, noise=None, variance="posterior", clip_x0=False, generator=None, log_var=None):
    """One ancestral step x_t -> x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2 I) (Ho et al. 2020, Algorithm 2).

    `variance`: "posterior" (sigma_t^2 = beta-tilde_t) or "beta" (sigma_t^2 = beta_t); a given
    `log_var` (B, 1, 1, 1) or x_t's shape, a learned log sigma_t^2 (Nichol & Dhariwal 2021), replaces both.
    At t = 0 no noise is added (z = 0 at the paper's t = 1). Returns (x_prev, x0_pred).
    """
    mean, _, log_var, x0_pred = diffusion.p_mean_variance(eps, x_t, t, variance, clip_x0, log_var)
    if noise is None:
        noise = randn(x_t.shape, x_t.device, generator)
    not_last = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))  # (B, 1, 1, 1)
    return mean + not_last * torch.exp(0.5 * log_var) * noise, x0_pred


def ddim_step(diffusion, eps, t, t_prev, x_t, eta=0.0, noise=None, clip_x0=False, generator=None):
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, Eq. 12). Returns (x_prev, x0_pred).

    1. predict x0 from eps (Eq. 12, "predicted x0"); if clipped, recompute eps to match it;
    2. sigma = eta * sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))   (Eq. 16);
    3. x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
    eta = 0 is deterministic; eta = 1 with t_prev = t - 1 is the DDPM step with beta-tilde_t.
    `t_prev = -1` means abar_prev = 1, so the last step returns the predicted x0.
    A learned variance plays no part: DDIM's sigma is chosen by eta (it picks one member of a family
    of processes with the same marginals), not estimated, so only the model's eps (the mean) is used.
    """
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    if t_prev.shape != t.shape or bool((t_prev >= t).any() | (t_prev < -1).any()):
        raise ValueError(f"t_prev must have t's shape {tuple(t.shape)} and satisfy -1 <= t_prev < t")
    # 1. predicted x0 (and the eps that goes with it)
    x0_pred = diffusion.predict_x0_from_eps(x_t, t, eps)
    if clip_x0:
        x0_pred = x0_pred.clamp(-1.0, 1.0)
        eps = diffusion.predict_eps_from_x0(x_t, t, x0_pred)
    # 2. the noise level sigma of Eq. (16), scaled by eta
    abar = extract(diffusion.alphas_cumprod, t, x_t.shape)
    abar_prev = _alphas_cumprod_prev(diffusion, t_prev, x_t.shape)
    sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
    # 3. Eq. (12): predicted x0, direction pointing to x_t, random noise
    direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
    x_prev = abar_prev.sqrt() * x0_pred + direction
    if eta > 0:
        if noise is None:
            noise = randn(x_t.shape, x_t.device, generator)
        x_prev = x_prev + sigma * noise
    return x_prev, x0_pred


def dpm_solver_step(diffusion, x0_pred, t, t_prev, x_t, previous=None):
    """One DPM-Solver++(2M) step x_t -> x_{t_prev} in the data-prediction form (Lu et al. 2022, Algorithm 2).

    With alpha = sqrt(abar), sigma = sqrt(1 - abar) and lambda = log(alpha / sigma), h = lambda_prev - lambda_t:
        x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (exp(-h) - 1) D,
    where D = x0_pred on the first step (first order: exactly DDIM with eta = 0) and afterwards
    D = (1 + 1 / (2r)) x0_pred - 1 / (2r) x0_pred_before, r = h_before / h (second order, using the
    previous step's prediction: `previous` = (x0_pred_before, h_before)). The last step (t_prev = -1,
    sigma = 0) returns x0_pred (first order). Returns (x_prev, (x0_pred, h)) to pass on as `previous`.
    """
    abar = extract(diffusion.alphas_cumprod, t, x_t.shape).double()
    abar_prev = _alphas_cumprod_prev(diffusion, t_prev, x_t.shape).double()
    if bool((t_prev < 0).all()):
        return x0_pred, None  # sigma_prev = 0: the ODE's end point is the predicted data
    lam, lam_prev = 0.5 * torch.log(abar / (1 - abar)), 0.5 * torch.log(abar_prev / (1 - abar_prev))
    h = lam_prev - lam
    D = x0_pred.double()
    if previous is not None:
        x0_before, h_before = previous
        r = h_before / h
        D = (1 + 1 / (2 * r)) * D - 1 / (2 * r) * x0_before.double()
    x_prev = ((1 - abar_prev) / (1 - abar)).sqrt() * x_t.double() - abar_prev.sqrt() * torch.expm1(-h) * D
    return x_prev.to(x_t.dtype), (x0_pred, h)


SAMPLERS = ("ddpm", "ddim", "dpm-solver++")


def timestep_pairs(T: int, num_steps: int | None = None) -> list[tuple[int, int]]:
    """The (t, t_prev) pairs a sampler walks: `num_steps` evenly spaced steps from T-1 down to 0,
    the last pair being (0, -1). `num_steps=None` means all T steps."""
    num_steps = T if num_steps is None else num_steps
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an int in 1..T = 1..{T}, got {num_steps!r}")
    ts = torch.linspace(T - 1, 0, num_steps, dtype=torch.float64).round().long().tolist()
    return list(zip(ts, ts[1:] + [-1], strict=True))


def _labels(y, batch: int, device) -> torch.Tensor | None:
    if y is None:
        return None
    y = torch.full((batch,), y, dtype=torch.long) if isinstance(y, int) else torch.as_tensor(y)
    if y.shape != (batch,):
        raise ValueError(f"y must be an int or a tensor of shape (B,) = ({batch},), got {tuple(y.shape)}")
    return y.to(device)


def _device(model, diffusion) -> torch.device:
    device = diffusion.betas.device
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if param is not None and param.device != device:
        raise ValueError(f"model is on {param.device} but diffusion on {device}; call diffusion.to({str(param.device)!r})")
    return device


class RespacedModel(torch.nn.Module):
    """Calls `model` with the original timestep `timesteps[t]` for step t of a respaced chain."""

    def __init__(self, model, timesteps: torch.Tensor):
        super().__init__()
        self.model, self.num_classes, self.config = model, getattr(model, "num_classes", None), getattr(model, "config", None)
        self.register_buffer("timesteps", timesteps)

    def forward(self, x, t, y=None):
        return self.model(x, self.timesteps.to(t.device)[t], y)


def respace(model, diffusion, num_steps: int):
    """Ancestral sampling with fewer steps (Nichol & Dhariwal 2021, Section 4).

    Keep alpha-bar at the `num_steps` evenly spaced timesteps that DDIM walks, and rebuild the betas
    between them: beta'_i = 1 - abar(t_i) / abar(t_{i-1}). Returns (model', diffusion') for `sample`:
    its ancestral DDPM loop then takes `num_steps` steps, and model' is `model` called at the
    original timesteps. (With the posterior variance this equals DDIM with eta = 1.) Every variance
    of the new chain, a learned one included, is computed from the new betas, as in improved-diffusion.
    """
    ts = sorted(t for t, _ in timestep_pairs(diffusion.num_timesteps, num_steps))
    abar = torch.cumprod(1.0 - diffusion.betas.double().cpu(), 0)[ts]
    betas = 1.0 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    device = diffusion.betas.device
    respaced = GaussianDiffusion(betas, prediction=diffusion.prediction).to(device)
    return RespacedModel(model, torch.tensor(ts, device=device)), respaced


@torch.no_grad()
def sample(
    model,
    diffusion,
    shape,
    *,
    sampler="ddim",  # "ddpm" (ancestral), "ddim" or "dpm-solver++"
    num_steps=50,  # steps walked; None = all T (for "ddpm": fewer than T = a respaced chain)
    eta=0.0,  # DDIM's noise scale: 0 deterministic, 1 = the DDPM posterior; "ddim" only
    y=None,
    guidance_scale=1.0,
    generator=None,
    return_trajectory=False,
    progress=True,
    clip_x0=None,  # clip the predicted x0 to the data range [-1, 1] at every step; None = for images, not points
    variance="posterior",  # "ddpm" only: "posterior" (beta-tilde_t) or "beta" (beta_t)
    trajectory_at=None,  # timesteps to record when return_trajectory; None = every step walked
    x_T=None,  # starting noise (B, C, H, W); None = drawn from `generator`
    classifier=None,  # classifier guidance: `classifier(x_t, t) -> logits`, trained on noisy x_t (needs y)
    classifier_scale=0.0,  # its scale: eps - scale sqrt(1 - abar_t) grad log p(y | x_t, t); 0 = off
):
    """Draw samples of `shape` (B, C, H, W), or points (B, D), from the reverse process: one loop for every sampler.

    - `sampler="ddpm"`: ancestral sampling (Ho et al. 2020, Algorithm 2) over all T steps when
      `num_steps` is None or T, else over a chain respaced to `num_steps` (Nichol & Dhariwal 2021);
      a model with learned variances uses them.
    - `sampler="ddim"` (Song et al. 2021, Eq. 12): `num_steps` evenly spaced steps from T-1, with `eta`.
    - `sampler="dpm-solver++"` (Lu et al. 2022): the 2nd-order multistep ODE solver, first order at
      the first step and at the last two (into t = 0, whose log-SNR step is by far the largest, and
      then to x0): extrapolating across that jump is unstable (the reference code's "lower_order_final").
    - `y` (int or (B,) labels) with `guidance_scale` s: eps = eps_uncond + s (eps_cond - eps_uncond).
    - `classifier` with `classifier_scale` c > 0: classifier guidance on top (Dhariwal & Nichol 2021,
      Eq. 14), applied to the eps every sampler uses; `guidance_scale=0` guides the unconditional model alone.
    - whatever the model predicts (`diffusion.prediction`) is read as eps by `diffusion.read_output`.
    Returns x_0, or (x_0, trajectory) where trajectory is a dict of CPU tensors `t` (K,) (the original
    chain's code t), `x_t` (K, B, ...) (the input of each recorded step) and `x0_pred` (K, B, ...).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if len(shape) not in (2, 4):
        raise ValueError(f"shape must be (B, C, H, W) (images) or (B, D) (points), got {tuple(shape)}")
    if sampler != "ddim" and eta not in (None, 0, 0.0):
        raise ValueError(f"eta={eta} is DDIM's noise scale; use sampler='ddim' (or eta=0 with {sampler!r})")
    if clip_x0 is None:
        clip_x0 = len(shape) == 4  # images live in [-1, 1]; points (notebook 10) anywhere
    if classifier_scale and classifier is None:
        raise ValueError(f"classifier_scale={classifier_scale} needs a classifier (e.g. classifier.load_noisy_classifier())")
    trained_on = getattr(classifier, "schedule", None)
    if classifier_scale and trained_on and diffusion.schedule and trained_on != diffusion.schedule:
        raise ValueError(f"the classifier was trained on x_t of schedule {trained_on}, but the diffusion has {diffusion.schedule}")
    device = _device(model, diffusion)
    original_t = None  # respaced "ddpm": step i of the new chain is original timestep original_t[i]
    if sampler == "ddpm" and num_steps not in (None, diffusion.num_timesteps):
        timestep_pairs(diffusion.num_timesteps, num_steps)  # checks num_steps
        model, diffusion = respace(model, diffusion, num_steps)
        original_t, num_steps = model.timesteps.tolist(), None
    pairs = timestep_pairs(diffusion.num_timesteps, num_steps)
    y = _labels(y, shape[0], device)
    if y is None and guidance_scale != 1:
        raise ValueError(f"guidance_scale={guidance_scale} needs class labels y")
    if y is None and classifier_scale:
        raise ValueError(f"classifier_scale={classifier_scale} needs class labels y (the class to guide towards)")
    classify = classifier if not original_t else (lambda x, t: classifier(x, model.timesteps[t]))  # noqa: E731
    null_label = getattr(model, "num_classes", None)

    x = randn(shape, device, generator) if x_T is None else x_T.to(device)
    if x.shape != tuple(shape):
        raise ValueError(f"x_T must have shape {tuple(shape)}, got {tuple(x.shape)}")
    original = (lambda t: original_t[t]) if original_t else (lambda t: t)  # noqa: E731
    walked = {original(t) for t, _ in pairs}
    record = walked if trajectory_at is None else set(trajectory_at) & walked
    if return_trajectory and not record:
        raise ValueError(f"trajectory_at={trajectory_at!r} contains none of the timesteps walked")
    traj, previous = {"t": [], "x_t": [], "x0_pred": []}, None
    for t_int, t_prev_int in tqdm(pairs, desc="sampling", disable=not progress, leave=False):
        t = torch.full((shape[0],), t_int, device=device, dtype=torch.long)
        t_prev = torch.full_like(t, t_prev_int)
        output = model(x, t, None) if y is None else guided_eps(model, x, t, y, guidance_scale, null_label)
        eps, _, log_var = diffusion.read_output(output, x, t)
        if classifier_scale:
            eps = classifier_guided_eps(classify, x, t, y, eps, classifier_scale, diffusion)
        noise = randn(shape, device, generator)  # drawn at every step, so all samplers share one stream
        if sampler == "ddpm":
            x_prev, x0_pred = ddpm_step(diffusion, eps, t, x, noise, variance, clip_x0, log_var=log_var)
        elif sampler == "ddim":
            x_prev, x0_pred = ddim_step(diffusion, eps, t, t_prev, x, eta or 0.0, noise, clip_x0)
        else:
            x0_pred = diffusion.predict_x0_from_eps(x, t, eps)
            x0_pred = x0_pred.clamp(-1.0, 1.0) if clip_x0 else x0_pred
            final = t_prev_int <= 0  # first order into t = 0 (and then to x0): the last log-SNR step is the largest
            x_prev, previous = dpm_solver_step(diffusion, x0_pred, t, t_prev, x, None if final else previous)
        if return_trajectory and original(t_int) in record:
            traj["t"].append(original(t_int))
            traj["x_t"].append(x.cpu())
            traj["x0_pred"].append(x0_pred.cpu())
        x = x_prev
    if not return_trajectory:
        return x
    return x, {"t": torch.tensor(traj["t"]), "x_t": torch.stack(traj["x_t"]), "x0_pred": torch.stack(traj["x0_pred"])}

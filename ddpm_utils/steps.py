"""One reverse step at integer t, as notebooks 06 and 10 derive them: ancestral DDPM, DDIM, DPM-Solver++(2M),
and respacing. `samplers.sample` runs the same updates through one denoiser (see `samplers`); these work on x_t.

| code                        | paper                                                       |
|-----------------------------|-------------------------------------------------------------|
| `ddpm_step`                 | Ho et al. 2020, Algorithm 2, line 4                         |
| `ddim_step`                 | Song et al. 2021 (DDIM), Eq. (12), sigma from Eq. (16)      |
| `t_prev = -1`               | "before the first step": alpha-bar = 1 (never index [-1])   |
| `respace`                   | Nichol & Dhariwal 2021, Section 4 (fewer ancestral steps)   |
| `dpm_solver_step`           | Lu et al. 2022 (DPM-Solver++), Algorithm 2, "2M"            |
"""

from __future__ import annotations

import torch

from .diffusion import GaussianDiffusion, extract, randn


def timestep_pairs(T: int, num_steps: int | None = None) -> list[tuple[int, int]]:
    """The (t, t_prev) pairs of `num_steps` evenly spaced code t from T-1 down to 0, the last pair being
    (0, -1). `num_steps=None` means all T steps."""
    num_steps = T if num_steps is None else num_steps
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an int in 1..T = 1..{T}, got {num_steps!r}")
    ts = torch.linspace(T - 1, 0, num_steps, dtype=torch.float64).round().long().tolist()
    return list(zip(ts, ts[1:] + [-1], strict=True))


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

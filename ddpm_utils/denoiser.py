"""One denoiser, built once: the network, guidance and what it predicts, seen as D(x, sigma) -> (x0, eps).

Every sampler calls only this (Karras et al. 2022, Sec. 2: "the denoiser D"). It works in their noise-level
parameterisation: at level sigma the sampler's x is x_t / a = x0 + sigma eps, where x_t = a x0 + s eps and
sigma = s / a, so that the probability-flow ODE reads dx / dsigma = (x - D(x; sigma)) / sigma = eps. Only the
process knows (a, s) and the network's time at a level (`scales`, `network_time`): a = sqrt(abar) = 1 / sqrt(1 +
sigma^2) and code t for a `GaussianDiffusion`, a = 1 - t and 1000 t for a `FlowMatching` path (t = sigma / (1 +
sigma)), so the samplers never see which one they walk. Inside, the network is called as it was trained:

1. x_t = a x and the network's time (a DDPM's code t: an integer on the schedule's own levels, else fractional);
2. classifier-free guidance on the output (`guided_eps`), which then reads as (eps, x0) (`PREDICTIONS`);
3. classifier guidance on eps (`classifier_guided_eps`), and x0 from the guided eps;
4. x0 clipped to [-1, 1] if asked, and eps recomputed to match it: eps = (x - x0) / sigma.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .diffusion import PREDICTIONS, split_output
from .guidance import classifier_guided_eps, guided_eps


class Denoised(NamedTuple):
    x0: torch.Tensor  # the denoised estimate D(x; sigma), x's shape
    eps: torch.Tensor  # (x - x0) / sigma: the ODE's direction dx / dsigma
    var_frac: torch.Tensor | None  # a learned variance's interpolation weight in [0, 1] (Nichol & Dhariwal Eq. 15), or None


def make_denoiser(model, diffusion, *, y=None, guidance_scale=1.0, classifier=None, classifier_scale=0.0, clip_x0=False,
                  trace=None, trace_at=None, bar=None, classifier_diffusion=None):
    """D(x, sigma) -> Denoised(x0, eps, var_frac) for `model` on `diffusion` (the module docstring's four stages).

    `classifier_diffusion`: the `GaussianDiffusion` whose x_t the classifier was trained on (None: `diffusion`).
    The classifier sees x at the same noise level in its own scaling, x / sqrt(1 + sigma^2), so a flow model can be
    guided by a classifier trained on a DDPM's x_t (the gradient's chain rule leaves the guided eps unchanged).

    `trace`: a dict; a call at a level whose rounded t is in `trace_at` (None: every level) stores
    (t, x_t, x0) under its sigma, so the last call at each level is kept: the trajectory.
    `bar`: a tqdm bar (`progress_bar`) advanced once per new level.
    """
    null_label = getattr(model, "num_classes", None)
    judge = diffusion if classifier_diffusion is None else classifier_diffusion
    on_own_x_t = judge is diffusion
    judge_range = judge.sigmas[[0, -1]].tolist()
    seen = set()

    def denoise(x: torch.Tensor, sigma: float) -> Denoised:
        alpha, s = diffusion.scales(sigma)
        t_level, t = diffusion.t_at(sigma), _time(diffusion.network_time(sigma), x)
        x_t_exact = alpha * x  # 1. (in the sampler's dtype, for the conversion)
        x_t = x_t_exact.float()  # what the network sees
        try:
            output = model(x_t, t, None) if y is None else guided_eps(model, x_t, t, y, guidance_scale, null_label)  # 2.
        except IndexError as err:
            if t.dtype.is_floating_point:  # a model that looks up its schedule by t, at a level between two timesteps
                raise ValueError(f"the model was called at the fractional t = {t_level:.3f} (the 'karras' and 'logsnr' "
                                 "spacings put levels between timesteps) and failed to index with it; look schedules up with "
                                 "diffusion.alpha_sigma(t), or sample with spacing='uniform'") from err
            raise
        prediction, var_interp = split_output(output, x_t)
        eps, x0 = PREDICTIONS[diffusion.prediction].to_eps_x0(prediction.to(x.dtype), x_t_exact, alpha, s)
        if classifier_scale:  # 3.
            if on_own_x_t:
                x_c, t_c = x_t, t
            else:  # the classifier's own x_t and t at this level (its range's end above it: pure noise either way)
                sigma_c = min(max(sigma, judge_range[0]), judge_range[1])
                x_c, t_c = (x * (1 + sigma_c**2) ** -0.5).float(), _time(judge.t_at(sigma_c), x)
            eps = classifier_guided_eps(classifier, x_c, t_c, y, eps.float(), classifier_scale, judge).to(x.dtype)
            x0 = x - sigma * eps
        if clip_x0:  # 4.
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - x0) / sigma
        if trace is not None and (trace_at is None or round(t_level) in trace_at):
            trace[sigma] = (t_level, x_t.cpu(), x0.float().cpu())
        if bar is not None and sigma not in seen:
            seen.add(sigma)
            bar.update(1)
        var_frac = None if var_interp is None else (var_interp.to(x.dtype) + 1) / 2
        return Denoised(x0, eps, var_frac)

    return denoise


def _time(value: float, x: torch.Tensor) -> torch.Tensor:
    """The network's time for every row of x: integer (long) where it is a whole number (a DDPM's own levels)."""
    t = torch.full((x.shape[0],), value, device=x.device)
    return t.long() if float(value).is_integer() else t


def progress_bar(total: int, enabled: bool):
    """A bar over the noise levels a sampler walks."""
    return tqdm(total=total, desc="sampling", disable=not enabled, leave=False)

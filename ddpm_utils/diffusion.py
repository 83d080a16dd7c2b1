"""The Gaussian diffusion process: forward q, posterior, what the network predicts, losses and the variational bound.

Notation (code vs. Ho et al. 2020). Code time t = 0..T-1 is the paper's t+1.

| code                          | paper                              |
|-------------------------------|------------------------------------|
| `betas[t]`                    | beta_{t+1}                         |
| `alphas_cumprod[t]`           | alpha-bar_{t+1} = prod_{s<=t+1} alpha_s |
| `alphas_cumprod_prev[t]`      | alpha-bar_t (alpha-bar_0 = 1)      |
| `posterior_variance[t]`       | beta-tilde_{t+1} (Eq. 7); 0 at code t = 0 |
| `terms_bpd[:, k]` (bound)     | L_k: L_0 is the decoder NLL, L_1..L_{T-1} the KL terms |

What the network predicts is one option, `prediction`: one entry of the table `PREDICTIONS`, which
holds its training target, its conversion to (eps, x0) and its loss scale, each written with
alpha = sqrt(abar) and sigma = sqrt(1 - abar), so that x_t = alpha x0 + sigma eps:

| `prediction` | the network's output          | source                    |
|--------------|-------------------------------|---------------------------|
| "eps"        | the noise eps                 | Ho et al. 2020, Eq. 11    |
| "x0"         | the clean image x0            | Ho et al. 2020, Sec. 3.2  |
| "v"          | alpha eps - sigma x0          | Salimans & Ho 2022, Sec. 4 |
| "velocity"   | eps - x0 (flow matching's u)  | Lipman et al. 2023; Liu et al. 2023 (`flow`) |

A model with learned variances (`UNetConfig.learned_variance`) outputs 2C channels: the prediction,
then var_interp in [-1, 1] (the paper's v, renamed here so as not to be confused with v-prediction),
which interpolates the log-variance between log beta_t and log beta-tilde_t (Nichol & Dhariwal 2021,
Eq. 15); it is trained with L_hybrid = L_simple + lambda L_vlb.

Samplers see the process through noise levels sigma_edm = sigma / alpha (Karras et al. 2022:
x_t / alpha = x0 + sigma_edm eps): `sigmas` (one per code t), `t_at(sigma_edm)` (the code t of a
level, fractional between two timesteps) and `alpha_sigma(t)` (integer or fractional t).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .schedules import make_betas

VARIANCES = ("posterior", "beta")  # beta-tilde_t (Eq. 7) or beta_t: Ho et al. 2020, Sec. 3.2


class Prediction(NamedTuple):
    """What a network predicts, written with x_t = alpha x0 + sigma eps (alpha = sqrt(abar), sigma = sqrt(1 - abar))."""

    target: Callable  # (x0, eps, alpha, sigma) -> what the network should output
    to_eps_x0: Callable  # (output, x_t, alpha, sigma) -> (eps, x0)
    error_scale: Callable  # snr -> |error of the target|^2 / |error of x0|^2 at the same x_t (for Min-SNR)


# The seam for a new objective: one entry (name -> Prediction). v is a rotation of (eps, x0), so its
# conversion never divides: eps = sigma x_t + alpha v, x0 = alpha x_t - sigma v.
PREDICTIONS = {
    "eps": Prediction(lambda x0, eps, a, s: eps, lambda out, x, a, s: (out, (x - s * out) / a), lambda snr: snr),
    "x0": Prediction(lambda x0, eps, a, s: x0, lambda out, x, a, s: ((x - a * out) / s, out), torch.ones_like),
    "v": Prediction(lambda x0, eps, a, s: a * eps - s * x0, lambda out, x, a, s: (s * x + a * out, a * x - s * out),
                    lambda snr: 1 + snr),
    # x_t = a x0 + s (u + x0), so x0 = (x_t - s u) / (a + s): on the flow path a + s = 1, and x0 = x_t - t u
    "velocity": Prediction(lambda x0, eps, a, s: eps - x0, lambda out, x, a, s: (out + (x - s * out) / (a + s), (x - s * out) / (a + s)),
                           lambda snr: (1 + snr.sqrt()) ** 2),
}
WEIGHTINGS = ("none", "min-snr")  # loss weighting per timestep: none, or Min-SNR-gamma (Hang et al. 2023)
MIN_SNR_GAMMA = 5.0  # Hang et al. 2023's gamma


def extract(a: torch.Tensor, t: torch.Tensor, x_shape) -> torch.Tensor:
    """Look up a[t] for a batch of timesteps t (B,) and reshape to (B, 1, 1, 1) to broadcast over x."""
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    if t.dtype.is_floating_point and bool((t != t.round()).any()):
        raise ValueError("extract needs integer timesteps; for a fractional t use diffusion.alpha_sigma(t)")
    out = a[t.to(a.device, torch.long)]
    return out.reshape(t.shape[0], *([1] * (len(x_shape) - 1)))


def randn(shape, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to `device`.

    Drawing on the generator's device means a CPU generator gives the same numbers whether
    the model runs on the CPU or a GPU.
    """
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ), elementwise, in nats.

    Closed form for two Gaussians (used for every L_{t-1} term, Ho et al. 2020, Eq. 5).
    """
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_ndtr_diff(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, accurate in both tails (uses Phi(b)-Phi(a) = Phi(-a)-Phi(-b))."""
    flip = lo > 0
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(x, mean, log_scale) -> torch.Tensor:
    """log p(x) for data on 256 levels in [-1, 1] under N(mean, exp(log_scale)**2) (Ho et al. 2020, Eq. 13).

    Each level owns the bin [x - 1/255, x + 1/255]; the two end bins extend to -inf and +inf,
    so the probabilities of the 256 levels sum to one. Elementwise, in nats.
    """
    inv_std = torch.exp(-log_scale)
    lo = (x - mean - 1.0 / 255) * inv_std
    hi = (x - mean + 1.0 / 255) * inv_std
    inf = torch.full_like(lo, math.inf)
    lo = torch.where(x < -0.999, -inf, lo)
    hi = torch.where(x > 0.999, inf, hi)
    return _log_ndtr_diff(lo, hi)


def _check_images(x: torch.Tensor, name: str = "x0") -> None:
    if x.ndim not in (2, 4):
        raise ValueError(f"{name} must have shape (B, C, H, W) (images) or (B, D) (points), got {tuple(x.shape)}")


def _check_eps(eps: torch.Tensor, x: torch.Tensor) -> None:
    if eps.shape != x.shape:
        raise ValueError(f"model output must have the input's shape {tuple(x.shape)}, got {tuple(eps.shape)}")


def split_output(model_output: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, var_interp) from a model output: C channels -> (output, None) (fixed variance);
    2C channels -> (the first C, the last C) (learned variance, Nichol & Dhariwal 2021)."""
    C = x.shape[1]
    if model_output.shape == x.shape:
        return model_output, None
    if model_output.ndim == x.ndim and model_output.shape[1] == 2 * C and model_output.shape[2:] == x.shape[2:]:
        return model_output[:, :C], model_output[:, C:]
    raise ValueError(f"model output must have the input's shape {tuple(x.shape)} (or {2 * C} channels with learned "
                     f"variances), got {tuple(model_output.shape)}")


def _null_label(model) -> int:
    num_classes = getattr(getattr(model, "module", model), "num_classes", None)  # looks through a DDP wrapper
    if num_classes is None:
        raise ValueError("label dropout (p_uncond > 0) needs a class-conditional model with a `num_classes` attribute")
    return num_classes


def drop_labels(model, y: torch.Tensor | None, p_uncond: float, generator=None) -> torch.Tensor | None:
    """Each label replaced by the model's null label with probability `p_uncond` (Ho & Salimans 2022): one network
    learns the conditional and the unconditional model. Draws where the generator lives."""
    if y is None or p_uncond == 0:
        return y
    gen_device = y.device if generator is None else generator.device
    drop = torch.rand(y.shape[0], generator=generator, device=gen_device).to(y.device) < p_uncond
    drop = drop.view(-1, *[1] * (y.ndim - 1))  # a prompt (B, L) is dropped whole: the empty prompt
    return torch.where(drop, torch.full_like(y, _null_label(model)), y)


def loss_weight_from_snr(snr: torch.Tensor, prediction: str, weighting: str = "none") -> torch.Tensor:
    """Per-sample weight (B,) of the squared error of `prediction`'s target at signal-to-noise ratios `snr` (B,): 1
    ("none"), or Min-SNR-gamma's min(SNR, gamma) on the x0-error divided by the target's own error scale ("min-snr")."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "none":
        return torch.ones_like(snr)
    return snr.clamp(max=MIN_SNR_GAMMA) / PREDICTIONS[prediction].error_scale(snr)


def _mean_flat_bits(x: torch.Tensor) -> torch.Tensor:
    """Average over all but the batch dimension, converted from nats to bits: (B,)."""
    return x.flatten(1).mean(1) / math.log(2.0)


class GaussianDiffusion(nn.Module):
    """Forward process, posterior and losses for a fixed beta schedule (Ho et al. 2020).

    Every schedule quantity is computed once in float64 and stored as a float32 buffer,
    so `diffusion.to(device)` moves them. `schedule` records how the betas were made
    (name, T, parameters) so checkpoints can rebuild and compare it.
    """

    process = "diffusion"  # TrainConfig.process; the other is flow.FlowMatching

    def __init__(self, betas, schedule: dict | None = None, prediction: str = "eps"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {tuple(PREDICTIONS)}, got {prediction!r}")
        self.prediction = prediction
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1); got min {betas.min().item():.3g}, max {betas.max().item():.3g}")
        self.schedule = dict(schedule) if schedule is not None else None

        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)  # Eq. (7)
        # log(0) at t = 0 is replaced by the next value, as in improved-diffusion (Nichol & Dhariwal 2021).
        floor = posterior_variance[1] if len(betas) > 1 else betas[0]
        posterior_log_variance_clipped = torch.log(torch.cat([floor.reshape(1), posterior_variance[1:]]))

        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            # Eq. (7): mu-tilde = coef1 * x0 + coef2 * x_t
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    @classmethod
    def from_schedule(cls, name: str, T: int, *, prediction: str = "eps", **kw) -> GaussianDiffusion:
        """Build from a named schedule, e.g. `GaussianDiffusion.from_schedule("cosine", 1000)`."""
        return cls(make_betas(name, T, **kw), schedule={"name": name, "T": T, **kw}, prediction=prediction)

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    # ----- noise levels (what the samplers walk) ---------------------------------------------
    @property
    def sigmas(self) -> torch.Tensor:
        """The noise level of each code t, sigma_t = sqrt((1 - abar_t) / abar_t), increasing, float64 (T,)
        (Karras et al. 2022's sigma: x_t / sqrt(abar_t) = x0 + sigma_t eps)."""
        abar = self.alphas_cumprod.double()
        return ((1 - abar) / abar).sqrt()

    def t_at(self, sigma: float) -> float:
        """The code t whose noise level is `sigma`: log sigma interpolated linearly between neighbouring
        timesteps (as k-diffusion does), so a level of the table gives its integer t exactly."""
        sigmas = self.sigmas.tolist()
        if not sigmas[0] <= sigma <= sigmas[-1]:
            raise ValueError(f"sigma={sigma:g} lies outside this schedule's range {sigmas[0]:.4g}..{sigmas[-1]:.4g}")
        hi = bisect.bisect_left(sigmas, sigma)
        if sigmas[hi] == sigma:
            return float(hi)  # one of the schedule's own levels: its integer t, exactly
        lo_log, hi_log = math.log(sigmas[hi - 1]), math.log(sigmas[hi])
        return hi - 1 + (math.log(sigma) - lo_log) / (hi_log - lo_log)

    def scales(self, sigma: float) -> tuple[float, float]:
        """(sqrt(abar), sqrt(1 - abar)) at noise level sigma: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, abar = 1 / (1 + sigma^2)."""
        alpha = (1 + sigma**2) ** -0.5
        return alpha, sigma * alpha

    def network_time(self, sigma: float) -> float:
        """What the network is told at level sigma: its code t (`t_at`), as in training."""
        return self.t_at(sigma)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) at code t (B,), each (B,): integer t looks up the table, a fractional t
        uses the noise level that `t_at` maps to it (log sigma linear between timesteps)."""
        if not t.dtype.is_floating_point or bool((t == t.round()).all()):
            t = t.to(self.alphas_cumprod.device, torch.long)
            return self.sqrt_alphas_cumprod[t], self.sqrt_one_minus_alphas_cumprod[t]
        log_sigmas = self.sigmas.log()
        lo = t.double().floor().long().clamp(0, len(log_sigmas) - 2).to(log_sigmas.device)
        w = t.double().to(log_sigmas.device) - lo
        sigma = ((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).exp()
        alpha = (1 + sigma**2).rsqrt()
        return alpha.float(), (sigma * alpha).float()

    def _check_t(self, t: torch.Tensor, x: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[0],):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a tensor of shape (B,) = ({x.shape[0]},), got {shape}")
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer timesteps, got dtype {t.dtype}")
        if bool(((t < 0) | (t >= self.num_timesteps)).any()):
            raise ValueError(f"t must lie in 0..{self.num_timesteps - 1}, got values {t.min().item()}..{t.max().item()}")

    # ----- forward process -------------------------------------------------------------------
    def q_mean_variance(self, x0, t):
        """Mean, variance and log-variance of q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) (Eq. 4)."""
        self._check_t(t, x0)
        mean = extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
        var = extract(1.0 - self.alphas_cumprod, t, x0.shape)
        return mean, var, torch.log(var)

    def q_sample(self, x0, t, noise=None):
        """Sample x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, eps ~ N(0, I) (Ho et al. 2020, Eq. 4)."""
        _check_images(x0)
        self._check_t(t, x0)
        noise = torch.randn_like(x0) if noise is None else noise
        _check_eps(noise, x0)
        sqrt_abar = extract(self.sqrt_alphas_cumprod, t, x0.shape)  # (B, 1, 1, 1)
        sqrt_one_minus_abar = extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape)
        return sqrt_abar * x0 + sqrt_one_minus_abar * noise

    def q_posterior_mean_variance(self, x0, x_t, t):
        """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, Eqs. 6-7)."""
        self._check_t(t, x_t)
        coef1, coef2 = extract(self.posterior_mean_coef1, t, x_t.shape), extract(self.posterior_mean_coef2, t, x_t.shape)
        mean = coef1 * x0 + coef2 * x_t
        var = extract(self.posterior_variance, t, x_t.shape)
        log_var = extract(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, var, log_var

    def predict_x0_from_eps(self, x_t, t, eps):
        """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): Eq. (4) solved for x0 (Ho et al. 2020, Eq. 15)."""
        self._check_t(t, x_t)
        sqrt_abar = extract(self.sqrt_alphas_cumprod, t, x_t.shape)
        sqrt_one_minus_abar = extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape)
        return (x_t - sqrt_one_minus_abar * eps) / sqrt_abar

    def predict_eps_from_x0(self, x_t, t, x0):
        """eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t): Eq. (4) solved for eps."""
        self._check_t(t, x_t)
        sqrt_abar = extract(self.sqrt_alphas_cumprod, t, x_t.shape)
        sqrt_one_minus_abar = extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape)
        return (x_t - sqrt_abar * x0) / sqrt_one_minus_abar

    # ----- what the network predicts ------------------------------------------------------------
    def v_target(self, x0, t, noise):
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, Sec. 4): PREDICTIONS["v"]'s target."""
        self._check_t(t, x0)
        alpha, sigma = (extract(a, t, x0.shape) for a in (self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod))
        return PREDICTIONS["v"].target(x0, noise, alpha, sigma)

    def predict_x0_from_v(self, x_t, t, v):
        """x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v: the definition of v and Eq. (4), solved for x0."""
        self._check_t(t, x_t)
        return extract(self.sqrt_alphas_cumprod, t, x_t.shape) * x_t - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * v

    def eps_and_x0(self, model_output, x_t, t):
        """(eps, x0) from what the network predicts (`self.prediction`, through `PREDICTIONS`): the one conversion
        every loss, sampler and bound goes through. `model_output` has x_t's shape (the prediction channels only)."""
        _check_eps(model_output, x_t)
        if not t.dtype.is_floating_point:
            self._check_t(t, x_t)
        alpha, sigma = (a.reshape(-1, *([1] * (x_t.ndim - 1))) for a in self.alpha_sigma(t))
        return PREDICTIONS[self.prediction].to_eps_x0(model_output, x_t, alpha, sigma)

    def learned_log_variance(self, var_interp, t, x_shape):
        """log sigma^2 = frac log beta_t + (1 - frac) log beta-tilde_t, frac = (var_interp + 1) / 2 (Nichol & Dhariwal
        2021, Eq. 15, where var_interp is called v).

        var_interp = 1 gives beta_t, -1 the (clipped) posterior variance beta-tilde_t; as in improved-diffusion,
        it is not squashed, so a trained network may step slightly outside the range.
        """
        frac = (var_interp + 1) / 2
        return frac * extract(torch.log(self.betas), t, x_shape) + (1 - frac) * extract(self.posterior_log_variance_clipped, t, x_shape)

    def read_output(self, model_output, x_t, t):
        """(eps, x0, log-variance or None) from a model output, with C channels (fixed variance) or 2C (learned)."""
        prediction, var_interp = split_output(model_output, x_t)
        eps, x0 = self.eps_and_x0(prediction, x_t, t)
        return eps, x0, None if var_interp is None else self.learned_log_variance(var_interp, t, x_t.shape)

    # ----- reverse process p(x_{t-1} | x_t) ----------------------------------------------------
    def p_mean_variance(self, eps, x_t, t, variance: str = "posterior", clip_x0: bool = False, log_var=None):
        """Mean, variance, log-variance of p(x_{t-1} | x_t) and the predicted x0, from a predicted eps.

        The mean is the posterior mean at the predicted x0, which equals Eq. (11) of Ho et al. 2020
        when x0 is not clipped. `variance`: "posterior" (beta-tilde_t) or "beta" (beta_t), Sec. 3.2;
        a given `log_var` (a learned variance, `learned_log_variance`) replaces both.
        """
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        _check_eps(eps, x_t)
        x0_pred = self.predict_x0_from_eps(x_t, t, eps)
        if clip_x0:
            x0_pred = x0_pred.clamp(-1.0, 1.0)
        mean, var, log_var_fixed = self.q_posterior_mean_variance(x0_pred, x_t, t)
        if log_var is not None:
            return mean, torch.exp(log_var), log_var, x0_pred
        if variance == "beta":
            var = extract(self.betas, t, x_t.shape)
            log_var_fixed = torch.log(var)
        return mean, var, log_var_fixed, x0_pred

    # ----- losses --------------------------------------------------------------------------------
    def training_target(self, x0, t, noise):
        """What the network should output for x_t = q_sample(x0, t, noise): eps, x0 or v (`self.prediction`)."""
        alpha, sigma = (extract(a, t, x0.shape) for a in (self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod))
        return PREDICTIONS[self.prediction].target(x0, noise, alpha, sigma)

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t) at timesteps t (B,)."""
        abar = self.alphas_cumprod[t.to(self.alphas_cumprod.device, torch.long)]
        return abar / (1 - abar)

    def loss_weight(self, t, weighting: str = "none") -> torch.Tensor:
        """Per-sample weight (B,) of the squared error of the prediction target.

        The errors of the three targets are multiples of one x0-error: |d eps|^2 = SNR |d x0|^2 and
        |d v|^2 = (1 + SNR) |d x0|^2 at the same x_t. Min-SNR-gamma (Hang et al. 2023) weights the
        x0-error by min(SNR, gamma); divided by each target's own factor, all three targets give
        the same loss for the same x0-error. "none" is the plain squared error of the target.
        """
        return loss_weight_from_snr(self.snr(t), self.prediction, weighting)

    def training_loss(self, model, x0, y=None, p_uncond: float = 0.0, t=None, noise=None, generator=None,
                      loss_weighting: str = "none", hybrid_lambda: float = 0.001):
        """L_simple = E_{t, x0, eps} || eps - eps_theta(x_t, t, y) ||^2 (Ho et al. 2020, Eq. 14; Algorithm 1).

        The target is whatever the network predicts (`training_target`), weighted per timestep by
        `loss_weight(t, loss_weighting)`. With `p_uncond > 0`, each label is replaced by the null
        label with that probability, so one network learns both the conditional and the
        unconditional model (Ho & Salimans 2022). A model with learned variances (2C output
        channels) is trained with L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021,
        Sec. 3.1): L_vlb = T E_t[L_t] in bits/dim (`vb_terms_bpd`), with the mean's gradient
        stopped so that L_vlb trains only the variance. Returns a scalar tensor.
        """
        _check_images(x0)
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond!r}")
        if not hybrid_lambda >= 0:
            raise ValueError(f"hybrid_lambda must be >= 0, got {hybrid_lambda!r}")
        B, device = x0.shape[0], x0.device
        gen_device = device if generator is None else generator.device  # draw where the generator lives
        if t is None:
            t = torch.randint(0, self.num_timesteps, (B,), generator=generator, device=gen_device).to(device)
        if noise is None:
            noise = randn(x0.shape, device, generator)
        y = drop_labels(model, y, p_uncond, generator)
        x_t = self.q_sample(x0, t, noise)
        prediction, var_interp = split_output(model(x_t, t, y).float(), x0)  # float: the bound needs more than bf16
        squared_error = (prediction - self.training_target(x0, t, noise)).square().flatten(1).mean(1)  # (B,)
        loss = (self.loss_weight(t, loss_weighting) * squared_error).mean()
        if var_interp is None:
            return loss
        eps, _ = self.eps_and_x0(prediction.detach(), x_t, t)  # stop-gradient: L_vlb trains only the variance
        vb = self.vb_terms_bpd(eps, x0, x_t, t, log_var=self.learned_log_variance(var_interp, t, x0.shape))
        return loss + hybrid_lambda * self.num_timesteps * vb.mean()

    def prior_bpd(self, x0) -> torch.Tensor:
        """L_T = KL( q(x_T | x_0) || N(0, I) ) in bits per dimension, (B,) (Ho et al. 2020, Eq. 5)."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        mean, _, log_var = self.q_mean_variance(x0, t)
        return _mean_flat_bits(normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(mean)))

    def vb_terms_bpd(self, eps, x0, x_t, t, variance: str = "posterior", clip_x0: bool = False, log_var=None) -> torch.Tensor:
        """One term of the bound per sample, in bits per dimension, (B,) (Ho et al. 2020, Eq. 5).

        For code t >= 1: L_t = KL( q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t) ), a KL between Gaussians.
        For code t == 0: L_0 = -log p(x_0 | x_1), the discretised-Gaussian decoder (Eq. 13).
        `log_var`: a learned log-variance of p (else the fixed `variance`).
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        mean, _, log_var, _ = self.p_mean_variance(eps, x_t, t, variance, clip_x0, log_var)
        kl = _mean_flat_bits(normal_kl(true_mean, true_log_var, mean, log_var))
        nll = _mean_flat_bits(-discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var))
        return torch.where(t == 0, nll, kl)

    @torch.no_grad()
    def variational_bound(self, model, x0, y=None, variance: str = "posterior", clip_x0: bool = False, generator=None,
                          progress: bool = False, max_batch: int = 256):
        """The negative ELBO, -log p(x0) <= L_T + sum_{t>1} L_{t-1} + L_0, in bits per dimension (Eq. 5).

        Evaluates the model at every timestep (T network calls per image), whatever it predicts; a model
        with learned variances uses them, otherwise `variance` is used. Several timesteps share one
        forward pass of at most `max_batch` images. Returns a dict of `total_bpd` (B,), `prior_bpd`
        (B,) = L_T and `terms_bpd` (B, T) with column k = L_k.
        x0 must lie on the 256 levels of 8-bit images scaled to [-1, 1].
        """
        _check_images(x0)
        B, T = x0.shape[0], self.num_timesteps
        per_pass = max(1, max_batch // B)  # timesteps per forward pass
        terms = []
        for start in tqdm(range(0, T, per_pass), desc="bound", disable=not progress, leave=False):
            k = min(per_pass, T - start)
            t = torch.arange(start, start + k, device=x0.device).repeat_interleave(B)  # (k B,): B images per timestep
            x0_k, y_k = x0.repeat(k, 1, 1, 1), None if y is None else y.repeat(k)
            x_t = self.q_sample(x0_k, t, randn(x0_k.shape, x0.device, generator))
            eps, _, log_var = self.read_output(model(x_t, t, y_k), x_t, t)
            terms.append(self.vb_terms_bpd(eps, x0_k, x_t, t, variance, clip_x0, log_var).view(k, B).T)
        terms = torch.cat(terms, dim=1)
        prior = self.prior_bpd(x0)
        return {"total_bpd": terms.sum(dim=1) + prior, "prior_bpd": prior, "terms_bpd": terms}

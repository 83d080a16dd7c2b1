"""Flow matching (Lipman et al. 2023) and rectified flow (Liu et al. 2023): a straight path from data to noise.

The path is x_t = (1 - t) x0 + t z, z ~ N(0, I), with continuous t in [0, 1] (t = 0 data, t = 1 noise), and the
network learns the velocity of the path, u = dx_t / dt = z - x0 (Lipman et al. 2023, Eq. 23 with sigma_min = 0;
Liu et al. 2023, Eq. 1). `FlowMatching` shares `GaussianDiffusion`'s seams, so the rest of the library works on it
unchanged:

- **What the network predicts**: a name in `diffusion.PREDICTIONS`, "velocity" by default. The path is
  x_t = a x0 + s z with a = 1 - t, s = t, the table's form, so the same conversion gives (eps, x0) = (z, x0).
- **Noise levels**: x_t / (1 - t) = x0 + sigma z with sigma = t / (1 - t), Karras et al.'s sigma. The
  denoiser (`denoiser.make_denoiser`) and every sampler walk sigma, so they run on a flow model as they are;
  Euler's method on the flow ODE dx_t / dt = u is the same update as Euler in sigma, and as DDIM (notebook 11).
  t = 1 is sigma = infinity, so the samplers start at t = T_MAX (where x_t differs from z by 1e-4 x0).
- **The network's time** is TIME_SCALE t = 1000 t: the range of DDPM's code t, so the UNet's sinusoidal
  embedding (notebook 03, max period 10000) sees the same frequencies it does for a DDPM (diffusers and
  Stable Diffusion 3 feed 1000 t as well).
- **Training**: the same label dropout for classifier-free guidance; t drawn uniformly or logit-normal
  (Esser et al. 2024, Eq. 19: t = sigmoid(n), n ~ N(m, s^2), m = 0, s = 1), `time_sampling`.

`reflow_pairs` makes the (z, x0) pairs of reflow (Liu et al. 2023, Sec. 2.2): a second model trained on them
(`training_loss(..., noise=z)`) has straighter paths, so one or two Euler steps already give usable samples.
"""

from __future__ import annotations

import torch
from torch import nn

from .diffusion import PREDICTIONS, _check_eps, _check_images, drop_labels, loss_weight_from_snr, randn, split_output
from .samplers import sample

PROCESSES = ("diffusion", "flow")  # TrainConfig.process: a GaussianDiffusion (notebooks 02-10) or a FlowMatching path
TIME_SAMPLINGS = ("uniform", "logit-normal")  # how training draws t (Esser et al. 2024, Sec. 3.1)
TIME_SCALE = 1000.0  # the network is told TIME_SCALE * t
T_MIN, T_MAX = 1e-3, 1 - 1e-4  # the samplers' smallest and largest t (sigma from 1e-3 to 1e4)


def flow_sigma(t: float) -> float:
    """The noise level sigma = t / (1 - t) of flow time t (x_t / (1 - t) = x0 + sigma z)."""
    return t / (1 - t)


class FlowMatching(nn.Module):
    """The straight path x_t = (1 - t) x0 + t z, its loss and its noise levels (module docstring).

    `num_timesteps` is the number of Euler steps `sample(..., num_steps=None)` takes; t itself is continuous.
    """

    process = "flow"

    def __init__(self, prediction: str = "velocity", time_sampling: str = "uniform", num_timesteps: int = 1000):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {tuple(PREDICTIONS)}, got {prediction!r}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be an int >= 1, got {num_timesteps!r}")
        self.prediction, self.time_sampling, self.T = prediction, time_sampling, num_timesteps
        self.register_buffer("t_range", torch.tensor([T_MIN, T_MAX]), persistent=False)  # moves with .to(device)

    @property
    def schedule(self) -> dict:
        """What a checkpoint records to rebuild this process."""
        return {"name": "flow", "T": self.T, "time_sampling": self.time_sampling}

    @property
    def num_timesteps(self) -> int:
        return self.T

    # ----- noise levels (what the samplers walk) ---------------------------------------------
    @property
    def sigmas(self) -> torch.Tensor:
        """The range of noise levels the samplers use, sigma(T_MIN) and sigma(T_MAX), float64 (2,)."""
        return torch.tensor([flow_sigma(T_MIN), flow_sigma(T_MAX)], dtype=torch.float64)

    def t_at(self, sigma: float) -> float:
        """The flow time of noise level sigma: t = sigma / (1 + sigma)."""
        return sigma / (1 + sigma)

    def scales(self, sigma: float) -> tuple[float, float]:
        """(a, s) with x_t = a x0 + s z at level sigma: (1 - t, t)."""
        return 1 / (1 + sigma), sigma / (1 + sigma)

    def network_time(self, sigma: float) -> float:
        """What the network is told at level sigma: TIME_SCALE t."""
        return TIME_SCALE * self.t_at(sigma)

    def uniform_levels(self, num_steps: int | None) -> torch.Tensor:
        """Levels of evenly spaced t, 1 (as T_MAX), 1 - 1/N, ..., 1/N, then 0: the Euler grid of flow papers, float64 (N + 1,)."""
        n = self.T if num_steps is None else num_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        t = torch.linspace(1, 0, n + 1, dtype=torch.float64)
        t[0] = T_MAX
        return t / (1 - t)

    # ----- the path ------------------------------------------------------------------------
    def _t(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[0],):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a tensor of shape (B,) = ({x.shape[0]},), got {shape}")
        if not t.dtype.is_floating_point or bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"flow time t must be a float tensor in [0, 1] (t = 0 data, t = 1 noise), got dtype "
                             f"{t.dtype}, values {t.min().item():g}..{t.max().item():g}")
        return t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0, t, noise=None):
        """x_t = (1 - t) x0 + t z (z = `noise`, drawn if None); t a float tensor (B,) in [0, 1]."""
        _check_images(x0)
        noise = torch.randn_like(x0) if noise is None else noise
        _check_eps(noise, x0)
        t = self._t(t, x0)
        return (1 - t) * x0 + t * noise

    def training_target(self, x0, t, noise):
        """What the network should output for x_t = q_sample(x0, t, noise): z - x0 for "velocity"."""
        t = self._t(t, x0)
        return PREDICTIONS[self.prediction].target(x0, noise, 1 - t, t)

    def eps_and_x0(self, model_output, x_t, t):
        """(eps, x0) = (z, x0) from what the network predicts at flow time t (B,): for "velocity" u,
        x0 = x_t - t u and z = x_t + (1 - t) u (from x_t = x0 + t u)."""
        _check_eps(model_output, x_t)
        t = self._t(t, x_t)
        return PREDICTIONS[self.prediction].to_eps_x0(model_output, x_t, 1 - t, t)

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio (1 - t)^2 / t^2 at flow times t (B,)."""
        return ((1 - t) / t) ** 2

    def sample_t(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """n training times in (0, 1): uniform, or logit-normal t = sigmoid(n), n ~ N(0, 1) (Esser et al. 2024, Eq. 19)."""
        gen_device = device if generator is None else generator.device
        if self.time_sampling == "uniform":
            return torch.rand(n, generator=generator, device=gen_device).to(device)
        return torch.randn(n, generator=generator, device=gen_device).to(device).sigmoid()

    def loss_weight(self, t, weighting: str = "none") -> torch.Tensor:
        """Per-sample weight (B,): 1, or Min-SNR-gamma's min(SNR, gamma) on the x0 error, as `GaussianDiffusion.loss_weight`."""
        return loss_weight_from_snr(self.snr(t), self.prediction, weighting)

    def training_loss(self, model, x0, y=None, p_uncond: float = 0.0, t=None, noise=None, generator=None,
                      loss_weighting: str = "none", hybrid_lambda: float = 0.0):
        """The conditional flow-matching loss E_{t, x0, z} || u_theta(x_t, t, y) - (z - x0) ||^2 (Lipman et al. 2023,
        Eq. 9 on the path of Eq. 23): the same argument list as `GaussianDiffusion.training_loss`, t in [0, 1].

        `noise`: the z of each x0 (reflow trains on fixed pairs); `p_uncond`: label dropout for classifier-free
        guidance. A flow has no learned variance (there is no reverse chain whose variance to learn).
        """
        _check_images(x0)
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond!r}")
        if t is None:
            t = self.sample_t(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = randn(x0.shape, x0.device, generator)
        y = drop_labels(model, y, p_uncond, generator)
        x_t = self.q_sample(x0, t, noise)
        prediction, var_interp = split_output(model(x_t, TIME_SCALE * t, y).float(), x0)
        if var_interp is not None:
            raise ValueError("a flow-matching model has no learned variance: build it with learned_variance=False")
        squared_error = (prediction - self.training_target(x0, t, noise)).square().flatten(1).mean(1)  # (B,)
        return (self.loss_weight(t, loss_weighting) * squared_error).mean()


@torch.no_grad()
def reflow_pairs(model, flow: FlowMatching, shape, *, steps: int = 100, sampler: str = "euler", y=None,
                 guidance_scale: float = 1.0, generator=None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflow's training pairs (Liu et al. 2023, Algorithm 1): noise z of `shape` and the x0 the model's ODE
    takes it to (`steps` steps of `sampler`, evenly spaced in t). Train a second model with
    `flow.training_loss(model2, x0, y, noise=z)`: its path from z is then (nearly) the straight line to x0."""
    if flow.process != "flow":
        raise ValueError("reflow_pairs needs a FlowMatching process (it pairs noise with the flow ODE's end point)")
    device = next(iter(flow.buffers())).device
    z = randn(shape, device, generator)
    x0 = sample(model, flow, shape, sampler=sampler, num_steps=steps, spacing="uniform", x_T=z, y=y,
                guidance_scale=guidance_scale, progress=progress, clip_x0=False)
    return z, x0


def diffusion_abar(t) -> torch.Tensor | float:
    """The DDPM alpha-bar with the same noise level as flow time t: x_t / sqrt((1 - t)^2 + t^2) is a
    variance-preserving x with sqrt(abar) = (1 - t) / sqrt((1 - t)^2 + t^2) (notebook 11)."""
    return (1 - t) ** 2 / ((1 - t) ** 2 + t**2)

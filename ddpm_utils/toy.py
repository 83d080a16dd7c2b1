"""Small models whose answers are known exactly. Lessons and tests check the general code against them.

- `linear_gaussian_elbo`: z ~ N(0, 1), x | z ~ N(z, noise_var); log p(x), the ELBO and its gap in closed form.
- `IdealDenoiser`: the best possible eps prediction when the data are a finite set of images.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .diffusion import normal_kl


def linear_gaussian_posterior(x, noise_var):
    """p(z | x) = N(x / (1 + noise_var), noise_var / (1 + noise_var)) for z ~ N(0, 1), x | z ~ N(z, noise_var)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return x / (1 + noise_var), torch.as_tensor(noise_var / (1 + noise_var), dtype=torch.float64)


def linear_gaussian_elbo(x, q_mean, q_var, noise_var) -> dict:
    """log p(x), ELBO(q) and KL(q || p(z|x)) in nats for q(z) = N(q_mean, q_var), all in closed form.

    ELBO = E_q[log p(x|z)] + E_q[log p(z)] + H[q]  and  log p(x) = ELBO + KL(q || p(z|x)).
    """
    x, m, v = (torch.as_tensor(a, dtype=torch.float64) for a in (x, q_mean, q_var))
    if bool((v <= 0).any()) or noise_var <= 0:
        raise ValueError(f"q_var and noise_var must be > 0, got {q_var!r} and {noise_var!r}")
    log_px = -0.5 * (math.log(2 * math.pi * (1 + noise_var)) + x**2 / (1 + noise_var))  # x ~ N(0, 1 + noise_var)
    expected_log_lik = -0.5 * (math.log(2 * math.pi * noise_var) + ((x - m) ** 2 + v) / noise_var)
    expected_log_prior = -0.5 * (math.log(2 * math.pi) + m**2 + v)
    entropy = 0.5 * torch.log(2 * math.pi * math.e * v)
    post_mean, post_var = linear_gaussian_posterior(x, noise_var)
    kl = normal_kl(m, torch.log(v), post_mean, torch.log(post_var))
    return {"log_px": log_px, "elbo": expected_log_lik + expected_log_prior + entropy, "kl": kl}


class IdealDenoiser(nn.Module):
    """eps*(x_t, t) = E[eps | x_t] when the data are uniform on `data` (N, C, H, W).

    E[x0 | x_t] averages the data images, each weighted by q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)
    (a softmax over -||x_t - sqrt(abar_t) x0||^2 / (2 (1 - abar_t))); eps follows from Eq. (4).
    No network does better on this data; it also reproduces the training set exactly.
    """

    def __init__(self, diffusion, data: torch.Tensor):
        super().__init__()
        if data.ndim != 4:
            raise ValueError(f"data must have shape (N, C, H, W), got {tuple(data.shape)}")
        self.register_buffer("alphas_cumprod", diffusion.alphas_cumprod.double())
        self.register_buffer("data", data.double())

    def x0_weights(self, x, t) -> torch.Tensor:
        """Posterior probability of each data image given x_t: (B, N)."""
        abar = self.alphas_cumprod[t].view(-1, 1)  # (B, 1)
        xf, df = x.double().flatten(1), self.data.flatten(1)  # (B, D), (N, D)
        # ||x_t - sqrt(abar) x0||^2 for every pair, expanded so no (B, N, D) tensor is built
        sq_dist = (xf**2).sum(1, keepdim=True) - 2 * abar.sqrt() * (xf @ df.T) + abar * (df**2).sum(1)  # (B, N)
        return (-sq_dist / (2 * (1 - abar))).softmax(dim=1)

    def forward(self, x, t, y=None):
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        x0 = torch.einsum("bn,nchw->bchw", self.x0_weights(x, t), self.data)  # E[x0 | x_t]
        return ((x.double() - abar.sqrt() * x0) / (1 - abar).sqrt()).to(x.dtype)

"""Small models whose answers are known exactly. Lessons and tests check the general code against them.

- `linear_gaussian_elbo`: z ~ N(0, 1), x | z ~ N(z, noise_var); log p(x), the ELBO and its gap in closed form.
- `IdealDenoiser`: the best possible eps prediction when the data are a finite set of images.
- `GaussianMixture`: points from a mixture of isotropic Gaussians, whose noised density p_t, score and
  E[eps | x_t] are known in closed form at every noise level (the score view, notebook 10), and so is the
  velocity of the flow-matching path (notebook 11).
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
        self.alpha_sigma = diffusion.alpha_sigma  # for a fractional t (samplers' "karras" and "logsnr" levels)

    def _abar(self, t) -> torch.Tensor:
        if t.dtype.is_floating_point and bool((t != t.round()).any()):
            return self.alpha_sigma(t)[0].double() ** 2
        return self.alphas_cumprod[t.long()]

    def x0_weights(self, x, t) -> torch.Tensor:
        """Posterior probability of each data image given x_t: (B, N)."""
        abar = self._abar(t).view(-1, 1)  # (B, 1)
        xf, df = x.double().flatten(1), self.data.flatten(1)  # (B, D), (N, D)
        # ||x_t - sqrt(abar) x0||^2 for every pair, expanded so no (B, N, D) tensor is built
        sq_dist = (xf**2).sum(1, keepdim=True) - 2 * abar.sqrt() * (xf @ df.T) + abar * (df**2).sum(1)  # (B, N)
        return (-sq_dist / (2 * (1 - abar))).softmax(dim=1)

    def forward(self, x, t, y=None):
        abar = self._abar(t).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        x0 = torch.einsum("bn,nchw->bchw", self.x0_weights(x, t), self.data)  # E[x0 | x_t]
        return ((x.double() - abar.sqrt() * x0) / (1 - abar).sqrt()).to(x.dtype)


class GaussianMixture:
    """A mixture of K isotropic Gaussians in D dimensions, optionally one class label per component.

    Noising keeps it a mixture: under x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, component k becomes
    N(sqrt(abar) m_k, (abar s_k^2 + 1 - abar) I). So at every noise level the density p_t, its score
    grad log p_t, E[eps | x_t] = -sqrt(1 - abar) grad log p_t and E[x0 | x_t] (Tweedie's formula) are
    exact: "learned vs exact" becomes a number. `abar` is a float or a (B,) tensor; `y` (B,) keeps the
    components of each row's class, and a row with y = num_classes (the null label) keeps all of them.
    """

    def __init__(self, means, stds, weights=None, labels=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        K = len(self.means)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(K).clone()  # (K,)
        self.weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if self.means.ndim != 2 or K < 1:
            raise ValueError(f"means must have shape (K, D) with K >= 1, got {tuple(self.means.shape)}")
        if not bool((self.stds > 0).all()):
            raise ValueError(f"stds must be > 0, got {self.stds.tolist()}")
        if self.weights.shape != (K,) or not bool((self.weights > 0).all()):
            raise ValueError(f"weights must be K = {K} positive numbers, got {self.weights.tolist()}")
        if self.labels is not None and (self.labels.shape != (K,) or bool((self.labels < 0).any())):
            raise ValueError(f"labels must be K = {K} class indices >= 0, got {self.labels.tolist()}")
        self.weights = self.weights / self.weights.sum()
        self.num_classes = None if self.labels is None else int(self.labels.max()) + 1

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n points x0 (n, D) and the class (or, without labels, the component) of each (n,)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x0 = self.means[k] + self.stds[k, None] * torch.randn(n, self.means.shape[1], dtype=torch.float64, generator=generator)
        return x0, (k if self.labels is None else self.labels[k])

    def _log_components(self, x, abar, y, scales=None):
        """log(w_k N(x; a m_k, v_k I)) (B, K), the centres a m_k (B, K, D) and the variances v_k = a^2 s_k^2 + s^2 (B, K)
        of x = a x0 + s eps: a = sqrt(abar), s = sqrt(1 - abar), or the (a, s) of `scales` ((B, 1) each)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != self.means.shape[1]:
            raise ValueError(f"x must have shape (B, {self.means.shape[1]}), got {tuple(x.shape)}")
        if scales is None:
            abar = torch.as_tensor(abar, dtype=torch.float64).expand(len(x))[:, None]  # (B, 1)
            scales = abar.sqrt(), (1 - abar).sqrt()
        a, s = scales
        centres = a[..., None] * self.means  # (B, K, D)
        var = a**2 * self.stds**2 + s**2  # (B, K)
        log_w = self.weights.log().expand(len(x), -1)
        if y is not None:
            if self.labels is None:
                raise ValueError("this mixture has no labels; call it with y=None")
            y = torch.as_tensor(y, dtype=torch.long).expand(len(x))
            if bool(((y < 0) | (y > self.num_classes)).any()):
                raise ValueError(f"y must lie in 0..{self.num_classes} ({self.num_classes} = null label), got {y.tolist()}")
            keep = (self.labels[None, :] == y[:, None]) | (y[:, None] == self.num_classes)  # (B, K)
            log_w = log_w.masked_fill(~keep, -math.inf)
            log_w = log_w - log_w.logsumexp(1, keepdim=True)  # p(component | y): a proper conditional density
        sq = ((x[:, None, :] - centres) ** 2).sum(-1)  # (B, K)
        log_n = -0.5 * (x.shape[1] * torch.log(2 * math.pi * var) + sq / var)
        return log_w + log_n, centres, var

    def log_prob(self, x, abar, y=None) -> torch.Tensor:
        """log p_t(x) (B,) (or log p_t(x | y)) at noise level abar (abar = 1: the data density)."""
        log_joint, _, _ = self._log_components(x, abar, y)
        return log_joint.logsumexp(1)

    def class_log_probs(self, x, abar) -> torch.Tensor:
        """log p(y | x_t) (B, num_classes) by Bayes' rule: the exact noise-aware classifier of this mixture."""
        if self.labels is None:
            raise ValueError("this mixture has no labels, so no classes to classify")
        log_joint, _, _ = self._log_components(x, abar, None)  # log(w_k N_k(x)) (B, K)
        per_class = [log_joint[:, self.labels == c].logsumexp(1) for c in range(self.num_classes)]  # log p(x_t, y = c)
        return torch.stack(per_class, 1).log_softmax(1)

    def score(self, x, abar, y=None) -> torch.Tensor:
        """grad_x log p_t(x) (B, D): each component's score -(x - centre) / v, weighted by its posterior probability."""
        log_joint, centres, var = self._log_components(x, abar, y)
        resp = log_joint.softmax(1)  # (B, K) which component x_t came from
        x = torch.as_tensor(x, dtype=torch.float64)
        return (resp[..., None] * -(x[:, None, :] - centres) / var[..., None]).sum(1)

    def eps(self, x, abar, y=None) -> torch.Tensor:
        """E[eps | x_t] (B, D) = -sqrt(1 - abar) grad log p_t(x_t): the best possible noise prediction."""
        abar = torch.as_tensor(abar, dtype=torch.float64).expand(len(x))[:, None]
        return -(1 - abar).sqrt() * self.score(x, abar[:, 0], y)

    def posterior_mean(self, x, abar, y=None) -> torch.Tensor:
        """E[x0 | x_t] (B, D) = (x_t + (1 - abar) grad log p_t(x_t)) / sqrt(abar) (Tweedie's formula)."""
        abar = torch.as_tensor(abar, dtype=torch.float64).expand(len(x))[:, None]
        return (torch.as_tensor(x, dtype=torch.float64) + (1 - abar) * self.score(x, abar[:, 0], y)) / abar.sqrt()

    def flow_velocity(self, x, t, y=None) -> torch.Tensor:
        """E[z - x0 | x_t = x] (B, D) on the flow path x_t = (1 - t) x0 + t z (t = 0 data, t = 1 noise): the exact
        marginal velocity, the best possible flow-matching prediction. `t` a float or a (B,) tensor in [0, 1].

        Component k stays Gaussian, N((1 - t) m_k, v_k I) with v_k = (1 - t)^2 s_k^2 + t^2, and within it (x0, z, x_t)
        are jointly Gaussian: E[x0 | x_t, k] = m_k + (1 - t) s_k^2 (x - (1 - t) m_k) / v_k and E[z | x_t, k] =
        t (x - (1 - t) m_k) / v_k. Their difference, averaged with the posterior weights of the components.
        """
        x = torch.as_tensor(x, dtype=torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).expand(len(x))[:, None]  # (B, 1)
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"t must lie in [0, 1] (0 data, 1 noise), got {t.min().item():g}..{t.max().item():g}")
        a = 1 - t
        log_joint, centres, var = self._log_components(x, None, y, scales=(a, t))
        resp = log_joint.softmax(1)  # (B, K)
        offset = (x[:, None, :] - centres) / var[..., None]  # (x - a m_k) / v_k, (B, K, D)
        per_component = (t[..., None] - a[..., None] * self.stds[:, None] ** 2) * offset - self.means  # E[z - x0 | x_t, k]
        return (resp[..., None] * per_component).sum(1)

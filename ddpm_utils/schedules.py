"""Noise schedules beta_1..beta_T (code index 0..T-1), computed in float64.

| schedule  | source                                              | beta_t (code t = 0..T-1)                 |
|-----------|-----------------------------------------------------|------------------------------------------|
| linear    | Ho et al. 2020, Sec. 4 (1e-4 to 0.02 for T = 1000)  | evenly spaced from beta_start to beta_end |
| cosine    | Nichol & Dhariwal 2021, Eq. (17)                    | 1 - abar(t+1)/abar(t), clipped at max_beta |
| quadratic | Ho et al.'s code ("quad")                           | evenly spaced in sqrt(beta), then squared |
| sigmoid   | Xu et al. 2022 (GeoDiff)                            | sigmoid(-6..6) rescaled to the two ends   |

The linear, quadratic and sigmoid schedules take their end points literally: with a
small T and the default ends, alpha-bar_T stays far from 0 (notebook 02 shows this).
"""

from __future__ import annotations

import inspect
import math

import torch


def _check_T(T) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (number of diffusion steps) must be an int >= 1, got {T!r}")


def _check_ends(beta_start: float, beta_end: float) -> None:
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    if beta_start > beta_end:
        raise ValueError(f"beta_start must be <= beta_end, got beta_start={beta_start} > beta_end={beta_end}")


def _checked(betas: torch.Tensor) -> torch.Tensor:
    """Final guard shared by every schedule: all betas strictly inside (0, 1)."""
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"betas must lie in (0, 1); got min {betas.min().item():.3g}, max {betas.max().item():.3g}")
    return betas


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear schedule of Ho et al. 2020 (Sec. 4): (T,) float64 from beta_start to beta_end."""
    _check_T(T)
    _check_ends(beta_start, beta_end)
    return _checked(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def quadratic_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Quadratic schedule (Ho et al.'s code): linear in sqrt(beta), then squared. (T,) float64."""
    _check_T(T)
    _check_ends(beta_start, beta_end)
    return _checked(torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2)


def sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Sigmoid schedule (Xu et al. 2022, GeoDiff): sigmoid over [-6, 6], rescaled. (T,) float64."""
    _check_T(T)
    _check_ends(beta_start, beta_end)
    s = torch.sigmoid(torch.linspace(-6.0, 6.0, T, dtype=torch.float64))
    return _checked(s * (beta_end - beta_start) + beta_start)


def cosine_alphas_cumprod(T: int, s: float = 0.008) -> torch.Tensor:
    """abar(t) = f(t)/f(0), f(t) = cos^2(((t/T) + s)/(1 + s) * pi/2) (Nichol & Dhariwal 2021, Eq. 17).

    Returns (T + 1,) float64 values at t = 0..T (before any clipping of the betas).
    """
    _check_T(T)
    if not (isinstance(s, (int, float)) and 0.0 <= s < 1.0):
        raise ValueError(f"s (cosine offset) must lie in [0, 1), got {s!r}")
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule: beta_t = 1 - abar(t)/abar(t-1), clipped at max_beta (Nichol & Dhariwal 2021, Eq. 17).

    The clipping stops beta_T from reaching 1 (abar(T) = 0), which would make the last step singular.
    """
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
    abar = cosine_alphas_cumprod(T, s)
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    return _checked(betas)


SCHEDULES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
}


def make_betas(name: str, T: int, **kw) -> torch.Tensor:
    """Betas of the named schedule ("linear", "cosine", "quadratic" or "sigmoid"), (T,) float64.

    Keyword arguments go to the schedule function; one it does not take raises `ValueError`.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    fn = SCHEDULES[name]
    allowed = [p for p in inspect.signature(fn).parameters if p != "T"]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(f"schedule {name!r} takes {allowed}, not {unknown}")
    return fn(T, **kw)

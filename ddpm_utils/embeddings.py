"""Sinusoidal timestep embedding (Vaswani et al. 2017, Sec. 3.5; used by Ho et al. 2020) and its MLP.

Convention (CONTRIBUTING.md): emb = cat([sin(t * w), cos(t * w)], dim=-1) with
w_i = max_period ** (-i / half), i = 0..half-1, half = dim // 2. This equals diffusers'
`get_timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=0)`.
"Attention is all you need" interleaves sin and cos instead; that is the same numbers, permuted.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """Embed timesteps t (B,) as (B, dim) sines and cosines of geometrically spaced frequencies.

    For odd `dim` the last column is zero.
    """
    if not isinstance(t, torch.Tensor) or t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor of shape (B,), got {getattr(t, 'shape', type(t).__name__)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"dim must be an int >= 2, got {dim!r}")
    if not max_period > 1:
        raise ValueError(f"max_period must be > 1, got {max_period!r}")
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=t.device)
    w = torch.exp(-math.log(max_period) * i / half)  # (half,) frequencies, w_0 = 1
    args = t.float()[:, None] * w[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """t (B,) -> sinusoidal (B, dim) -> Linear -> SiLU -> Linear -> (B, out_dim), as in Ho et al.'s UNet."""

    def __init__(self, dim: int, out_dim: int, max_period: float = 10000):
        super().__init__()
        self.dim, self.max_period = dim, max_period
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim, self.max_period))  # (B, out_dim)

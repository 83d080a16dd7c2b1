"""Reference models shared by the tests: exact denoisers for data on a few points."""

import torch
from torch import nn


class OracleEps(nn.Module):
    """The Bayes-optimal noise prediction E[eps | x_t] when the data are uniform on `points` (N, C, H, W).

    E[x0 | x_t] is a softmax-weighted average of the points, with weights from the Gaussian
    likelihood q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I); eps follows from Eq. (4).
    """

    def __init__(self, diffusion, points):
        super().__init__()
        self.abar = diffusion.alphas_cumprod.double()
        self.points = points.double()

    def forward(self, x, t, y=None):
        abar = self.abar[t].view(-1, 1, 1, 1, 1)  # (B, 1, 1, 1, 1)
        diff = x.double()[:, None] - abar.sqrt() * self.points[None]  # (B, N, C, H, W)
        logw = -(diff**2).flatten(2).sum(-1) / (2 * (1 - abar.view(-1, 1)))  # (B, N)
        x0 = torch.einsum("bn,nchw->bchw", logw.softmax(dim=1), self.points)
        abar = abar[:, 0]
        return ((x.double() - abar.sqrt() * x0) / (1 - abar).sqrt()).to(x.dtype)


class LinearEps(nn.Module):
    """A fixed, deterministic stand-in for a network: eps = a(t) * x + b, with a(t) depending on t."""

    def __init__(self, T):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.rand(T, generator=g) * 0.5
        self.b = 0.1

    def forward(self, x, t, y=None):
        return self.a[t].view(-1, 1, 1, 1) * x + self.b

"""Points instead of images: the same diffusion, loss and sampler on (B, D) data, and the PointMLP."""

import pytest
import torch
from torch import nn

from ddpm_utils.diffusion import GaussianDiffusion
from ddpm_utils.points import PointMLP, PointMLPConfig
from ddpm_utils.samplers import sample
from ddpm_utils.toy import GaussianMixture

MIX = GaussianMixture(means=[[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]], stds=0.3, labels=[0, 0, 1, 1])


class ExactEps(nn.Module):
    """The mixture's exact E[eps | x_t]: a perfect model, to test the sampler alone."""

    num_classes = 2

    def __init__(self, diffusion):
        super().__init__()
        self.register_buffer("alphas_cumprod", diffusion.alphas_cumprod.double())

    def forward(self, x, t, y=None):
        return MIX.eps(x.double(), self.alphas_cumprod[t], y).float()


@pytest.mark.parametrize("sampler, steps", [("ddim", 20), ("ddpm", None), ("dpm-solver++", 20)])
def test_sampling_points_with_the_exact_eps_reproduces_the_mixture(sampler, steps):
    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    g = torch.Generator().manual_seed(0)
    kw = dict(sampler=sampler, num_steps=steps, spacing="uniform", progress=False)  # ExactEps looks abar up at integer t
    points = sample(ExactEps(diffusion), diffusion, (2000, 2), generator=g, **kw)
    real, _ = MIX.sample(200_000, generator=g)
    # the average log-likelihood under the true density of real points (-entropy, from 200,000 of them), within
    # four standard errors of the 2,000 samples' mean
    ll, ll_real = MIX.log_prob(points.double(), 1.0), MIX.log_prob(real, 1.0)
    assert abs(ll.mean() - ll_real.mean()) < 4 * (ll.var() / 2000) ** 0.5
    conditional = sample(ExactEps(diffusion), diffusion, (500, 2), y=1, generator=g, **kw)
    assert (conditional[:, 1].abs() > 1).float().mean() > 0.99  # class 1: the blobs at (0, +-2)
    clipped = sample(ExactEps(diffusion), diffusion, (500, 2), clip_x0=True, generator=g, **kw)
    assert clipped.abs().max() <= 1.0 + 1e-6  # clipping is for images in [-1, 1]; points are not clipped by default


def test_point_mlp_learns_the_exact_eps_in_seconds():
    torch.manual_seed(0)
    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    model = PointMLP(PointMLPConfig(num_classes=2))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    x0, y = MIX.sample(2000, generator=g)
    t = torch.randint(0, 100, (2000,), generator=g)
    x_t = diffusion.q_sample(x0.float(), t, torch.randn(2000, 2, generator=g))

    def error():  # mean squared distance between learned and exact eps, over t
        with torch.no_grad():
            return ((model(x_t, t).double() - MIX.eps(x_t.double(), diffusion.alphas_cumprod[t].double())) ** 2).sum(1).mean()

    before = error()
    for _ in range(400):
        batch, labels = MIX.sample(256, generator=g)
        loss = diffusion.training_loss(model, batch.float(), labels, p_uncond=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert error() < 0.2 * before
    assert model(x_t[:3], t[:3], torch.tensor([0, 1, 2])).shape == (3, 2)  # 2 = the null label


def test_point_mlp_rejects_bad_input():
    model = PointMLP(PointMLPConfig(num_classes=2))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        model(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        model(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        PointMLP()(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match="learned_variance=False"):
        PointMLPConfig(learned_variance=True)

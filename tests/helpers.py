"""A stand-in model and a comparison shared by the tests."""

import torch
from torch import nn


class LinearEps(nn.Module):
    """A fixed, deterministic stand-in for a network: eps = a(t) * x + b, with a(t) depending on t."""

    def __init__(self, T):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.rand(T, generator=g) * 0.5
        self.b = 0.1

    def forward(self, x, t, y=None):
        return self.a[t].view(-1, 1, 1, 1) * x + self.b


def predicting(prediction, eps_model, diffusion):
    """`eps_model` rewritten to output x0 or v (or eps) with the same answers: x0 from its eps at x_t."""

    def model(x_t, t, y=None):
        eps = eps_model(x_t, t, y)
        x0 = diffusion.predict_x0_from_eps(x_t, t, eps)
        return {"eps": eps, "x0": x0, "v": diffusion.v_target(x0, t, eps)}[prediction]

    return model


def weights_equal(a, b):
    """Do two models hold exactly the same weights and buffers?"""
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

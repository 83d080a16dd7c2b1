"""Classifier-free guidance (Ho & Salimans 2022), and classifier guidance (Dhariwal & Nichol 2021).

Convention (CONTRIBUTING.md): eps = eps_uncond + s * (eps_cond - eps_uncond).
s = 1 is the plain conditional model, s = 0 the unconditional one, and Ho & Salimans'
guidance weight is w = s - 1 (their Eq. 6: (1 + w) eps_cond - w eps_uncond).

The same combination applies to whatever the network predicts (eps, x0 or v): at a fixed x_t each
is an affine function of eps, and (1 - s) a + s b has weights summing to one, so combining the
predictions and then converting equals converting and then combining eps. A learned variance
(extra output channels) is not guided; it is taken from the conditional prediction, as in GLIDE.
"""

from __future__ import annotations

import torch


def guided_eps(model, x, t, y, guidance_scale: float, null_label: int | None) -> torch.Tensor:
    """Guided noise prediction (Ho & Salimans 2022, Eq. 6 with w = guidance_scale - 1).

    x (B, C, H, W), t (B,), y (B,) class labels; `null_label` is the label meaning "no class"
    (`model.num_classes`). Scales 1 and 0 need one plain forward pass; any other scale runs
    the conditional and unconditional predictions as one batch of 2B and splits it.
    """
    if y is None:
        raise ValueError("guidance needs class labels y of shape (B,); got y=None")
    if guidance_scale == 1:
        return model(x, t, y)
    if null_label is None:
        raise ValueError("guidance_scale != 1 needs the model's null label (a class-conditional model)")
    y_null = torch.full_like(y, null_label)
    if guidance_scale == 0:
        return model(x, t, y_null)
    cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null])).chunk(2)
    C = x.shape[1]  # guide the prediction channels; keep a learned variance's channels from `cond`
    guided = uncond[:, :C] + guidance_scale * (cond[:, :C] - uncond[:, :C])
    return torch.cat([guided, cond[:, C:]], dim=1)


def classifier_guided_eps(classifier, x, t, y, eps, scale: float, diffusion) -> torch.Tensor:
    """Classifier guidance (Dhariwal & Nichol 2021, Eq. 14; Algorithm 2 for DDIM):
    eps - scale * sqrt(1 - abar_t) * grad_x log p_phi(y | x_t, t).

    Since eps = -sqrt(1 - abar_t) * score, subtracting this adds scale * grad log p_phi(y | x_t) to the
    score: the score of p(x_t) p_phi(y | x_t)^scale. `classifier(x, t) -> logits` (B, num_classes) must
    be trained on noisy x_t (an ordinary classifier fails on them, notebook 07). Works for images and
    points, and with every sampler (it only changes the eps a step uses). scale 0 returns eps unchanged.
    """
    if y is None or y.shape != (x.shape[0],):
        raise ValueError(f"classifier guidance needs labels y of shape (B,) = ({x.shape[0]},), got {getattr(y, 'shape', y)}")
    if eps.shape[0] != x.shape[0] or eps.shape[1:] != x.shape[1:]:
        raise ValueError(f"eps must have x's shape {tuple(x.shape)}, got {tuple(eps.shape)}")
    if scale == 0:
        return eps
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        log_probs = classifier(x_in, t).log_softmax(dim=-1)  # (B, num_classes)
        if int(y.min()) < 0 or int(y.max()) >= log_probs.shape[1]:
            raise ValueError(f"labels must lie in 0..{log_probs.shape[1] - 1}, got {y.min().item()}..{y.max().item()}")
        selected = log_probs[torch.arange(len(y), device=y.device), y].sum()  # the rows are independent
        grad = torch.autograd.grad(selected, x_in)[0]  # grad_x log p_phi(y | x_t, t), (B, ...)
    sigma = diffusion.alpha_sigma(t)[1].reshape(-1, *([1] * (x.ndim - 1)))  # sqrt(1 - abar_t), t integer or fractional
    return eps - scale * sigma * grad

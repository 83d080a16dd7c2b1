"""Classifier-free guidance (Ho & Salimans 2022).

Convention (DESIGN.md): eps = eps_uncond + s * (eps_cond - eps_uncond).
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

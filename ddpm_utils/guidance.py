"""Classifier-free guidance (Ho & Salimans 2022).

Convention (DESIGN.md): eps = eps_uncond + s * (eps_cond - eps_uncond).
s = 1 is the plain conditional model, s = 0 the unconditional one, and Ho & Salimans'
guidance weight is w = s - 1 (their Eq. 6: (1 + w) eps_cond - w eps_uncond).
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
    eps_cond, eps_uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null])).chunk(2)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

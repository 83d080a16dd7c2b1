"""The README's figures, made from the bundled model by `python -m ddpm_utils figures [--out images]`.

- `schedules.png`: alpha-bar_t of the four noise schedules;
- `forward.png`: one digit noised by the linear and the cosine schedule at the same t;
- `samples.png`: 100 samples, row k asks for digit k (guidance scale 3, 50 DDIM steps);
- `guidance.png`: one row per digit, one column per guidance scale (0, 1, 2, 3, 5, 7), same noise per row;
- `denoising.gif`: x_t and the predicted x0 while ten digits are sampled (ancestral, respaced to 50 steps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import viz
from .checkpoints import load_pretrained
from .data import load_mnist
from .diffusion import GaussianDiffusion
from .samplers import sample
from .schedules import SCHEDULES, make_betas
from .training import sample_grid

GUIDANCE_SCALES = (0, 1, 2, 3, 5, 7)


def schedules_figure(T: int = 1000):
    fig = viz.new_figure(figsize=(6, 3.2))
    ax = fig.subplots()
    for name in SCHEDULES:
        ax.plot(range(1, T + 1), GaussianDiffusion(make_betas(name, T)).alphas_cumprod.numpy(), label=name)
    ax.set(xlabel="t", ylabel="alpha-bar_t (signal kept)", title=f"Noise schedules, T = {T}")
    ax.legend()
    fig.tight_layout()
    return fig


def forward_figure(image: torch.Tensor, T: int = 1000, num: int = 9, seed: int = 0):
    """`image` (1, 28, 28) noised with the same noise by the linear (top) and cosine (bottom) schedule."""
    ts = torch.linspace(0, T - 1, num).round().long()
    noise = torch.randn((1, *image.shape), generator=torch.Generator().manual_seed(seed)).expand(num, *image.shape)
    rows = [GaussianDiffusion.from_schedule(name, T).q_sample(image.expand(num, *image.shape), ts, noise) for name in ("linear", "cosine")]
    fig = viz.new_figure(figsize=(1.1 * num, 2.7))
    axes = fig.subplots(2, num)
    for r, (name, frames) in enumerate(zip(("linear", "cosine"), rows, strict=True)):
        for c, (frame, t) in enumerate(zip(frames, ts.tolist(), strict=True)):
            axes[r, c].imshow(viz.image_grid(frame[None], pad=0).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(f"t = {t + 1}", fontsize=9)
        axes[r, 0].set_ylabel(name)
    fig.tight_layout()
    return fig


def guidance_grid(model, diffusion, steps: int = 50, scales=GUIDANCE_SCALES, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """(10 * len(scales), C, H, W): row k asks for digit k at every scale, from the same noise
    (`progress`: a bar over the scales)."""
    c, size = model.config.in_channels, model.config.image_size
    x_T = torch.randn(10, c, size, size, generator=torch.Generator().manual_seed(seed))
    columns = [sample(model, diffusion, x_T.shape, num_steps=steps, y=torch.arange(10), guidance_scale=float(s), x_T=x_T,
                      progress=False).cpu() for s in tqdm(scales, desc="guidance scales", disable=not progress, leave=False)]
    return torch.stack(columns, 1).flatten(0, 1)  # (10, n, ...) -> row-major grid


def guidance_figure(grid: torch.Tensor, scales=GUIDANCE_SCALES):
    """The guidance grid of `guidance_grid`, labelled with the digits (rows) and the scales (columns)."""
    fig = viz.show_images(grid, nrow=len(scales), scale=1.0)
    ax = fig.axes[0]
    ax.set_axis_on()
    ax.set_xticks(29 * np.arange(len(scales)) + 15, [f"s = {s}" for s in scales])
    ax.set_yticks(29 * np.arange(10) + 15, [str(k) for k in range(10)])
    ax.tick_params(length=0)
    return fig


def make_figures(out="images", steps: int = 50, gif_steps: int = 50, device="cpu") -> list[Path]:
    """Write every README figure into `out`; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, diffusion = load_pretrained("mnist", device=device)
    paths = []

    def save(fig, name):
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        paths.append(out / name)

    save(schedules_figure(), "schedules.png")
    save(forward_figure(load_mnist(train=False, source="bundled")[7][0]), "forward.png")
    images = sample_grid(model, diffusion, steps)
    save(viz.show_images(images, nrow=10, title=f"Samples of the bundled model (guidance scale 3, {steps} DDIM steps)"), "samples.png")
    fig = guidance_figure(guidance_grid(model, diffusion, steps))
    fig.axes[0].set_title("Classifier-free guidance: one digit per row, one scale per column")
    save(fig, "guidance.png")
    _, trajectory = sample(model, diffusion, (10, 1, 28, 28), sampler="ddpm", num_steps=gif_steps, y=torch.arange(10),
                           guidance_scale=3.0, return_trajectory=True, generator=torch.Generator().manual_seed(0), progress=False)
    paths.append(viz.save_gif(trajectory, out / "denoising.gif", nrow=10, scale=2))
    return paths

"""The README's figures, made from the bundled model by `python -m ddpm_utils figures [--out images]`.

- `schedules.png`: alpha-bar_t of the four noise schedules;
- `forward.png`: one digit noised by the linear and the cosine schedule at the same t;
- `samples.png`: 100 samples, row k asks for digit k (guidance scale 3, 50 DDIM steps);
- `guidance.png`: one row per digit, one column per guidance scale (0, 1, 2, 3, 5, 7), same noise per row;
- `unconditional.png`: 100 unconditional samples (the null label, no guidance, 50 DDIM steps);
- `denoising.gif`: x_t and the predicted x0 while ten digits are sampled (ancestral, respaced to 50 steps).

`learning_curve` scores the snapshots a training run kept (`train --keep-every`) and `learning_curve_figure`
draws FD, KID and accuracy against the training step (`python -m ddpm_utils learning-curve RUN`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import viz
from .checkpoints import load_checkpoint, load_pretrained
from .data import load_mnist
from .diffusion import GaussianDiffusion
from .latent import condition, load_decoder, to_pixels
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


def guidance_grid(model, diffusion, steps: int = 50, scales=GUIDANCE_SCALES, seed: int = 0, progress: bool = False,
                  autoencoder=None) -> torch.Tensor:
    """(10 * len(scales), C, H, W): row k asks for digit k at every scale, from the same noise
    (`progress`: a bar over the scales). A latent model's samples are decoded by its `autoencoder`."""
    c, size = model.config.in_channels, model.config.image_size
    x_T = torch.randn(10, c, size, size, generator=torch.Generator().manual_seed(seed))
    y = condition(model, torch.arange(10))
    columns = [to_pixels(sample(model, diffusion, x_T.shape, num_steps=steps, y=y, guidance_scale=float(s), x_T=x_T,
                                progress=False), autoencoder).cpu()
               for s in tqdm(scales, desc="guidance scales", disable=not progress, leave=False)]
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


def make_figures(out="images", steps: int = 50, gif_steps: int = 50, device="cpu", checkpoint=None) -> list[Path]:
    """Write every README figure into `out`; returns the paths. With a `checkpoint` (a diffusion or a flow model
    of MNIST digits, in pixels or latents, with labels or prompts), its sample figures only (samples, guidance,
    unconditional, denoising animation; a latent model's decoded by its autoencoder)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    autoencoder = None
    if checkpoint is None:
        (model, diffusion), name = load_pretrained("mnist", device=device), "the bundled model"
        info = {"channels": 1, "image_size": 28, "class_names": [str(d) for d in range(10)]}
    else:
        ckpt, name = load_checkpoint(checkpoint, use_ema=True, map_location=device), Path(checkpoint).name
        model, diffusion, info = ckpt.model.eval(), ckpt.diffusion, ckpt.dataset
        autoencoder = load_decoder(ckpt.autoencoder, device=device)
    if (info["channels"], info["image_size"], len(info["class_names"] or [])) != (1, 28, 10):
        raise ValueError(f"the figures show class-conditional 1 x 28 x 28 digits; {name} makes {info['channels']} x "
                         f"{info['image_size']} x {info['image_size']} images of {len(info['class_names'] or [])} classes "
                         "(use `ddpm sample` for it)")
    shape = (model.config.in_channels, model.config.image_size, model.config.image_size)  # a latent model's: the latent's
    paths = []

    def save(fig, name):
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        paths.append(out / name)

    if checkpoint is None:
        save(schedules_figure(), "schedules.png")
        save(forward_figure(load_mnist(train=False, source="bundled")[7][0]), "forward.png")
    images = sample_grid(model, diffusion, steps, autoencoder=autoencoder)
    save(viz.show_images(images, nrow=10, title=f"Samples of {name} (guidance scale 3, {steps} DDIM steps)"), "samples.png")
    fig = guidance_figure(guidance_grid(model, diffusion, steps, autoencoder=autoencoder))
    fig.axes[0].set_title("Classifier-free guidance: one digit per row, one scale per column")
    save(fig, "guidance.png")
    images = to_pixels(sample(model, diffusion, (100, *shape), num_steps=steps, generator=torch.Generator().manual_seed(0),
                              progress=False), autoencoder)
    save(viz.show_images(images, nrow=10, title=f"Unconditional samples of {name} ({steps} DDIM steps)"), "unconditional.png")
    _, trajectory = sample(model, diffusion, (10, *shape), sampler="ddpm", num_steps=gif_steps, y=condition(model, torch.arange(10)),
                           guidance_scale=3.0, return_trajectory=True, generator=torch.Generator().manual_seed(0), progress=False)
    if autoencoder is not None:  # each frame decoded: the noisy latent x_t and the x0 prediction
        trajectory = {**trajectory, **{key: torch.stack([to_pixels(frame, autoencoder).cpu() for frame in trajectory[key]])
                                       for key in ("x_t", "x0_pred")}}
    paths.append(viz.save_gif(trajectory, out / "denoising.gif", nrow=10, scale=2))
    return paths


def learning_curve(run_dir, num: int = 200, steps: int = 50, scales=(0.0, 1.0), seed: int = 0, device="cpu",
                   progress: bool = True) -> tuple[list[dict], dict]:
    """Score every snapshot a run kept (`run_dir/step_*.pt`, written by `train --keep-every`) the same way: `num`
    samples per guidance scale (0 = unconditional), `steps` DDIM steps, the same noise for every snapshot.

    Returns (rows, real): one row per (snapshot, scale) with "step" and "scale" added to `Evaluator.score`'s
    numbers, and the real-digit row at the same n. Rows are kept in `run_dir/learning_curve.json`, so a rerun
    after more training scores only the new snapshots (or settings)."""
    from .evaluation import Evaluator, generate

    run_dir = Path(run_dir)
    snapshots = sorted(run_dir.glob("step_*.pt"))
    if not snapshots:
        raise FileNotFoundError(f"no snapshots (step_*.pt) in {run_dir}: train with --keep-every N to keep them")
    cache_file = run_dir / "learning_curve.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    evaluator = Evaluator(device)
    rows = []
    for path in tqdm(snapshots, desc="snapshots", disable=not progress):
        ckpt = None
        for scale in scales:
            key = f"{path.name} n={num} steps={steps} s={scale:g} seed={seed}"
            if key not in cache:
                ckpt = ckpt or load_checkpoint(path, use_ema=True, map_location=device)
                images, labels, seconds = generate(ckpt.model.eval(), ckpt.diffusion, num, steps=steps, guidance_scale=float(scale),
                                                   conditional=scale != 0, seed=seed)
                cache[key] = {"step": ckpt.step, "scale": scale, "seconds": seconds, **evaluator.score(images, labels)}
                cache_file.write_text(json.dumps(cache, indent=1))
            rows.append(cache[key])
    return rows, evaluator.score_real(num, seed)


def learning_curve_figure(rows: list[dict], real: dict):
    """FD, KID and accuracy of `learning_curve`'s rows against the training step, one line per guidance scale,
    with real digits at the same n as a dashed line (the best a model can reach at this n)."""
    fig = viz.new_figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    for scale in sorted({r["scale"] for r in rows}):
        mine = sorted((r for r in rows if r["scale"] == scale), key=lambda r: r["step"])
        label = "unconditional (s = 0)" if scale == 0 else f"s = {scale:g}"
        x = [r["step"] for r in mine]
        axes[0].plot(x, [r["fd"] for r in mine], "o-", label=label)
        axes[1].plot(x, [r["kid"] for r in mine], "o-", label=label)
        if scale != 0:  # unconditional samples ask for no digit
            axes[2].plot(x, [100 * r["accuracy"] for r in mine], "o-", label=label, color=axes[0].lines[-1].get_color())
    for ax, value, name in ((axes[0], real["fd"], "FD"), (axes[1], real["kid"], "KID"), (axes[2], 100 * real["accuracy"], "accuracy (%)")):
        ax.axhline(value, color="gray", ls="--", label=f"real digits (n = {real['n']})")
        ax.set(xlabel="training step", ylabel=name, title=f"{name} against training step")
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.tight_layout()
    return fig

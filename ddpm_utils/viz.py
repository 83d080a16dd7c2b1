"""Figures for the notebooks, including every widget callback (each returns a matplotlib Figure).

The callbacks are plain functions, so tests call them directly and notebooks hand them to
`ipywidgets.interact`. Each figure is closed in pyplot before it is returned: it is shown once,
by whatever displays the returned value (a notebook cell or a widget), and a widget redraw
leaves no open figures behind.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .diffusion import GaussianDiffusion
from .embeddings import sinusoidal_embedding
from .schedules import make_betas
from .toy import linear_gaussian_elbo, linear_gaussian_posterior


def new_figure(**kw) -> Figure:
    """A pyplot figure (so notebooks render it inline) that pyplot no longer tracks."""
    fig = plt.figure(**kw)
    plt.close(fig)
    return fig


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 1) -> torch.Tensor:
    """Tile images (B, C, H, W) in [-1, 1] into one (H', W', C) array in [0, 1] for `imshow`."""
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    B, C, H, W = images.shape
    ncol = min(nrow, B)
    nrows = math.ceil(B / ncol)
    grid = torch.ones(C, nrows * (H + pad) + pad, ncol * (W + pad) + pad)
    for i, img in enumerate(images.detach().float().cpu().clamp(-1, 1)):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = (img + 1) / 2
    return grid.permute(1, 2, 0).squeeze(-1)


def show_images(images: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, scale: float = 0.8):
    """Show a grid of images in [-1, 1]; returns the Figure (a new one unless `ax` is given)."""
    grid = image_grid(images, nrow)
    if ax is None:
        ax = new_figure(figsize=(scale * grid.shape[1] / 29 + 0.4, scale * grid.shape[0] / 29 + 0.6)).subplots()
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax.figure


def _error_figure(message: str) -> Figure:
    """A figure that shows `message`, drawn on an axes with its frame hidden: IPython draws no image for a figure
    without axes, so text on the figure alone never reaches the notebook."""
    fig = new_figure(figsize=(8, 1.2))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", color="crimson", wrap=True, transform=ax.transAxes)
    return fig


def elbo_explorer(q_mean: float = 0.0, q_log_var: float = 0.0, x: float = 1.5, noise_var: float = 0.5) -> Figure:
    """Widget callback (notebook 01): q(z) = N(q_mean, exp(q_log_var)) against the true posterior p(z | x)
    of z ~ N(0, 1), x | z ~ N(z, noise_var); bars show log p(x), the ELBO and the gap KL(q || p(z|x))."""
    q_var = math.exp(q_log_var)
    out = linear_gaussian_elbo(x, q_mean, q_var, noise_var)
    post_mean, post_var = (v.item() for v in linear_gaussian_posterior(x, noise_var))
    fig = new_figure(figsize=(10, 3.6), layout="constrained")
    ax_d, ax_b = fig.subplots(1, 2, width_ratios=[1.6, 1])
    z = np.linspace(-4, 4, 400)
    for mean, var, label, style in [(post_mean, post_var, "true posterior p(z | x)", "-"), (q_mean, q_var, "q(z)", "--")]:
        ax_d.plot(z, np.exp(-((z - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var), style, label=label)
    ax_d.set(xlabel="z", ylabel="density", title=f"x = {x}: q against the posterior")
    ax_d.legend(loc="upper left")
    values = [out["log_px"].item(), out["elbo"].item()]
    ax_b.bar(["log p(x)", "ELBO(q)"], values, color=["tab:green", "tab:blue"])
    ax_b.set(ylabel="nats", title=f"gap = KL(q || p(z|x)) = {out['kl'].item():.3f}")
    ax_b.set_ylim(min(min(values) - 0.5, -4), 0)
    return fig


def schedule_explorer(schedule: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                      s: float = 0.008, image: torch.Tensor | None = None, num_frames: int = 8, seed: int = 0) -> Figure:
    """Widget callback (notebook 02): alpha-bar_t and log-SNR of a schedule, and `image` (1, H, W) in [-1, 1]
    noised at `num_frames` evenly spaced t with the same noise every redraw. Invalid parameters are
    reported in the figure instead of raising, so a slider never leaves a traceback."""
    kw = {"s": s} if schedule == "cosine" else {"beta_start": beta_start, "beta_end": beta_end}
    try:
        diffusion = GaussianDiffusion(make_betas(schedule, T, **kw))
    except ValueError as e:
        return _error_figure(f"{schedule} schedule: {e}")
    abar = diffusion.alphas_cumprod.double().numpy()
    t_axis = range(1, T + 1)  # the paper's t
    fig = new_figure(figsize=(11, 5.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.4, 1])
    ax_a, ax_s = top.subplots(1, 2)
    params = ", ".join(f"{k}={v:g}" for k, v in kw.items())
    ax_a.plot(t_axis, abar)
    ax_a.set(xlabel="t", ylabel="alpha-bar_t", title=f"{schedule}, T={T}: alpha-bar_T = {abar[-1]:.2e}", ylim=(-0.02, 1.02))
    ax_s.plot(t_axis, np.log(abar / (1 - abar)))
    ax_s.set(xlabel="t", ylabel="log SNR", title=f"log SNR = log(abar / (1 - abar)), {params}")
    if image is not None:
        ts = torch.linspace(0, T - 1, num_frames).round().long()
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((1, *image.shape), generator=g).expand(num_frames, *image.shape)
        frames = diffusion.q_sample(image.expand(num_frames, *image.shape), ts, noise)
        for ax, frame, t in zip(bottom.subplots(1, num_frames), frames, ts.tolist(), strict=True):
            ax.imshow(((frame + 1) / 2).clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"t={t + 1}", fontsize=9)
            ax.set_axis_off()
    return fig


def embedding_explorer(dim: int = 64, max_period: float = 10000, T: int = 1000) -> Figure:
    """Widget callback (notebook 03): the sinusoidal embeddings of t = 0..T-1 as a heatmap, and their
    cosine-similarity matrix (how alike the embeddings of two timesteps are)."""
    try:
        emb = sinusoidal_embedding(torch.arange(T), dim, max_period)  # (T, dim)
    except ValueError as e:
        return _error_figure(str(e))
    unit = emb / emb.norm(dim=1, keepdim=True)
    emb, similarity = emb.numpy(), (unit @ unit.T).numpy()
    fig = new_figure(figsize=(11, 4.2), layout="constrained")
    ax_e, ax_s = fig.subplots(1, 2)
    im = ax_e.imshow(emb, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
    ax_e.set(xlabel="dimension (sin | cos)", ylabel="t", title=f"embedding, dim={dim}, max_period={max_period:g}")
    fig.colorbar(im, ax=ax_e)
    im = ax_s.imshow(similarity, cmap="viridis", vmin=-1, vmax=1)
    ax_s.set(xlabel="t", ylabel="t'", title="cosine similarity of emb(t), emb(t')")
    fig.colorbar(im, ax=ax_s)
    return fig


def loss_figure(history, val_history=(), window: int = 50) -> Figure:
    """The training loss per step (faint) and its moving average over `window` steps, on a log scale;
    with `val_history`, also the fixed-grid loss on training images and on held-out images (markers).

    `history` is the list of (step, loss) and `val_history` the list of (step, training-image loss,
    held-out loss) that `training.train` returns and passes to its callback. Held-out loss rising while
    the training-image loss falls is over-fitting.
    """
    fig = new_figure(figsize=(7, 3))
    ax = fig.subplots()
    if len(history):
        steps, losses = np.asarray(history, dtype=float).T
        ax.semilogy(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="loss per step")
        w = max(1, min(window, len(losses)))
        ax.semilogy(steps[w - 1:], np.convolve(losses, np.ones(w) / w, mode="valid"), color="tab:blue", label=f"mean of {w} steps")
    if len(val_history):
        steps, on_train, held_out = np.asarray(val_history, dtype=float).T
        ax.semilogy(steps, on_train, "o-", color="tab:green", ms=3, label="training images (fixed t, noise)")
        ax.semilogy(steps, held_out, "s-", color="tab:red", ms=3, label="held-out images (same t, noise)")
    if len(history) or len(val_history):
        ax.legend(loc="upper right", fontsize=8)
    ax.set(xlabel="step", ylabel="loss (MSE of the target)", title="Training and validation loss" if len(val_history) else "Training loss")
    fig.tight_layout()
    return fig


def unet_diagram(model) -> Figure:
    """The UNet drawn as a U (notebook 04): one box per module in forward order, at the height of its
    output resolution and labelled with its kind and output channels, a line along the forward path
    and an arc for every skip connection. Shapes come from one forward pass with hooks, so the drawing
    is the model itself and cannot drift from it."""
    from .unet import Block, Downsample, Upsample

    cfg = model.config
    parts = ([("input_conv", model.input_conv)] + [(f"down[{i}]", m) for i, m in enumerate(model.down)]
             + [(f"mid[{i}]", m) for i, m in enumerate(model.mid)] + [(f"up[{i}]", m) for i, m in enumerate(model.up)]
             + [("out", model.out)])
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
             for name, m in parts]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size, device=device),
                  torch.zeros(1, dtype=torch.long, device=device))
    finally:
        for h in hooks:
            h.remove()

    def kind(m):
        if isinstance(m, Block):
            return "res + attn" if m.attn is not None else "res"
        return {Downsample: "down", Upsample: "up"}.get(type(m), "conv")

    level = {name: round(math.log2(cfg.image_size / shapes[name][-1])) for name, _ in parts}
    fig = new_figure(figsize=(0.62 * len(parts) + 1, 1.1 * max(level.values()) + 2.4))
    ax = fig.subplots()
    ax.plot(range(len(parts)), [-level[n] for n, _ in parts], color="gray", lw=1, zorder=1)
    for x, (name, m) in enumerate(parts):
        colour = {"res": "#cfe2f3", "res + attn": "#f9cb9c", "down": "#d9ead3", "up": "#d9ead3"}.get(kind(m), "#eeeeee")
        ax.text(x, -level[name], f"{kind(m)}\n{shapes[name][1]}", ha="center", va="center", fontsize=7, zorder=3,
                bbox=dict(boxstyle="round", fc=colour, ec="gray"))
    # skips: the input conv and every down module push their output; every up Block pops one (LIFO)
    stack, position = [], {name: x for x, (name, _) in enumerate(parts)}
    for name, m in parts:
        if name == "input_conv" or name.startswith("down"):
            stack.append(name)
        elif name.startswith("up") and isinstance(m, Block):
            source = stack.pop()
            if shapes[source][-1] != shapes[name][-1]:
                raise RuntimeError(f"skip {source} -> {name} joins sizes {shapes[source]} and {shapes[name]}")
            ax.annotate("", xy=(position[name], -level[name] + 0.25), xytext=(position[source], -level[source] + 0.25),
                        arrowprops=dict(arrowstyle="->", color="tab:blue", lw=0.8, connectionstyle="arc3,rad=-0.15"))
    sizes = sorted({(level[n], shapes[n][-1]) for n, _ in parts})
    ax.set(yticks=[-lv for lv, _ in sizes], yticklabels=[f"{px}x{px}" for _, px in sizes], xticks=[],
           xlim=(-0.8, len(parts) - 0.2), ylim=(-max(level.values()) - 0.7, 1.3), ylabel="feature-map size")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"UNet: {len(parts)} modules, channels in the boxes; arcs are the skip connections "
                 f"({sum(p.numel() for p in model.parameters()):,} parameters)", fontsize=9)
    fig.tight_layout()
    return fig


def _check_trajectory(trajectory: dict) -> int:
    if not {"t", "x_t", "x0_pred"} <= set(trajectory) or trajectory["x_t"].ndim != 5:
        raise ValueError("expected the trajectory dict of sample(..., return_trajectory=True): t (K,), x_t and x0_pred (K, B, C, H, W)")
    return len(trajectory["t"])


def trajectory_frame(trajectory: dict, k: int = 0, nrow: int = 8) -> Figure:
    """Recorded step k of a sampling trajectory: the noisy x_t (left) and the predicted x0 (right)
    for every sample. The widget callback that scrubs through t. Titles give the paper's t = code t + 1."""
    K = _check_trajectory(trajectory)
    if not 0 <= k < K:
        raise ValueError(f"k must be in 0..{K - 1}, got {k}")
    fig = new_figure(figsize=(9, 2.2 * math.ceil(trajectory["x_t"].shape[1] / nrow) + 0.6))
    left, right = fig.subplots(1, 2)
    t = int(trajectory["t"][k]) + 1  # the paper's t
    show_images(trajectory["x_t"][k], nrow, title=f"x_t at t = {t}", ax=left)
    show_images(trajectory["x0_pred"][k], nrow, title=f"predicted x_0 at t = {t}", ax=right)
    return fig


def trajectory_strip(trajectory: dict, index: int = 0, num: int = 8) -> Figure:
    """One sample's trajectory at `num` evenly chosen recorded steps: x_t on top, predicted x0 below
    (titles give the paper's t = code t + 1)."""
    K = _check_trajectory(trajectory)
    picks = np.unique(np.linspace(0, K - 1, min(num, K)).round().astype(int))
    fig = new_figure(figsize=(1.3 * len(picks), 3.0))
    axes = fig.subplots(2, len(picks), squeeze=False)
    for col, k in enumerate(picks):
        for row, key in enumerate(("x_t", "x0_pred")):
            ax = axes[row, col]
            ax.imshow(image_grid(trajectory[key][k, index: index + 1]).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title(f"t = {int(trajectory['t'][k]) + 1}", fontsize=9)
    axes[0, 0].set_ylabel("x_t")
    axes[1, 0].set_ylabel("predicted x_0")
    fig.tight_layout()
    return fig


def save_gif(trajectory: dict, path, nrow: int = 8, scale: int = 3, ms_per_frame: int = 80, hold_ms: int = 1500):
    """Write the trajectory's x_t (left) and predicted x0 (right), one frame per recorded step, to an
    animated GIF at `path`; the last frame is held for `hold_ms`. Returns the path."""
    from pathlib import Path

    from PIL import Image

    K = _check_trajectory(trajectory)
    frames = []
    for k in range(K):
        noisy, clean = image_grid(trajectory["x_t"][k], nrow), image_grid(trajectory["x0_pred"][k], nrow)
        pair = torch.cat([noisy, torch.ones(noisy.shape[0], 4), clean], dim=1)  # a white gap between the two
        img = Image.fromarray((pair.numpy() * 255).round().astype(np.uint8), mode="L")
        frames.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[ms_per_frame] * (K - 1) + [hold_ms], loop=0)
    return path


def guided_samples(model, diffusion, digit: int = 3, guidance_scale: float = 3.0, n: int = 8, steps: int = 20,
                   seed: int | None = None) -> Figure:
    """n fresh samples of `digit` at `guidance_scale` (DDIM, `steps` steps): the guidance widget's callback."""
    from .samplers import sample

    if not 0 <= digit < (model.num_classes or 0):
        return _error_figure(f"digit must be 0..{(model.num_classes or 1) - 1}, got {digit}")
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    images = sample(model, diffusion, (n, model.config.in_channels, model.config.image_size, model.config.image_size),
                    num_steps=steps, y=digit, guidance_scale=guidance_scale, generator=generator, progress=False)
    return show_images(images, nrow=n, title=f"digit {digit}, guidance scale s = {guidance_scale:g} (w = {guidance_scale - 1:g})")


def plane_grid(lim: float, n: int) -> torch.Tensor:
    """The n x n points of a regular grid over [-lim, lim]^2, row by row: (n * n, 2), float64."""
    axis = torch.linspace(-lim, lim, n, dtype=torch.float64)
    return torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)


def score_field(mix, diffusion, t: int = 0, model=None, y: int | None = None, lim: float = 3.5, n: int = 19, ax=None) -> Figure:
    """The noised density p_t of a 2-D `GaussianMixture` (shaded) and its exact score (black arrows) at code
    timestep `t`; with a `model`, its learned score -eps_theta / sqrt(1 - abar_t) too (orange): the score widget.
    Draws into `ax` if given (and returns its figure)."""
    if not 0 <= t < diffusion.num_timesteps:
        return _error_figure(f"t must be 0..{diffusion.num_timesteps - 1}, got {t}")
    abar = diffusion.alphas_cumprod.double()[t]
    density = mix.log_prob(plane_grid(lim, 121), abar, y).exp().reshape(121, 121)
    pts = plane_grid(lim, n)  # (n * n, 2): where the arrows start
    arrows = {"exact score": (mix.score(pts, abar, y), "black")}
    if model is not None:
        tt = torch.full((len(pts),), t, dtype=torch.long)
        labels = None if y is None else torch.full_like(tt, y)
        with torch.no_grad():
            eps = model(pts.float(), tt, labels).double()
        arrows["learned score"] = (-eps / (1 - abar).sqrt(), "tab:orange")
    return _field(density, pts, arrows, lim, n, f"t = {t + 1} (paper), abar = {abar:.3f}", ax)


def _field(density, pts, arrows: dict, lim: float, n: int, title: str, ax=None) -> Figure:
    """A density (shaded, on a square grid over [-lim, lim]^2) and arrows {label: ((n * n, 2) vectors at `pts`,
    colour)}, all rescaled alike so that the longest spans one grid cell: the score and velocity widgets."""
    if ax is None:
        ax = new_figure(figsize=(4.6, 4.4)).add_subplot()
    ax.imshow(density.numpy(), extent=(-lim, lim, -lim, lim), origin="lower", cmap="Blues")
    scale = max(v.norm(dim=1).max().item() for v, _ in arrows.values()) / (2 * lim / n)
    for label, (v, colour) in arrows.items():
        ax.quiver(pts[:, 0], pts[:, 1], v[:, 0], v[:, 1], color=colour, angles="xy", scale_units="xy", scale=scale,
                  width=0.004, label=label)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="$x_1$", ylabel="$x_2$", aspect="equal", title=title)
    ax.legend(loc="lower left", fontsize=8)
    return ax.figure


def point_samples(sets: dict, mix=None, lim: float = 3.5, title: str | None = None) -> Figure:
    """Scatter plots of point sets (name -> (N, 2) tensor) side by side, over the data density of `mix` if given."""
    fig = new_figure(figsize=(3.3 * len(sets), 3.4))
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    density = None if mix is None else mix.log_prob(plane_grid(lim, 101), 1.0).exp().reshape(101, 101).numpy()  # once, for every panel
    for ax, (name, pts) in zip(axes, sets.items(), strict=True):
        if density is not None:
            ax.imshow(density, extent=(-lim, lim, -lim, lim), origin="lower", cmap="Greys", alpha=0.5)
        pts = torch.as_tensor(pts).detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=3, color="tab:blue")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=name, xlabel="$x_1$")
    axes[0].set_ylabel("$x_2$")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.92) if title else None)
    return fig


def flow_field(mix, t: float = 0.5, model=None, y: int | None = None, lim: float = 3.5, n: int = 19, ax=None) -> Figure:
    """The density of x_t on the flow path x_t = (1 - t) x0 + t z (shaded) for a 2-D `GaussianMixture` and its exact
    marginal velocity E[z - x0 | x_t] (black arrows) at flow time `t`; with a `model` (told 1000 t, as in training),
    its learned velocity too (orange): the velocity widget. Arrows point towards the noise: a sampler walks
    against them. Draws into `ax` if given (and returns its figure)."""
    from .flow import TIME_SCALE, diffusion_abar

    if not 0 <= t <= 1:
        return _error_figure(f"t must lie in [0, 1] (0 data, 1 noise), got {t}")
    pts, grid = plane_grid(lim, n), plane_grid(lim, 121)
    # the flow's x_t is the variance-preserving x at abar(t), times sqrt((1 - t)^2 + t^2): its density, rescaled
    norm = ((1 - t) ** 2 + t**2) ** 0.5
    density = mix.log_prob(grid / norm, diffusion_abar(t), y).exp().reshape(121, 121)
    arrows = {"exact velocity": (mix.flow_velocity(pts, t, y), "black")}
    if model is not None:
        tt = torch.full((len(pts),), TIME_SCALE * t)
        labels = None if y is None else torch.full((len(pts),), y, dtype=torch.long)
        with torch.no_grad():
            arrows["learned velocity"] = (model(pts.float(), tt, labels).double(), "tab:orange")
    return _field(density, pts, arrows, lim, n, f"flow time t = {t:.2f}", ax)

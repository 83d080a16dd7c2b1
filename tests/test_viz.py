"""The notebooks' figures and widget callbacks, called directly (the widgets only wrap these)."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ddpm_utils import viz


@pytest.fixture
def digit():
    return torch.linspace(-1, 1, 28 * 28).view(1, 28, 28)


def shown_message(fig) -> str:
    """The text of an error figure, after checking that a notebook really shows it: IPython's own PNG of the figure
    (which is None for a figure without axes, so the message never appeared) has red message pixels."""
    import io

    from IPython.core.pylabtools import print_figure
    from PIL import Image

    png = print_figure(fig, "png")
    assert png is not None, "IPython draws no image for this figure"
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)  # crimson text on white
    assert red.sum() > 50, "the figure's image shows no message"
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def test_image_grid_layout_and_range():
    images = torch.stack([torch.full((1, 4, 4), v) for v in (-1.0, 0.0, 1.0)])
    grid = viz.image_grid(images, nrow=2, pad=1)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1)  # 2 rows x 2 columns of 4x4 with 1-pixel padding
    assert grid[1, 1].item() == 0.0 and grid[1, 6].item() == 0.5 and grid[6, 1].item() == 1.0
    assert viz.image_grid(torch.zeros(5, 3, 4, 4), nrow=8).shape == (6, 26, 3)
    with pytest.raises(ValueError, match="images must have shape \\(B, C, H, W\\)"):
        viz.image_grid(torch.zeros(4, 4))


def test_figures_are_returned_and_not_left_open(digit):
    before = plt.get_fignums()
    figs = [viz.show_images(digit.expand(3, 1, 28, 28), title="three"), viz.elbo_explorer(),
            viz.schedule_explorer(image=digit), viz.embedding_explorer()]
    assert all(isinstance(f, Figure) for f in figs)
    assert plt.get_fignums() == before


def test_elbo_explorer_reports_the_gap():
    fig = viz.elbo_explorer(q_mean=0.3, q_log_var=-0.5, x=1.5, noise_var=0.5)
    densities, bars = fig.axes
    assert len(densities.lines) == 2 and len(bars.patches) == 2
    log_px, elbo = (p.get_height() for p in bars.patches)
    assert elbo < log_px
    assert f"{log_px - elbo:.3f}" in bars.get_title()  # the title states the gap, log p(x) - ELBO
    at_posterior = viz.elbo_explorer(q_mean=1.0, q_log_var=torch.tensor(1 / 3).log().item())
    assert "= 0.000" in at_posterior.axes[1].get_title()


@pytest.mark.parametrize("schedule", ["linear", "cosine", "quadratic", "sigmoid"])
def test_schedule_explorer_draws_alphas_and_the_strip(schedule, digit):
    fig = viz.schedule_explorer(schedule, T=200, image=digit, num_frames=5)
    ax_abar, ax_snr, *strip = fig.axes
    assert len(strip) == 5 and [a.get_title() for a in strip] == ["t=1", "t=51", "t=101", "t=150", "t=200"]
    abar = ax_abar.lines[0].get_ydata()
    assert len(abar) == 200 and (abar[1:] < abar[:-1]).all()
    assert ax_abar.get_title().startswith(f"{schedule}, T=200: alpha-bar_T =")


def test_schedule_explorer_uses_the_same_noise_every_redraw(digit):
    a = viz.schedule_explorer("linear", T=100, image=digit, num_frames=3).axes[-1].images[0].get_array()
    b = viz.schedule_explorer("linear", T=100, image=digit, num_frames=3).axes[-1].images[0].get_array()
    assert (a == b).all()


def test_schedule_explorer_shows_bad_parameters_as_a_message():
    fig = viz.schedule_explorer("linear", beta_start=0.1, beta_end=0.01)
    assert "beta_start must be <= beta_end" in shown_message(fig)


def test_embedding_explorer_panels():
    fig = viz.embedding_explorer(dim=16, max_period=100, T=50)
    heat, sim = fig.axes[:2]  # the two panels (their colour bars follow)
    assert heat.images[0].get_array().shape == (50, 16)
    similarity = sim.images[0].get_array()
    assert similarity.shape == (50, 50) and abs(similarity[3, 3] - 1) < 1e-5
    assert "max_period=100" in heat.get_title()
    assert "dim must be an int >= 2" in shown_message(viz.embedding_explorer(dim=1))


def test_loss_figure_draws_raw_and_smoothed_losses():
    history = [(i + 1, 1.0 / (i + 1)) for i in range(100)]
    ax = viz.loss_figure(history, window=10).axes[0]
    raw, smooth = ax.get_lines()
    assert len(raw.get_xdata()) == 100 and len(smooth.get_xdata()) == 91
    np.testing.assert_allclose(smooth.get_ydata()[0], np.mean([1.0 / (i + 1) for i in range(10)]))
    assert not viz.loss_figure([]).axes[0].get_lines()  # before the first step: empty axes, no error


def fake_trajectory(K=5, B=3):
    g = torch.Generator().manual_seed(0)
    return {"t": torch.arange(K - 1, -1, -1) * 10, "x_t": torch.rand(K, B, 1, 28, 28, generator=g) * 2 - 1,
            "x0_pred": torch.rand(K, B, 1, 28, 28, generator=g) * 2 - 1}


def test_trajectory_frame_and_strip_show_x_t_and_x0():
    traj = fake_trajectory()
    left, right = viz.trajectory_frame(traj, 1).axes
    assert left.get_title() == "x_t at t = 31" and right.get_title() == "predicted x_0 at t = 31"  # paper t = code t + 1
    np.testing.assert_allclose(left.images[0].get_array()[1:29, 1:29], (traj["x_t"][1, 0, 0].numpy() + 1) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="k must be in 0..4"):
        viz.trajectory_frame(traj, 5)
    strip = viz.trajectory_strip(traj, index=2, num=3)
    assert [ax.get_title() for ax in strip.axes[:3]] == ["t = 41", "t = 21", "t = 1"]
    np.testing.assert_allclose(strip.axes[3].images[0].get_array()[1:29, 1:29], (traj["x0_pred"][0, 2, 0].numpy() + 1) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="return_trajectory"):
        viz.trajectory_strip({"t": torch.zeros(2)})


def test_save_gif_writes_one_frame_per_step(tmp_path):
    from PIL import Image

    traj = fake_trajectory(K=4, B=2)
    path = viz.save_gif(traj, tmp_path / "sub" / "a.gif", nrow=2, scale=1)
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (2 * 59 + 4, 30)
        gif.seek(3)
        assert gif.info["duration"] == 1500  # the last frame is held


def test_guided_samples_draws_the_digit_and_rejects_bad_ones():
    from ddpm_utils.diffusion import GaussianDiffusion
    from ddpm_utils.unet import UNet, UNetConfig

    model, diffusion = UNet(UNetConfig.preset("tiny")).eval(), GaussianDiffusion.from_schedule("cosine", 20)
    fig = viz.guided_samples(model, diffusion, digit=4, guidance_scale=2.0, n=3, steps=2, seed=0)
    assert fig.axes[0].get_title() == "digit 4, guidance scale s = 2 (w = 1)"
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(),
                                  viz.guided_samples(model, diffusion, 4, 2.0, n=3, steps=2, seed=0).axes[0].images[0].get_array())
    assert "digit must be 0..9, got 12" in shown_message(viz.guided_samples(model, diffusion, digit=12))


def test_unet_diagram_draws_every_module_and_skip():
    from ddpm_utils.unet import Block, UNet, UNetConfig

    for preset in ("tiny", "mnist"):
        model = UNet(UNetConfig.preset(preset))
        ax = viz.unet_diagram(model).axes[0]
        boxes = [t for t in ax.texts if t.get_bbox_patch() is not None]
        assert len(boxes) == 2 + len(model.down) + len(model.mid) + len(model.up)
        assert len([t for t in ax.texts if t.get_bbox_patch() is None]) == sum(isinstance(m, Block) for m in model.up)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["28x28", "14x14", "7x7"]
        assert boxes[0].get_text() == f"conv\n{model.config.base_channels}" and boxes[-1].get_text() == "conv\n1"
        assert sum("attn" in t.get_text() for t in boxes) == sum(getattr(m, "attn", None) is not None for m in model.modules()
                                                                  if isinstance(m, Block))


def test_score_field_and_point_samples():
    from ddpm_utils.diffusion import GaussianDiffusion
    from ddpm_utils.points import PointMLP, PointMLPConfig
    from ddpm_utils.toy import GaussianMixture

    mix = GaussianMixture(means=[[-1.0, 0.0], [1.0, 0.0]], stds=0.3, labels=[0, 1])
    diffusion = GaussianDiffusion.from_schedule("linear", 100)
    grid = viz.plane_grid(1.0, 3)
    assert grid.shape == (9, 2) and grid[:3].tolist() == [[-1.0, -1.0], [0.0, -1.0], [1.0, -1.0]]  # row by row, x fastest
    before = plt.get_fignums()
    fig = viz.score_field(mix, diffusion, 10, model=PointMLP(PointMLPConfig(num_classes=2)), y=1)
    assert isinstance(fig, Figure) and len(fig.axes[0].collections) == 2  # exact and learned arrows
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["exact score", "learned score"]
    assert "t = 11 (paper)" in fig.axes[0].get_title()  # code t 10 is the paper's t = 11
    assert "t must be 0..99" in shown_message(viz.score_field(mix, diffusion, 100))
    fig = viz.point_samples({"a": torch.zeros(5, 2), "b": torch.ones(3, 2)}, mix, title="two sets")
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"] and fig._suptitle.get_text() == "two sets"
    assert plt.get_fignums() == before

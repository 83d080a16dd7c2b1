"""The README's figures: every file is written, and the guidance grid is laid out digit by scale."""

import torch
from PIL import Image

from ddpm_utils.__main__ import main
from ddpm_utils.checkpoints import load_pretrained
from ddpm_utils.figures import guidance_grid
from ddpm_utils.samplers import sample


def test_figures_command_writes_every_readme_figure(tmp_path, capsys):
    assert main(["figures", "--out", str(tmp_path), "--steps", "2", "--gif-steps", "5"]) == 0
    names = ["schedules.png", "forward.png", "samples.png", "guidance.png", "denoising.gif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    for name in names:
        with Image.open(tmp_path / name) as im:
            assert im.width > 300 and im.height >= 50, name
    with Image.open(tmp_path / "denoising.gif") as gif:
        assert gif.n_frames == 5  # one frame per respaced step
    assert capsys.readouterr().out.count("wrote ") == 5


def test_guidance_grid_rows_are_digits_and_columns_scales():
    model, diffusion = load_pretrained("mnist")
    grid = guidance_grid(model, diffusion, steps=2, scales=(0, 3))
    assert grid.shape == (20, 1, 28, 28)
    x_T = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    three = sample(model, diffusion, x_T.shape, num_steps=2, y=torch.arange(10), guidance_scale=3.0, x_T=x_T, progress=False)
    torch.testing.assert_close(grid[1::2], three)  # column 2 (s = 3), rows 0..9

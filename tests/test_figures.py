"""The README's figures: every file is written, and the guidance grid is laid out digit by scale."""

import json

import torch
from helpers import weights_equal
from PIL import Image

from ddpm_utils import evaluation
from ddpm_utils.__main__ import main
from ddpm_utils.checkpoints import load_checkpoint, load_pretrained
from ddpm_utils.figures import guidance_grid, learning_curve
from ddpm_utils.samplers import sample
from ddpm_utils.training import TrainConfig, train


def test_figures_command_writes_every_readme_figure(tmp_path, capsys):
    assert main(["figures", "--out", str(tmp_path), "--steps", "2", "--gif-steps", "5"]) == 0
    names = ["schedules.png", "forward.png", "samples.png", "guidance.png", "unconditional.png", "denoising.gif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    for name in names:
        with Image.open(tmp_path / name) as im:
            assert im.width > 300 and im.height >= 50, name
    with Image.open(tmp_path / "denoising.gif") as gif:
        assert gif.n_frames == 5  # one frame per respaced step
    assert capsys.readouterr().out.count("wrote ") == 6


def test_guidance_grid_rows_are_digits_and_columns_scales():
    model, diffusion = load_pretrained("mnist")
    grid = guidance_grid(model, diffusion, steps=2, scales=(0, 3))
    assert grid.shape == (20, 1, 28, 28)
    x_T = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    three = sample(model, diffusion, x_T.shape, num_steps=2, y=torch.arange(10), guidance_scale=3.0, x_T=x_T, progress=False)
    torch.testing.assert_close(grid[1::2], three)  # column 2 (s = 3), rows 0..9


def test_kept_snapshots_make_a_learning_curve_scored_once(tmp_path, capsys, monkeypatch):
    config = TrainConfig(preset="tiny", T=20, batch_size=8, max_steps=4, keep_every=2, checkpoint_every=4, warmup_steps=1,
                         sample_steps=2, data_source="bundled")
    train(config, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_000002.pt", "step_000004.pt"]
    kept, last = load_checkpoint(tmp_path / "step_000004.pt", use_ema=True), load_checkpoint(tmp_path / "last.pt", use_ema=True)
    assert kept.step == 4 and weights_equal(kept.model, last.model)  # the EMA weights at that step

    assert main(["learning-curve", str(tmp_path), "--num", "20", "--steps", "2", "--guidance-scale", "0,3"]) == 0
    out = capsys.readouterr().out
    assert "real training digits" in out and "step 2, uncond." in out and "step 4, s=3" in out
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "learning_curve.json").read_text())) == 4  # 2 snapshots x 2 scales

    def no_sampling(*args, **kw):
        raise AssertionError("a scored snapshot was sampled again")

    monkeypatch.setattr(evaluation, "generate", no_sampling)  # a rerun reads every row from the cache
    rows, real = learning_curve(tmp_path, num=20, steps=2, scales=(0.0, 3.0), progress=False)
    assert [(r["step"], r["scale"]) for r in rows] == [(2, 0.0), (2, 3.0), (4, 0.0), (4, 3.0)] and real["n"] == 20
    assert rows[0]["accuracy"] is None and 0 <= rows[1]["accuracy"] <= 1


def test_learning_curve_without_snapshots_says_how_to_keep_them(tmp_path, capsys):
    assert main(["learning-curve", str(tmp_path)]) == 2
    assert "train with --keep-every N" in capsys.readouterr().err

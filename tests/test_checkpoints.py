import dataclasses

import pytest
import torch

from ddpm_utils import checkpoints
from ddpm_utils.checkpoints import load_checkpoint, load_pretrained, save_checkpoint, sha256
from ddpm_utils.diffusion import GaussianDiffusion
from ddpm_utils.unet import UNet, UNetConfig


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    model = UNet(UNetConfig.preset("tiny"))
    diffusion = GaussianDiffusion.from_schedule("cosine", 100, s=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = diffusion.training_loss(model, torch.rand(4, 1, 28, 28) * 2 - 1, y=torch.tensor([1, 2, 3, 4]))
    loss.backward()
    opt.step()
    ema = UNet(model.config)
    path = save_checkpoint(tmp_path / "run" / "last.pt", model, diffusion, step=7, ema=ema, optimizer=opt,
                           extra={"rng": torch.get_rng_state(), "note": "hello"})
    return path, model, diffusion, opt, ema


def test_round_trip_rebuilds_model_and_diffusion(trained):
    path, model, diffusion, opt, ema = trained
    assert path.is_file() and not list(path.parent.glob("*.tmp"))  # written atomically, nothing left over
    ck = load_checkpoint(path)
    assert ck.step == 7 and ck.model.config == model.config and ck.data["extra"]["note"] == "hello"
    for (name, a), b in zip(model.state_dict().items(), ck.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(ck.diffusion.betas, diffusion.betas) and ck.diffusion.schedule == diffusion.schedule
    opt2 = torch.optim.AdamW(ck.model.parameters(), lr=1e-3)
    opt2.load_state_dict(ck.data["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 1
    ema_loaded = load_checkpoint(path, use_ema=True).model
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), ema_loaded.state_dict().values(), strict=True))
    # loading into a given, matching model and diffusion
    ck = load_checkpoint(path, model=UNet(model.config), diffusion=GaussianDiffusion.from_schedule("cosine", 100, s=0.01))
    assert torch.equal(next(ck.model.parameters()), next(model.parameters()))


def test_custom_betas_are_recorded_too(tmp_path):
    model, diffusion = UNet(UNetConfig.preset("tiny")), GaussianDiffusion(torch.linspace(1e-3, 0.1, 30))
    ck = load_checkpoint(save_checkpoint(tmp_path / "c.pt", model, diffusion))
    assert ck.diffusion.num_timesteps == 30 and torch.allclose(ck.diffusion.betas, diffusion.betas)


def test_mismatched_model_or_schedule_is_refused(trained):
    path, model, *_ = trained
    other = UNet(dataclasses.replace(model.config, base_channels=16, num_groups=8))
    with pytest.raises(ValueError, match="saved from a different UNet \\(base_channels: checkpoint 8 vs model 16"):
        load_checkpoint(path, model=other)
    with pytest.raises(ValueError, match="trained with schedule .*'cosine'.* differs from the given diffusion .*'linear'"):
        load_checkpoint(path, diffusion=GaussianDiffusion.from_schedule("linear", 100))
    with pytest.raises(ValueError, match="T=100.*T=50"):
        load_checkpoint(path, diffusion=GaussianDiffusion.from_schedule("cosine", 50))


def test_corrupt_truncated_or_foreign_files_are_refused(trained, tmp_path):
    path = trained[0]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="could not be read as a checkpoint"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="could not be read as a checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="is not a ddpm_utils checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        load_checkpoint(tmp_path / "missing.pt")
    no_ema = save_checkpoint(tmp_path / "no_ema.pt", UNet(UNetConfig.preset("tiny")), GaussianDiffusion.from_schedule("linear", 10))
    with pytest.raises(ValueError, match="holds no EMA weights"):
        load_checkpoint(no_ema, use_ema=True)


def test_load_pretrained_checks_the_sha256(trained, tmp_path, monkeypatch):
    path, model, *_ = trained
    monkeypatch.setattr(checkpoints, "ASSETS", path.parent)
    monkeypatch.setattr(checkpoints, "PRETRAINED", {"toy": {"file": path.name, "sha256": sha256(path)}})
    loaded, diffusion = load_pretrained("toy")
    assert not loaded.training and diffusion.num_timesteps == 100
    assert torch.equal(next(loaded.parameters()), next(model.parameters()))
    monkeypatch.setattr(checkpoints, "PRETRAINED", {"toy": {"file": path.name, "sha256": "0" * 64}})
    with pytest.raises(ValueError, match="has SHA-256 .* expected 0000000000000000...: the file is corrupt or was replaced"):
        load_pretrained("toy")
    with pytest.raises(ValueError, match="no bundled weights named 'mnist'; available: \\['toy'\\]"):
        load_pretrained("mnist")


def test_the_objective_is_recorded_and_old_checkpoints_load_as_eps(tmp_path):
    model = UNet(UNetConfig.preset("tiny", learned_variance=True))
    diffusion = GaussianDiffusion.from_schedule("cosine", 20, prediction="v")
    path = save_checkpoint(tmp_path / "v.pt", model, diffusion)
    ck = load_checkpoint(path)
    assert ck.diffusion.prediction == "v" and ck.model.config.learned_variance
    with pytest.raises(ValueError, match="predicts 'v', but the given diffusion reads its output as 'eps'"):
        load_checkpoint(path, diffusion=GaussianDiffusion.from_schedule("cosine", 20))

    # a checkpoint written before the objective was a choice: no "prediction", no "learned_variance"
    old = torch.load(save_checkpoint(tmp_path / "old.pt", UNet(UNetConfig.preset("tiny")),
                                     GaussianDiffusion.from_schedule("cosine", 20)), weights_only=True)
    del old["prediction"], old["unet_config"]["learned_variance"]
    torch.save(old, tmp_path / "old.pt")
    ck = load_checkpoint(tmp_path / "old.pt")
    assert ck.diffusion.prediction == "eps" and not ck.model.config.learned_variance


def test_the_bundled_model_predicts_v_with_fixed_variances():
    model, diffusion = load_pretrained("mnist")
    assert diffusion.prediction == "v" and model.config.learned_variance is False  # the pilots' choice (README)

"""Training on your own images end to end (notebook 08): a folder of RGB pictures at 32x32 and at 64x64, with
a validation loss; train -> checkpoint -> resume (exactly) -> sample; the CLI by class name; evaluation."""

import dataclasses

import pytest
import torch
from helpers import weights_equal

from ddpm_utils.__main__ import main
from ddpm_utils.checkpoints import load_checkpoint
from ddpm_utils.data import write_tinted_digits
from ddpm_utils.samplers import sample
from ddpm_utils.training import TrainConfig, fixed_grid_loss, train


@pytest.fixture(scope="module")
def tinted(tmp_path_factory):
    return write_tinted_digits(tmp_path_factory.mktemp("data") / "tinted", per_class=6, image_size=32)


@pytest.mark.parametrize("size", [32, 64])
def test_a_folder_trains_resumes_exactly_and_samples(tinted, tmp_path, size):
    cfg = TrainConfig(preset="tiny", dataset="folder", data_dir=str(tinted), image_size=size, T=20, batch_size=4, max_steps=4,
                      checkpoint_every=2, val_every=2, warmup_steps=1, sample_steps=1, unet={"dropout": 0.1})
    train(dataclasses.replace(cfg, max_steps=2), tmp_path / "b", progress=False)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert [s for s, *_ in resumed["val_history"]] == [2, 4] and len(resumed["history"]) == 4
    if size == 32:  # exactness once (the 64x64 run takes the same code path at four times the cost)
        straight = train(cfg, tmp_path / "a", progress=False)
        assert weights_equal(straight["model"], resumed["model"]) and weights_equal(straight["ema"], resumed["ema"])
        assert straight["history"] == resumed["history"] and straight["val_history"] == resumed["val_history"]
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt", use_ema=True)
    assert ckpt.dataset == {"name": "folder", "class_names": [str(d) for d in range(10)], "channels": 3, "image_size": size}
    assert ckpt.model.config.in_channels == 3 and ckpt.model.config.image_size == size and ckpt.model.num_classes == 10
    assert {p.name for p in (tmp_path / "b").iterdir()} >= {"last.pt", "samples.png", "loss.png"}
    x = sample(ckpt.model, ckpt.diffusion, (3, 3, size, size), num_steps=2, y=torch.tensor([0, 4, 9]), progress=False)
    assert x.shape == (3, 3, size, size) and torch.isfinite(x).all()


def test_the_validation_loss_is_the_same_for_the_same_weights(tinted, tmp_path):
    """Fixed timesteps, fixed noise, dropout off: evaluating twice gives the same number, and training mode is restored."""
    cfg = TrainConfig(preset="tiny", dataset="folder", data_dir=str(tinted), T=20, batch_size=8, max_steps=1, sample_steps=1,
                      lr=3e-3, warmup_steps=1, val_every=1)
    run = train(cfg, tmp_path, progress=False)
    x, y = run["dataset"].tensors()
    a = fixed_grid_loss(run["model"], run["diffusion"], x[:8], y[:8])
    assert a == fixed_grid_loss(run["model"], run["diffusion"], x[:8], y[:8])  # no fresh noise, no dropout
    assert run["model"].training  # put back in training mode
    assert run["val_history"][0][0] == 1 and len(run["val_history"][0]) == 3
    other = fixed_grid_loss(run["model"], run["diffusion"], x[:8], y[:8], seed=1)
    assert other != a  # another seed is another draw of the noise


def test_an_unlabelled_folder_trains_an_unconditional_model(tmp_path, capsys):
    from PIL import Image

    for i in range(6):
        Image.new("RGB", (20, 20), (40 * i, 100, 200)).save(tmp_path / f"{i}.png")
    run = train(TrainConfig(preset="tiny", dataset="folder", data_dir=str(tmp_path), image_size=16, T=10, batch_size=2,
                            max_steps=1, sample_steps=1, unet={"channel_mults": (1, 2)}, val_every=1), tmp_path / "run",
                progress=False)
    assert run["model"].num_classes is None and run["dataset"].num_classes is None
    ckpt = str(tmp_path / "run" / "last.pt")
    assert main(["sample", "--checkpoint", ckpt, "--steps", "1", "--num", "2", "--out", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", ckpt, "--label", "cat", "--out", str(tmp_path / "s.png")]) == 2
    assert "trained on unlabelled images (folder), so it has no classes" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", ckpt, "--guidance-scale", "3", "--out", str(tmp_path / "s.png")]) == 2
    assert "this model is unconditional (trained on unlabelled images): guidance needs classes" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", ckpt, "--unconditional"]) == 2
    assert "trained on unlabelled images (folder): there are no classes to train a judging classifier on" in capsys.readouterr().err


def test_a_preset_that_cannot_take_the_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="preset 'cifar10' at image size 28: image_size 28 cannot be halved 3 times"):
        train(TrainConfig(preset="cifar10", data_source="bundled", max_steps=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="dataset 'folder' needs data_dir"):
        TrainConfig(dataset="folder")
    with pytest.raises(ValueError, match="the image size and channels come from the data"):
        TrainConfig(unet={"image_size": 32})
    with pytest.raises(ValueError, match="dataset must be one of"):
        TrainConfig(dataset="imagenet")


def test_cli_on_a_zip_by_class_name_with_its_own_classifier(tinted, tmp_path, capsys):
    import shutil

    archive = shutil.make_archive(str(tmp_path / "tinted"), "zip", tinted.parent, tinted.name)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--data-dir", archive, "--image-size", "32", "--preset", "tiny", "--max-steps", "2",
                 "--batch-size", "4", "--T", "20", "--sample-steps", "1", "--val-every", "1", "--out", str(run)]) == 0
    ckpt = str(run / "last.pt")
    assert main(["sample", "--checkpoint", ckpt, "--label", "7", "--steps", "1", "--num", "4", "--out", str(tmp_path / "7.png")]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", ckpt, "--label", "seven", "--out", str(tmp_path / "x.png")]) == 2
    assert "--label 'seven' is not a class of this model; its classes are ['0', '1'" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", ckpt, "--steps", "1", "--num", "10"]) == 2
    assert "trained on folder; the shipped classifier judges MNIST digits only. Train one with" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", ckpt, "--classifier-scale", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "bundled noise-aware MNIST classifier; this model was trained on folder (3x32x32)" in capsys.readouterr().err
    judge = str(tmp_path / "judge.pt")
    assert main(["train-classifier", "--dataset", "folder", "--data-dir", archive, "--image-size", "32", "--epochs", "1",
                 "--out", judge]) == 0
    assert "test images of folder; wrote" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", ckpt, "--classifier", judge, "--steps", "1", "--guidance-scale", "1",
                 "--num", "10"]) == 0
    table = capsys.readouterr().out.splitlines()[-3:]
    assert table[0].startswith("setting") and "KID" in table[0] and table[1].startswith("real training images")
    assert table[2].startswith("DDIM 1, s=1")

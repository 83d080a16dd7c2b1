"""Latent diffusion (notebook 12): the autoencoder, its measured scale, prompts, cross-attention, latent training and
sampling through the decoder, and the errors for what cannot work."""

import dataclasses

import pytest
import torch
from helpers import weights_equal

from ddpm_utils import checks
from ddpm_utils import prompts as P
from ddpm_utils.__main__ import main
from ddpm_utils.autoencoder import (
    PRETRAINED,
    Autoencoder,
    AutoencoderConfig,
    AutoencoderTrainConfig,
    kl_divergence,
    load_autoencoder,
    measure_scale,
    save_autoencoder,
    train_autoencoder,
)
from ddpm_utils.checkpoints import load_checkpoint
from ddpm_utils.diffusion import drop_labels
from ddpm_utils.latent import condition, load_decoder, num_labels
from ddpm_utils.training import TrainConfig, train
from ddpm_utils.unet import CrossAttention, UNet, UNetConfig

TINY_AE = {"preset": "mnist", "data_source": "bundled", "batch_size": 8, "checkpoint_every": 4}


def test_autoencoder_shapes_and_a_clear_error_for_the_wrong_image_size():
    ae = Autoencoder(AutoencoderConfig(base_channels=8))
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (3, 4, 8, 8) and ae.config.latent_shape == (4, 8, 8)
    assert ae.decode(mean).shape == (3, 1, 28, 28)  # the padding (28 -> 32) is cropped off again
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 28, 28\), got \(3, 1, 32, 32\)"):
        ae.encode(torch.zeros(3, 1, 32, 32))
    with pytest.raises(ValueError, match=r"latents of shape \(B, 4, 8, 8\)"):
        ae.decode(torch.zeros(3, 4, 7, 7))
    with pytest.raises(ValueError, match="multiple of 4"):
        AutoencoderConfig(padded_size=30)


def test_rgb_preset_and_the_command_line(tmp_path, capsys):
    from ddpm_utils.autoencoder import PRESETS

    ae = Autoencoder(PRESETS["rgb32"])
    assert ae.encode(torch.zeros(2, 3, 32, 32))[0].shape == (2, 4, 8, 8) and ae.decode(torch.zeros(2, 4, 8, 8)).shape == (2, 3, 32, 32)
    assert main(["train-autoencoder", "--max-steps", "2", "--batch-size", "8", "--checkpoint-every", "2", "--data-source",
                 "bundled", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "held-out L1" in capsys.readouterr().out and (tmp_path / "reconstructions.png").is_file()
    assert main(["export", "--checkpoint", str(tmp_path / "autoencoder.pt"), "--out", str(tmp_path / "small.pt")]) == 0
    assert "SHA-256" in capsys.readouterr().out and load_autoencoder(str(tmp_path / "small.pt")).config.latent_shape == (4, 8, 8)
    assert (tmp_path / "small.pt").stat().st_size < (tmp_path / "autoencoder.pt").stat().st_size / 2  # no optimizer state
    assert main(["train-autoencoder", "--kl-weight", "-1", "--out", str(tmp_path)]) == 2
    assert "kl_weight >= 0" in capsys.readouterr().err


def test_kl_term_is_the_kl_to_a_standard_normal():
    mean, logvar = torch.randn(50), torch.randn(50)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(kl_divergence(mean, logvar), expected, atol=1e-5)


def test_measured_scale_gives_latents_of_unit_std_and_to_image_undoes_it():
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(base_channels=8)).eval()
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    scale = measure_scale(ae, x)
    z = ae.to_latent(x)
    assert z.std().item() == pytest.approx(1.0, abs=1e-4) and ae.scale.item() == pytest.approx(scale)
    assert torch.allclose(ae.to_image(z), ae.decode(ae.encode(x)[0]).clamp(-1, 1), atol=1e-5)


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    result = train_autoencoder(AutoencoderTrainConfig(max_steps=4, **TINY_AE), out, progress=False)
    return out, result


def test_autoencoder_training_resumes_exactly_and_records_its_scale(autoencoder_run, tmp_path):
    out, straight = autoencoder_run
    config = AutoencoderTrainConfig(max_steps=2, **TINY_AE)
    train_autoencoder(config, tmp_path, progress=False)
    resumed = train_autoencoder(dataclasses.replace(config, max_steps=4), tmp_path, resume=True, progress=False)
    assert weights_equal(straight["model"], resumed["model"])
    assert straight["history"] == resumed["history"]
    loaded = load_autoencoder(str(out / "autoencoder.pt"))
    assert loaded.scale.item() == pytest.approx(straight["model"].scale.item()) and loaded.scale.item() != 1.0
    assert (out / "reconstructions.png").stat().st_size > 0 and 0 < straight["recon_l1"] < 2
    with pytest.raises(ValueError, match="different AutoencoderTrainConfig"):
        train_autoencoder(dataclasses.replace(config, kl_weight=1.0), tmp_path, resume=True, progress=False)


def test_bundled_autoencoder_is_checked_and_reconstructs_held_out_digits():
    from ddpm_utils.data import load_mnist

    ae = load_autoencoder("mnist")
    assert PRETRAINED["mnist"]["sha256"] and ae.config.latent_shape == (4, 8, 8)
    x = load_mnist(train=False, source="bundled").tensors()[0][:200]
    z = ae.to_latent(x)
    assert 0.8 < z.std().item() < 1.2  # the scale measured on the training digits carries over
    assert (ae.to_image(z) - x).abs().mean().item() < 0.06  # mean |error| in [-1, 1] units


def test_an_autoencoder_that_is_not_the_recorded_one_is_refused(autoencoder_run, tmp_path):
    out, result = autoencoder_run
    with pytest.raises(ValueError, match="not the autoencoder this was made with"):
        load_autoencoder(str(out / "autoencoder.pt"), sha256="0" * 64)
    torch.save({"format": "other"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an autoencoder"):
        load_autoencoder(str(tmp_path / "x.pt"))
    with pytest.raises(FileNotFoundError, match="train-autoencoder"):
        load_autoencoder(str(tmp_path / "missing.pt"))


def _image(slant: float, width: int) -> torch.Tensor:
    """A vertical stroke of `width` pixels, sheared so that its top moves `slant` pixels right per row up."""
    img = -torch.ones(1, 28, 28)
    for r in range(4, 24):
        c = round(14 + slant * (14 - r))
        img[0, r, c: c + width] = 1.0
    return img


def test_measured_attributes_slant_and_ink():
    m = P.measure(torch.stack([_image(0.0, 2), _image(0.4, 2), _image(-0.4, 2), _image(0.0, 5)]))
    assert abs(m["slant"][0]) < 0.02 and m["slant"][1] == pytest.approx(0.4, abs=0.05) and m["slant"][2] < -0.3
    assert m["ink"][3] > 2 * m["ink"][0]


def test_describe_puts_the_measured_words_in_their_slots():
    images = torch.stack([_image(s, w) for s in (0.0, 0.5, -0.3) for w in (1, 3, 5)] * 2)
    labels = torch.tensor([0] * 9 + [1] * 9)
    tokens = P.describe(images, labels, num_classes=2)
    vocab = P.vocabulary(["0", "1"])
    texts = P.decode(tokens, vocab)
    assert texts[0] == "thin upright 0" and texts[5] == "thick slanted 0" and texts[9 + 4] == "slanted 1"
    assert P.encode(texts, vocab).tolist() == tokens.tolist()


def test_prompt_text_errors_name_the_vocabulary():
    vocab = P.vocabulary([str(d) for d in range(10)])
    assert P.encode("7 thick", vocab).tolist() == P.encode("thick 7", vocab).tolist() == [[1, 14, 11]]
    assert P.encode("", vocab).tolist() == [[14, 14, 14]]  # the empty prompt: all pad (the null condition)
    with pytest.raises(ValueError, match="unknown word 'bold'.*the words are: thin thick upright slanted 0 1"):
        P.encode("bold 7", vocab)
    with pytest.raises(ValueError, match="two words for one slot"):
        P.encode("thin thick 7", vocab)


def test_prompt_dropout_drops_whole_prompts_for_guidance_and_words_for_combinations():
    class Model:
        num_classes = 14

    tokens = torch.tensor([[1, 3, 11]] * 4000)
    dropped = drop_labels(Model(), tokens, 0.1, torch.Generator().manual_seed(0))
    empty = (dropped == 14).all(1)
    assert ((dropped == tokens).all(1) | empty).all() and 0.08 < empty.float().mean() < 0.12
    words = P.drop_words(tokens, 0.3, 14, torch.Generator().manual_seed(0))
    assert 0.28 < (words == 14).float().mean() < 0.32


def test_cross_attention_mixes_the_tokens_with_weights_that_sum_to_one_over_them():
    torch.manual_seed(0)
    layer = CrossAttention(8, 6, num_heads=2, groups=4)
    layer.keep_attention = True
    x, context = torch.randn(2, 8, 3, 3), torch.randn(2, 5, 6)
    out = layer(x, context)
    assert out.shape == x.shape and layer.attention.shape == (2, 2, 9, 5)
    assert torch.allclose(layer.attention.sum(-1), torch.ones(2, 2, 9))
    same = layer(x, context[:, torch.randperm(5)])  # no positions inside: the order of the keys does not matter
    assert torch.allclose(out, same, atol=1e-5)


def test_prompt_unet_reads_prompts_and_none_is_the_empty_prompt():
    torch.manual_seed(0)
    cfg = UNetConfig.preset("tiny", num_classes=14, context_len=3)
    model = UNet(cfg).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 500])
    prompt = torch.tensor([[1, 3, 11], [14, 14, 5]])
    out = model(x, t, prompt)
    assert out.shape == x.shape and not torch.allclose(out, model(x, t, torch.full((2, 3), 14)))
    assert torch.allclose(model(x, t, None), model(x, t, torch.full((2, 3), 14)))
    assert model.label_embed is None and condition(model, torch.tensor([7])).tolist() == [[14, 14, 11]] and num_labels(model) == 10
    with pytest.raises(ValueError, match=r"a prompt, an integer tensor of word ids of shape \(B, L\) = \(2, 3\)"):
        model(x, t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="word ids must lie in 0..13"):
        model(x, t, torch.tensor([[1, 3, 15], [1, 2, 3]]))
    with pytest.raises(ValueError, match="cross-attention"):
        UNetConfig.preset("tiny", num_classes=None, context_len=3)


@pytest.fixture(scope="module")
def latent_run(autoencoder_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent")
    config = TrainConfig(preset="tiny", latent=str(autoencoder_run[0] / "autoencoder.pt"), prompts=True, max_steps=2,
                         batch_size=8, sample_steps=2, data_source="bundled", checkpoint_every=1)
    return out, config, train(config, out, progress=False)


def test_a_latent_prompt_model_trains_on_latents_and_names_its_autoencoder(latent_run, autoencoder_run):
    out, config, result = latent_run
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.model.config.in_channels == 4 and ckpt.model.config.image_size == 8 and ckpt.model.config.context_len == 3
    assert ckpt.model.config.attention_resolutions == (8, 4, 2) and ckpt.model.config.latent
    record = ckpt.autoencoder
    assert record["file"] == str((autoencoder_run[0] / "autoencoder.pt").resolve()) and record["latent_shape"] == [4, 8, 8]
    assert ckpt.dataset["vocabulary"][:4] == ["thin", "thick", "upright", "slanted"] and ckpt.dataset["image_size"] == 28
    ae = load_decoder(record)
    assert ae.scale.item() == pytest.approx(record["scale"])
    assert (out / "samples.png").stat().st_size > 0
    x, y = result["dataset"].tensors()
    assert x.shape[1:] == (4, 8, 8) and y.shape[1:] == (3,)


def test_latent_model_samples_through_its_decoder_from_the_cli(latent_run, tmp_path, capsys):
    from PIL import Image

    out = latent_run[0]
    assert main(["sample", "--checkpoint", str(out / "last.pt"), "--prompt", "thick slanted 7", "--steps", "2", "--num", "4",
                 "--out", str(tmp_path / "p.png")]) == 0
    assert Image.open(tmp_path / "p.png").size[1] == 28 + 2 * 2  # decoded digits (28 px) with save_image's border
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--steps", "2", "--num", "4"]) == 0
    assert "DDIM 2, s=3" in capsys.readouterr().out
    assert main(["figures", "--checkpoint", str(out / "last.pt"), "--steps", "2", "--gif-steps", "2", "--out", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "denoising.gif").size[1] == 2 * (28 + 2)  # decoded frames (one row of 28 px digits, scale 2)
    assert (tmp_path / "guidance.png").stat().st_size > 0 and (tmp_path / "unconditional.png").stat().st_size > 0


def test_latent_errors_are_one_clear_line(latent_run, autoencoder_run, tmp_path, capsys):
    out, config, _ = latent_run
    ckpt = str(out / "last.pt")
    cases = [
        (["sample", "--checkpoint", ckpt, "--prompt", "bold 7", "--out", str(tmp_path / "x.png")], "unknown word 'bold'"),
        (["sample", "--checkpoint", ckpt, "--autoencoder", str(tmp_path / "gone.pt"), "--out", str(tmp_path / "x.png")],
         "only its autoencoder can turn into images"),
        (["sample", "--prompt", "7", "--out", str(tmp_path / "x.png")], "--prompt is for a model trained with --prompts"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="horizontal flip would reverse"):
        TrainConfig(prompts=True, hflip=True)
    with pytest.raises(ValueError, match="latents of the data at their own size"):
        TrainConfig(latent="mnist", image_size=32)
    narrow = tmp_path / "narrow.pt"  # a 28x28 image unpadded: 4x7x7 latents, which the tiny preset cannot halve twice
    save_autoencoder(narrow, Autoencoder(AutoencoderConfig(padded_size=28, base_channels=8)))
    with pytest.raises(ValueError, match="latents are 4x7x7, which preset 'tiny' cannot take"):
        train(dataclasses.replace(config, latent=str(narrow)), tmp_path / "run", progress=False)
    copy = tmp_path / "ae.pt"  # retrained in place after a run started: resuming that run is refused
    copy.write_bytes((autoencoder_run[0] / "autoencoder.pt").read_bytes())
    config = dataclasses.replace(config, latent=str(copy), max_steps=1)
    train(config, tmp_path / "run", progress=False)
    save_autoencoder(copy, Autoencoder(AutoencoderConfig(base_channels=8)))
    with pytest.raises(ValueError, match="another autoencoder"):
        train(dataclasses.replace(config, max_steps=2), tmp_path / "run", resume=True, progress=False)


def _to_latent(ae, x, scaled=True):
    mean = ae.encode(x)[0]
    return mean * ae.scale if scaled else mean


def _to_image(ae, z, unscale=True):
    return ae.decode(z / ae.scale if unscale else z)


def _cross_attention(q, k, v, axis=-1):
    return (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(axis) @ v


def _prompt_guidance(model, x, t, prompt, scale, pad, null=None):
    empty = torch.full_like(prompt, pad) if null is None else null(prompt)
    cond, uncond = model(x, t, prompt), model(x, t, empty)
    return uncond + scale * (cond - uncond)


def _stub(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("check, correct, wrong, hint", [
    (lambda f: checks.check_latent_roundtrip(f, _to_image), _to_latent, lambda ae, x: _to_latent(ae, x, scaled=False),
     "scale the latent"),
    (lambda f: checks.check_latent_roundtrip(_to_latent, f), _to_image, lambda ae, z: _to_image(ae, z, unscale=False),
     "undo the scale before decoding"),
    (lambda f: checks.check_latent_roundtrip(f, _to_image), _to_latent,
     lambda ae, x: ae.encode(x)[0] + 0.1 * torch.randn_like(ae.encode(x)[0]), "not a random draw"),
    (checks.check_cross_attention, _cross_attention, lambda q, k, v: _cross_attention(q, k, v, axis=-2), "over the tokens"),
    (checks.check_prompt_guidance, _prompt_guidance, lambda *a: _prompt_guidance(*a, null=torch.zeros_like), "id 0 is the word"),
])
def test_notebook_12_checks_accept_the_solution_and_name_the_mistake(check, correct, wrong, hint, capsys):
    check(correct)
    assert "✓" in capsys.readouterr().out
    with pytest.raises(NotImplementedError):
        check(_stub)
    with pytest.raises(checks.CheckFailed) as failure:
        check(wrong)
    assert hint in str(failure.value), str(failure.value)


def test_samplers_clip_images_but_not_latents():
    """Scaled latents have unit std and long tails: clipping x0 to [-1, 1], right for images, would cut them off."""
    from ddpm_utils.diffusion import GaussianDiffusion
    from ddpm_utils.samplers import sample

    diffusion = GaussianDiffusion.from_schedule("cosine", 50)
    out = {}
    for latent in (False, True):
        torch.manual_seed(0)
        model = UNet(UNetConfig.preset("tiny", image_size=8, in_channels=4, num_classes=None, latent=latent)).eval()
        torch.nn.init.zeros_(model.out[-1].weight)
        torch.nn.init.zeros_(model.out[-1].bias)  # eps = 0: x0 = x_T / sqrt(abar_T), far outside [-1, 1]
        out[latent] = sample(model, diffusion, (2, 4, 8, 8), num_steps=5, generator=torch.Generator().manual_seed(0), progress=False)
    assert out[False].abs().max() <= 1 and out[True].abs().max() > 3

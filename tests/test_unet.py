import dataclasses

import pytest
import torch

from ddpm_utils.unet import PRESETS, UNet, UNetConfig, count_parameters

CIFAR_LIKE = UNetConfig(image_size=32, in_channels=3, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                        attention_resolutions=(8, 16), num_heads=2, num_groups=4, dropout=0.0)


def test_preset_sizes():
    assert count_parameters(UNet(UNetConfig.preset("tiny"))) < 100_000
    assert 2_000_000 < count_parameters(UNet(UNetConfig.preset("mnist"))) < 6_000_000
    assert sorted(PRESETS) == ["cifar10", "folder64", "mnist", "small", "tiny"]
    assert 8_000_000 < count_parameters(UNet(UNetConfig.preset("cifar10"))) < 11_000_000  # 9.3M: DDPM's CIFAR net at half width
    assert UNetConfig.preset("folder64").resolutions == (64, 32, 16, 8, 4)  # one more level than cifar10's (32, 16, 8, 4)
    assert 1_000_000 < count_parameters(UNet(UNetConfig.preset("small"))) < 1_200_000
    assert UNetConfig.preset("mnist", num_classes=None).num_classes is None
    with pytest.raises(ValueError, match="unknown UNet preset 'huge'"):
        UNetConfig.preset("huge")


@pytest.mark.parametrize("config", [UNetConfig.preset("tiny"), CIFAR_LIKE], ids=["mnist-28x28x1", "cifar-32x32x3"])
def test_output_has_the_input_shape(config):
    model = UNet(config)
    x = torch.randn(2, config.in_channels, config.image_size, config.image_size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape
    assert model(x, torch.tensor([3, 4]), torch.tensor([1, 10])).shape == x.shape


def test_learned_variance_doubles_the_output_channels():
    config = UNetConfig.preset("tiny", learned_variance=True)
    x = torch.randn(2, 1, 28, 28)
    assert UNet(config)(x, torch.tensor([0, 999])).shape == (2, 2, 28, 28)
    assert UNetConfig.preset("tiny").learned_variance is False  # the default, and what old checkpoints mean


def test_t_and_y_change_the_output_and_null_label_is_the_default():
    torch.manual_seed(0)
    model = UNet(UNetConfig.preset("tiny")).eval()
    x = torch.randn(1, 1, 28, 28)
    base = model(x, torch.tensor([10]), torch.tensor([3]))
    assert not torch.allclose(base, model(x, torch.tensor([500]), torch.tensor([3])))
    assert not torch.allclose(base, model(x, torch.tensor([10]), torch.tensor([4])))
    torch.testing.assert_close(model(x, torch.tensor([10])), model(x, torch.tensor([10]), torch.tensor([10])))


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = UNet(UNetConfig.preset("tiny"))
    x = torch.randn(2, 1, 28, 28)
    model(x, torch.tensor([5, 50]), torch.tensor([1, 2])).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_unconditional_model_has_no_label_embedding():
    model = UNet(dataclasses.replace(UNetConfig.preset("tiny"), num_classes=None))
    assert model.label_embed is None and model.num_classes is None
    assert model(torch.randn(1, 1, 28, 28), torch.tensor([1])).shape == (1, 1, 28, 28)
    with pytest.raises(ValueError, match="unconditional \\(num_classes=None\\) but got labels"):
        model(torch.randn(1, 1, 28, 28), torch.tensor([1]), torch.tensor([1]))


@pytest.mark.parametrize("x, t, y, match", [
    (torch.zeros(2, 3, 28, 28), torch.zeros(2), None, "x must have shape \\(B, 1, H, W\\), got \\(2, 3, 28, 28\\)"),
    (torch.zeros(2, 28, 28), torch.zeros(2), None, "x must have shape \\(B, 1, H, W\\)"),
    (torch.zeros(2, 1, 30, 30), torch.zeros(2), None, "spatial size 30x30 cannot be down-sampled 2 times by 2; use sizes divisible by 4"),
    (torch.zeros(2, 1, 28, 28), torch.zeros(3), None, "t must be a tensor of shape \\(B,\\) = \\(2,\\), got \\(3,\\)"),
    (torch.zeros(2, 1, 28, 28), torch.tensor(5), None, "t must be a tensor of shape \\(B,\\)"),
    (torch.zeros(2, 1, 28, 28), torch.zeros(2), torch.tensor([0, 11]),
     "labels must lie in 0..9 \\(or 10, the null label\\), got values 0..11"),
    (torch.zeros(2, 1, 28, 28), torch.zeros(2), torch.tensor([-1, 3]), "labels must lie in 0..9"),
    (torch.zeros(2, 1, 28, 28), torch.zeros(2), torch.tensor([1.0, 2.0]), "y must be an integer tensor of shape \\(B,\\)"),
    (torch.zeros(2, 1, 28, 28), torch.zeros(2), torch.tensor([1]), "y must be an integer tensor of shape \\(B,\\) = \\(2,\\)"),
])
def test_bad_inputs_raise_clear_errors(x, t, y, match):
    model = UNet(UNetConfig.preset("tiny"))
    with pytest.raises(ValueError, match=match):
        model(x, t, y)


@pytest.mark.parametrize("kw, match", [
    ({"image_size": 30}, "image_size 30 cannot be halved 2 times"),
    ({"attention_resolutions": (16,)}, "attention_resolutions \\[16\\] are not feature-map sizes of this UNet: \\(28, 14, 7\\)"),
    ({"num_groups": 5}, "must be divisible by num_groups=5"),
    ({"dropout": 1.0}, "dropout must lie in \\[0, 1\\)"),
    ({"num_classes": 0}, "num_classes must be None or >= 1"),
    ({"channel_mults": ()}, "channel_mults non-empty"),
])
def test_bad_configs_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kw)


def test_attention_is_placed_at_the_chosen_resolutions():
    model = UNet(UNetConfig.preset("tiny"))  # attention at 7x7 only, plus the middle
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
             for m in model.modules() if type(m).__name__ == "AttentionBlock"]
    model(torch.zeros(1, 1, 28, 28), torch.tensor([0]))
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {7}


def test_a_preset_keeps_its_attention_levels_at_another_image_size():
    tiny = UNetConfig.preset("tiny")
    assert tiny.resolutions == (28, 14, 7) and tiny.attention_resolutions == (7,)
    at32 = UNetConfig.preset("tiny", image_size=32, in_channels=3)
    at64 = UNetConfig.preset("tiny", image_size=64, in_channels=3)
    assert at32.attention_resolutions == (8,) and at64.attention_resolutions == (16,)  # still the lowest level
    assert count_parameters(UNet(at64)) == count_parameters(UNet(at32))  # widths and depths do not depend on the size
    x = torch.randn(2, 3, 64, 64)
    assert UNet(at64)(x, torch.tensor([0, 5])).shape == x.shape
    cifar = UNetConfig.preset("cifar10")
    assert UNetConfig.preset("cifar10", image_size=64).attention_resolutions == (32, 16)
    assert UNetConfig.preset("cifar10", attention_resolutions=(4,)).attention_resolutions == (4,) != cifar.attention_resolutions


def test_an_image_size_the_preset_cannot_halve_names_both():
    with pytest.raises(ValueError, match="preset 'cifar10' at image size 28: image_size 28 cannot be halved 3 times"):
        UNetConfig.preset("cifar10", image_size=28)
    with pytest.raises(ValueError, match="preset .folder64. at image size 36: image_size 36 cannot be halved 4 times.* divisible by 16"):
        UNetConfig.preset("folder64", image_size=36)

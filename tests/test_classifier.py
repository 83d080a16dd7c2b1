import pytest
import torch

from ddpm_utils import classifier
from ddpm_utils.classifier import MNISTClassifier, accuracy, load_classifier, train_classifier


def test_shipped_classifier_is_accurate_on_the_held_out_digits():
    model = load_classifier()
    x, y = classifier._tensors(train=False)  # the 500 test digits no model in the course trains on
    acc = accuracy(model, x, y)
    assert acc >= 0.97  # measured when shipped: 0.982
    assert model.features(x[:3]).shape == (3, 128)


def test_shipped_classifier_file_is_checked(monkeypatch, tmp_path):
    monkeypatch.setattr(classifier, "CLASSIFIER_SHA256", "f" * 64)
    with pytest.raises(ValueError, match="expected ffffffffffffffff...: corrupt or replaced"):
        load_classifier()
    monkeypatch.setattr(classifier, "ASSETS", tmp_path)
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        load_classifier()


def test_bad_input_shape():
    with pytest.raises(ValueError, match="takes images of shape \\(B, 1, 28, 28\\), got \\(2, 3, 28, 28\\)"):
        MNISTClassifier()(torch.zeros(2, 3, 28, 28))


def test_training_learns_quickly():
    model, acc = train_classifier(epochs=1, batch_size=128)
    assert acc > 0.8 and not model.training


def test_shipped_noisy_classifier_reads_noisy_digits_that_the_clean_one_cannot():
    from ddpm_utils.checkpoints import load_pretrained
    from ddpm_utils.classifier import accuracy_by_t, load_noisy_classifier

    noisy, clean = load_noisy_classifier(), load_classifier()
    _, diffusion = load_pretrained()
    assert noisy.schedule == diffusion.schedule == {"name": "cosine", "T": 1000}  # trained on the bundled model's x_t
    x, y = classifier._tensors(train=False)
    ts = [0, 299, 599]  # paper t = 1, 300, 600; measured when shipped: 98.2 %, 98.2 %, 95.4 %
    noisy_acc = accuracy_by_t(noisy, diffusion, x, y, ts)
    clean_acc = accuracy_by_t(lambda x_t, t: clean(x_t), diffusion, x, y, ts)
    assert noisy_acc[0] >= 0.96 and noisy_acc[1] >= 0.95 and noisy_acc[2] >= 0.9, noisy_acc
    assert clean_acc[0] >= 0.96 and clean_acc[2] < 0.5, clean_acc  # the clean classifier is lost at t = 600


def test_noisy_classifier_file_is_checked_and_bad_input_explained(monkeypatch):
    from ddpm_utils.classifier import NoisyClassifier, load_noisy_classifier

    with pytest.raises(ValueError, match="takes x \\(B, 1, 28, 28\\) and t \\(B,\\), got \\(2, 1, 28, 28\\) and \\(3,\\)"):
        NoisyClassifier()(torch.zeros(2, 1, 28, 28), torch.zeros(3, dtype=torch.long))
    monkeypatch.setattr(classifier, "NOISY_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="corrupt or replaced"):
        load_noisy_classifier()


def test_noisy_classifier_training_learns_and_keeps_the_schedule():
    from ddpm_utils.classifier import train_noisy_classifier
    from ddpm_utils.diffusion import GaussianDiffusion

    diffusion = GaussianDiffusion.from_schedule("linear", 100)
    model, acc = train_noisy_classifier(diffusion, epochs=1, batch_size=128)
    assert not model.training and model.schedule == {"name": "linear", "T": 100}
    assert list(acc) == [1] + list(range(100, 101, 100)) and acc[1] > 0.5, acc  # paper t = 1 and T

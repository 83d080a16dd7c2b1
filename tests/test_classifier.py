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
    with pytest.raises(ValueError, match="takes MNIST images of shape \\(B, 1, 28, 28\\), got \\(2, 3, 28, 28\\)"):
        MNISTClassifier()(torch.zeros(2, 3, 28, 28))


def test_training_learns_quickly():
    model, acc = train_classifier(epochs=1, batch_size=128)
    assert acc > 0.8 and not model.training

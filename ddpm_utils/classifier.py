"""A small MNIST classifier that judges generated digits (it never sees the diffusion model).

Trained on the bundled subset's training split by `python -m ddpm_utils train-classifier`;
its weights ship in `assets/mnist_classifier.pt` (SHA-256 checked on load). Its held-out
accuracy is measured on the 500 test digits, which no model in the course trains on.
`features()` gives the penultimate-layer activations for a Frechet distance on these features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import ASSETS, sha256
from .data import load_mnist

CLASSIFIER_FILE = "mnist_classifier.pt"
CLASSIFIER_SHA256 = "6e584d82713dfe6f59fa3964e0983e553e6c6e1995d53eabbe7beab8bb37c645"  # of the shipped file; update after retraining


class MNISTClassifier(nn.Module):
    """conv(32) -> conv(32) -> pool -> conv(64) -> conv(64) -> pool -> fc(128) -> fc(10), on images in [-1, 1]."""

    def __init__(self):
        super().__init__()
        conv = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
        self.body = nn.Sequential(conv(1, 32), conv(32, 32), nn.MaxPool2d(2), conv(32, 64), conv(64, 64), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, 128)."""
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"the classifier takes MNIST images of shape (B, 1, 28, 28), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x):  # (B, 1, 28, 28) -> logits (B, 10)
        return self.head(self.dropout(self.features(x)))


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translations by up to `max_shift` pixels (background -1 fills the gap): cheap augmentation."""
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy: dy + 28, dx: dx + 28]


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    preds = torch.cat([model(images[i: i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    return (preds == labels).float().mean().item()


def _tensors(train: bool):
    return load_mnist(train=train, source="bundled").tensors()


def train_classifier(epochs: int = 15, batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> tuple[MNISTClassifier, float]:
    """Train on the bundled training split; return (model in eval mode, accuracy on the 500 held-out digits)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = _tensors(train=True)
    x_test, y_test = _tensors(train=False)
    model = MNISTClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (len(x) // batch_size))
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[i: i + batch_size]
            loss = F.cross_entropy(model(_shift(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval(), accuracy(model, x_test, y_test)


def load_classifier(device="cpu") -> MNISTClassifier:
    """The shipped classifier, in eval mode; its file's SHA-256 is checked first."""
    path = ASSETS / CLASSIFIER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; make it with `python -m ddpm_utils train-classifier`")
    digest = sha256(path)
    if digest != CLASSIFIER_SHA256:
        raise ValueError(f"{path} has SHA-256 {digest[:16]}..., expected {CLASSIFIER_SHA256[:16]}...: corrupt or replaced")
    model = MNISTClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().to(device)

"""Two small MNIST classifiers, each trained on the bundled subset's 4,500 training digits.

- `MNISTClassifier` judges generated digits (it never sees the diffusion model): trained on clean
  digits by `python -m ddpm_utils train-classifier`, shipped as `assets/mnist_classifier.pt`.
  `features()` gives the penultimate-layer activations for a Frechet distance on these features.
- `NoisyClassifier` guides sampling (classifier guidance, Dhariwal & Nichol 2021): it reads a noised
  digit x_t *and* its timestep t, trained on x_t of the bundled model's schedule by
  `python -m ddpm_utils train-noisy-classifier`, shipped as `assets/mnist_noisy_classifier.pt`.
Both files are SHA-256 checked on load; held-out accuracies are measured on the 500 test digits,
which no model in the course trains on.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import ASSETS, sha256
from .data import load_mnist
from .diffusion import GaussianDiffusion
from .embeddings import TimeEmbedding

CLASSIFIER_FILE = "mnist_classifier.pt"
CLASSIFIER_SHA256 = "6e584d82713dfe6f59fa3964e0983e553e6c6e1995d53eabbe7beab8bb37c645"  # of the shipped file; update after retraining
NOISY_FILE = "mnist_noisy_classifier.pt"
NOISY_SHA256 = "74fd11ae1f47717b456609b5b7924ea780c662e3b1c0f16704d1afcdacb29240"  # of the shipped file; update after retraining


class MNISTClassifier(nn.Module):
    """conv(32) -> conv(32) -> pool -> conv(64) -> conv(64) -> pool -> fc(128) -> fc(num_classes), on images in [-1, 1].

    MNIST's shape by default; `train-classifier --dataset` trains the same network on any labelled data set.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10):
        super().__init__()
        if image_size % 4 or num_classes < 2:
            raise ValueError(f"the classifier needs an image size divisible by 4 and >= 2 classes, got {image_size}, {num_classes}")
        self.shape = (in_channels, image_size, image_size)
        conv = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
        self.body = nn.Sequential(conv(in_channels, 32), conv(32, 32), nn.MaxPool2d(2), conv(32, 64), conv(64, 64), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, 128), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(128, num_classes)
        self.dataset = {"name": "mnist", "class_names": [str(d) for d in range(10)], "channels": 1, "image_size": 28}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, 128)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"the classifier takes images of shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x):  # (B, C, H, W) -> logits (B, num_classes)
        return self.head(self.dropout(self.features(x)))


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translations by up to `max_shift` pixels: cheap augmentation. The gap is filled with black (-1)
    for one channel (the digits' background) and with the edge pixels for colour images."""
    padded = F.pad(x, [max_shift] * 4, value=-1.0) if x.shape[1] == 1 else F.pad(x, [max_shift] * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy: dy + x.shape[2], dx: dx + x.shape[3]]


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    preds = torch.cat([model(images[i: i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    return (preds == labels).float().mean().item()


def _tensors(train: bool):
    return load_mnist(train=train, source="bundled").tensors()


def train_classifier(epochs: int = 15, batch_size: int = 64, lr: float = 1e-3, seed: int = 0, train_set=None,
                     test_set=None, device="cpu") -> tuple[MNISTClassifier, float]:
    """Train on the bundled training split (or on `train_set`, a labelled `data.ImageTensors`), on `device`;
    return (model in eval mode on the CPU, accuracy on the 500 held-out digits, or on `test_set`). The
    model's `dataset` records what it was trained on."""
    if (train_set is None) != (test_set is None):
        raise ValueError("give both train_set and test_set, or neither (the bundled digits)")
    if train_set is not None and not train_set.num_classes:
        raise ValueError(f"the classifier needs labels; {train_set.source} is unlabelled (a folder without class sub-folders)")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = _tensors(train=True) if train_set is None else train_set.tensors()
    x_test, y_test = _tensors(train=False) if test_set is None else test_set.tensors()
    model = MNISTClassifier(x.shape[1], x.shape[3], train_set.num_classes if train_set is not None else 10).to(device)
    if train_set is not None:
        model.dataset = train_set.info()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (len(x) // batch_size))
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[i: i + batch_size]
            loss = F.cross_entropy(model(_shift(x[idx], g).to(device)), y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval().cpu(), accuracy(model.cpu(), x_test, y_test)


def _checked(file: str, expected: str, command: str):
    """torch.load of a shipped file after checking its SHA-256."""
    path = ASSETS / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; make it with `python -m ddpm_utils {command}`")
    digest = sha256(path)
    if digest != expected:
        raise ValueError(f"{path} has SHA-256 {digest[:16]}..., expected {expected[:16]}...: corrupt or replaced")
    return torch.load(path, map_location="cpu", weights_only=True)


CLASSIFIER_FORMAT = "ddpm_utils.classifier/1"


def save_classifier(model: MNISTClassifier, path) -> None:
    """Weights, shape and the training data's record (`model.dataset`), for `load_classifier(path=...)`."""
    c, size, _ = model.shape
    torch.save({"format": CLASSIFIER_FORMAT, "state_dict": model.state_dict(), "dataset": model.dataset,
                "config": {"in_channels": c, "image_size": size, "num_classes": model.head.out_features}}, path)


def load_classifier(device="cpu", path=None) -> MNISTClassifier:
    """The shipped MNIST classifier (its file's SHA-256 checked first), or one that `save_classifier` wrote to
    `path`, in eval mode; `model.dataset` says what data it judges."""
    if path is None:
        model = MNISTClassifier()
        model.load_state_dict(_checked(CLASSIFIER_FILE, CLASSIFIER_SHA256, "train-classifier"))
        return model.eval().to(device)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no classifier file at {path}; write one with `ddpm train-classifier --dataset NAME --out FILE`")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} could not be read as a classifier file: {type(e).__name__}") from None
    if not isinstance(data, dict) or data.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a classifier written by `ddpm train-classifier` (expected format {CLASSIFIER_FORMAT!r})")
    model = MNISTClassifier(**data["config"])
    model.load_state_dict(data["state_dict"])
    model.dataset = data["dataset"]
    return model.eval().to(device)


class NoisyClassifier(nn.Module):
    """p_phi(y | x_t, t) for classifier guidance: `classifier(x_t, t) -> logits` (B, 10).

    Four 3x3 convolutions (32 channels at 28x28, 64 at 14x14 twice, 64 at 7x7; GroupNorm, SiLU), each
    told t the way the UNet's blocks are (notebook 04): the sinusoidal embedding through an MLP, projected
    to a per-channel shift. Then a two-layer head on the 64 x 7 x 7 features. `schedule` records the noise
    schedule it was trained on: its x_t must come from the same schedule as the model it guides.
    """

    def __init__(self, schedule: dict | None = None, time_dim: int = 64):
        super().__init__()
        self.schedule = dict(schedule) if schedule else None
        self.time_embed = TimeEmbedding(time_dim, time_dim)
        widths = [(1, 32), (32, 64), (64, 64), (64, 64)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in widths)
        self.norms = nn.ModuleList(nn.GroupNorm(8, o) for _, o in widths)
        self.shifts = nn.ModuleList(nn.Linear(time_dim, o) for _, o in widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.SiLU(), nn.Linear(128, 10))

    def forward(self, x, t):
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28) or t.shape != (x.shape[0],):
            raise ValueError(f"the noisy classifier takes x (B, 1, 28, 28) and t (B,), got {tuple(x.shape)} and {tuple(t.shape)}")
        emb = self.time_embed(t)  # (B, time_dim)
        h = x
        for i, (conv, norm, shift) in enumerate(zip(self.convs, self.norms, self.shifts, strict=True)):
            h = F.silu(norm(conv(h)) + shift(emb)[:, :, None, None])  # (B, C, H, W), shifted per channel by t
            if i in (0, 2):
                h = F.avg_pool2d(h, 2)  # 28 -> 14 -> 7
        return self.head(h)  # (B, 10)


@torch.no_grad()
def accuracy_by_t(classify, diffusion, images, labels, ts, seed: int = 0, batch_size: int = 500) -> list[float]:
    """Accuracy of `classify(x_t, t) -> logits` on `images` noised to x_t = q_sample(images, t), for each code t in `ts`.

    The same noise is used at every t. For a clean-image classifier pass `lambda x, t: model(x)`.
    """
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images.device)
    result = []
    for t in ts:
        tt = torch.full((len(images),), int(t), device=images.device, dtype=torch.long)
        x_t = diffusion.q_sample(images, tt, noise)
        preds = torch.cat([classify(x_t[i: i + batch_size], tt[i: i + batch_size]).argmax(1) for i in range(0, len(x_t), batch_size)])
        result.append((preds == labels).float().mean().item())
    return result


def train_noisy_classifier(diffusion: GaussianDiffusion, epochs: int = 20, batch_size: int = 128, lr: float = 2e-3,
                           seed: int = 0) -> tuple[NoisyClassifier, dict]:
    """Train on x_t of the training digits at uniformly drawn t of `diffusion`'s schedule (random shifts too).

    Returns (model in eval mode, {paper t: held-out accuracy}) at paper t = 1, 100, 200, ..., T.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = _tensors(train=True)
    x_test, y_test = _tensors(train=False)
    diffusion = copy.deepcopy(diffusion).cpu()  # trains on the CPU; the caller's diffusion stays where it is
    T = diffusion.num_timesteps
    model = NoisyClassifier(diffusion.schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * (len(x) // batch_size))
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[i: i + batch_size]
            t = torch.randint(0, T, (batch_size,), generator=g)
            x_t = diffusion.q_sample(_shift(x[idx], g), t, torch.randn((batch_size, *x.shape[1:]), generator=g))
            loss = F.cross_entropy(model(x_t, t), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    ts = [0] + list(range(99, T, 100))
    return model, dict(zip([t + 1 for t in ts], accuracy_by_t(model, diffusion, x_test, y_test, ts), strict=True))


def save_noisy_classifier(model: NoisyClassifier, path) -> None:
    torch.save({"state_dict": model.state_dict(), "schedule": model.schedule}, path)


def load_noisy_classifier(device="cpu") -> NoisyClassifier:
    """The shipped noise-aware classifier (trained on the bundled model's cosine schedule, T = 1000), in eval mode."""
    data = _checked(NOISY_FILE, NOISY_SHA256, "train-noisy-classifier")
    model = NoisyClassifier(data["schedule"])
    model.load_state_dict(data["state_dict"])
    return model.eval().to(device)

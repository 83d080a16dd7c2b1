"""Latent diffusion's data and decoding (Rombach et al. 2022): the data set a latent or prompt model trains on, the
record its checkpoint keeps of its autoencoder, and the way back to pixels.

The "data set" of a latent model is the training images encoded once (`Autoencoder.to_latent`, scaled to unit
standard deviation) and kept in memory; the UNet, the process and every sampler run on it unchanged. A prompt model's
"labels" are the images' measured prompts (`prompts.describe`). Sampling ends in latent space; `to_pixels` decodes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from . import prompts as P
from .autoencoder import Autoencoder, load_autoencoder, resolve


class EncodedData(Dataset):
    """x (N, C, H, W) float (latents or images) and y (N,) labels or (N, L) prompts; items (x[i], y[i]). `record` is
    what a checkpoint keeps about the data: the images' own {name, class_names, channels, image_size} (+ "vocabulary")."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, record: dict, num_classes: int | None):
        self.x, self.y, self.record, self.num_classes = x, y, record, num_classes
        self.channels, self.image_size = x.shape[1], x.shape[3]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def info(self) -> dict:
        return self.record


def prepare(data, autoencoder: Autoencoder | None, prompts: bool):
    """`data` (an `ImageTensors`) as a latent model (`autoencoder`) and/or a prompt model (`prompts`) trains on it;
    `data` itself for neither."""
    if autoencoder is None and not prompts:
        return data
    images, labels = data.tensors()
    record, num_classes, y = dict(data.info()), data.num_classes, labels
    if prompts:
        vocab = P.vocabulary(data.class_names)
        record["vocabulary"], num_classes, y = vocab, len(vocab), P.describe(images, labels, data.num_classes)
    if autoencoder is not None:
        ae = autoencoder.config
        if (ae.in_channels, ae.image_size) != (data.channels, data.image_size):
            raise ValueError(f"the autoencoder takes {ae.in_channels}x{ae.image_size}x{ae.image_size} images, but the data set "
                             f"{data.name!r} has {data.channels}x{data.image_size}x{data.image_size}; train one on these images "
                             "with `ddpm train-autoencoder`")
        device = autoencoder.scale.device
        images = autoencoder.to_latent(images.to(device)).cpu()
    return EncodedData(images, y, record, num_classes)


def autoencoder_record(name_or_path: str, autoencoder: Autoencoder) -> dict:
    """What a latent model's checkpoint keeps of its autoencoder: where it was (a bundled name or an absolute path),
    its SHA-256, its scale and shapes, so that sampling finds the same one or refuses."""
    from .checkpoints import sha256

    path, _ = resolve(name_or_path)
    where = name_or_path if path != Path(name_or_path) else str(path.resolve())
    cfg = autoencoder.config
    return {"file": where, "sha256": sha256(path), "scale": autoencoder.scale.item(), "latent_shape": list(cfg.latent_shape),
            "image_shape": [cfg.in_channels, cfg.image_size, cfg.image_size]}


def load_decoder(record: dict | None, given: str | None = None, device="cpu") -> Autoencoder | None:
    """The autoencoder a latent model's checkpoint names (None for a pixel model): `given` (a path or bundled name)
    or the recorded file, either way with the recorded SHA-256."""
    if not record:
        if given:
            raise ValueError("this checkpoint holds a pixel-space model; it takes no autoencoder")
        return None
    where = given or record["file"]
    path, _ = resolve(where)
    if not path.is_file():
        raise FileNotFoundError(
            f"this is a latent diffusion model: it makes {'x'.join(map(str, record['latent_shape']))} latents that only its "
            f"autoencoder can turn into images, and that is not at {path} (recorded: {record['file']}, SHA-256 "
            f"{record['sha256'][:16]}...); give its path (--autoencoder PATH, or autoencoder=PATH)")
    return load_autoencoder(where, device=device, sha256=record["sha256"])


def to_pixels(x: torch.Tensor, autoencoder: Autoencoder | None) -> torch.Tensor:
    """Samples as images: latents decoded by `autoencoder` (None: x is already pixels)."""
    return x if autoencoder is None else autoencoder.to_image(x.to(autoencoder.scale.device)).to(x.device)


def num_labels(model) -> int | None:
    """How many classes `model` can be asked for: its labels, or a prompt model's class words (None: unconditional)."""
    cfg = model.config
    return cfg.num_classes - P.NUM_ATTRIBUTE_WORDS if getattr(cfg, "context_len", 0) else cfg.num_classes


def condition(model, labels: torch.Tensor) -> torch.Tensor:
    """What `model` takes as y to be asked for classes `labels` (B,): the labels, or a prompt model's class-word prompts."""
    return P.class_prompts(labels, model.config.num_classes) if getattr(model.config, "context_len", 0) else labels

"""A noise predictor for points (B, D) instead of images: the score view in 2-D (notebook 10).

The same `GaussianDiffusion`, `training_loss` and `sample` serve it: the data are just (B, D)
tensors. Like the UNet it is told t through the sinusoidal embedding (notebook 03) and, if
class-conditional, a label with a null label `num_classes` (notebook 07).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .embeddings import TimeEmbedding


@dataclass
class PointMLPConfig:
    dim: int = 2  # coordinates of a point (the model contract's `dim`, in place of image_size)
    hidden: int = 128  # width of every hidden layer
    depth: int = 3  # residual MLP blocks
    num_classes: int | None = None  # None = unconditional; else labels 0..num_classes-1, null label = num_classes
    learned_variance: bool = False  # kept for the model contract; points use fixed variances

    def __post_init__(self):
        if self.dim < 1 or self.hidden < 2 or self.depth < 1:
            raise ValueError(f"dim, depth must be >= 1 and hidden >= 2, got {self.dim}, {self.depth}, {self.hidden}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}")
        if self.learned_variance:
            raise ValueError("PointMLP predicts the noise only (learned_variance=False)")

    @property
    def in_channels(self) -> int:  # what code that samples reads from a model's config
        return self.dim


class PointMLP(nn.Module):
    """eps_theta(x, t, y) for points: x (B, D), t (B,), y (B,) or None -> (B, D)."""

    def __init__(self, config: PointMLPConfig | None = None):
        super().__init__()
        cfg = self.config = config if config is not None else PointMLPConfig()
        self.num_classes = cfg.num_classes
        self.time_embed = TimeEmbedding(cfg.hidden, cfg.hidden)
        self.label_embed = nn.Embedding(cfg.num_classes + 1, cfg.hidden) if cfg.num_classes is not None else None
        self.input = nn.Linear(cfg.dim, cfg.hidden)
        width = cfg.hidden
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
                                    for _ in range(cfg.depth))
        self.output = nn.Sequential(nn.SiLU(), nn.Linear(cfg.hidden, cfg.dim))

    def forward(self, x, t, y=None):
        cfg = self.config
        if x.ndim != 2 or x.shape[1] != cfg.dim or t.shape != (x.shape[0],):
            raise ValueError(f"x must have shape (B, {cfg.dim}) and t (B,), got {tuple(x.shape)} and {tuple(t.shape)}")
        emb = self.time_embed(t)  # (B, hidden)
        if self.label_embed is not None:
            y = torch.full_like(t, cfg.num_classes, dtype=torch.long) if y is None else y
            if bool(((y < 0) | (y > cfg.num_classes)).any()):
                raise ValueError(f"labels must lie in 0..{cfg.num_classes} ({cfg.num_classes} = null label), got {y.tolist()}")
            emb = emb + self.label_embed(y.long())
        elif y is not None:
            raise ValueError("this PointMLP is unconditional (num_classes=None) but got labels y")
        h = self.input(x) + emb
        for block in self.blocks:
            h = h + block(h)  # residual blocks, the embedding added once at the input
        return self.output(h)  # (B, D)

"""A small, configurable UNet noise predictor eps_theta(x_t, t, y) (Ho et al. 2020, Appendix B).

It predicts whatever the diffusion's `prediction` says (eps, x0 or v; the UNet does not care), and
with `learned_variance` also the interpolation v_var of the reverse variance (Nichol & Dhariwal 2021).

Layout: input conv -> down path (residual blocks, optional self-attention, 2x down-sampling)
-> middle (res, attention, res) -> up path (residual blocks on [h, skip], 2x up-sampling)
-> GroupNorm, SiLU, output conv. The time embedding (plus the label embedding, if any) is
added inside every residual block. Label `num_classes` is the null label used for
classifier-free guidance; `y=None` means all-null.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .embeddings import TimeEmbedding


@dataclass
class UNetConfig:
    image_size: int = 28  # height = width of the training images, in pixels
    in_channels: int = 1  # image channels: 1 for MNIST, 3 for CIFAR-10 (output has the same)
    base_channels: int = 64  # feature channels at full resolution; the time embedding has 4x this
    channel_mults: tuple[int, ...] = (1, 2, 2)  # channels = base * mult per resolution; len-1 down-samplings
    num_res_blocks: int = 2  # residual blocks per resolution on the way down (one more on the way up)
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sizes (pixels) with self-attention after each block
    mid_attention: bool = True  # self-attention between the two middle residual blocks
    num_heads: int = 4  # attention heads; must divide the channels where attention is used
    num_groups: int = 8  # GroupNorm groups; must divide every channel count
    dropout: float = 0.1  # dropout probability inside residual blocks
    num_classes: int | None = 10  # None = unconditional; else labels 0..num_classes-1, null label = num_classes
    learned_variance: bool = False  # 2 x in_channels outputs: the prediction, then v in [-1, 1] for the variance
    context_len: int = 0  # 0: y is a label (B,); > 0: y is a prompt (B, context_len) of word ids < num_classes (pad = null =
    # num_classes), read by cross-attention after every self-attention (notebook 12) instead of a label embedding
    latent: bool = False  # x are an autoencoder's scaled latents (notebook 12), not images in [-1, 1]: samplers do not clip x0

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)
        if self.in_channels < 1 or self.base_channels < 1 or self.num_res_blocks < 1 or not self.channel_mults:
            raise ValueError("in_channels, base_channels, num_res_blocks must be >= 1 and channel_mults non-empty")
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} cannot be halved {len(self.channel_mults) - 1} times "
                f"(channel_mults={self.channel_mults}); use a size divisible by {factor} or fewer levels"
            )
        bad = sorted(set(self.attention_resolutions) - set(self.resolutions))
        if bad:
            raise ValueError(f"attention_resolutions {bad} are not feature-map sizes of this UNet: {self.resolutions}")
        for ch in {self.base_channels * m for m in self.channel_mults}:
            if ch % self.num_groups or ch % self.num_heads:
                raise ValueError(f"channels {ch} must be divisible by num_groups={self.num_groups} and num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}")
        if self.context_len < 0 or (self.context_len and (self.num_classes is None or not self.attention_resolutions)):
            raise ValueError("a prompt model (context_len > 0) needs num_classes (its vocabulary size) and attention "
                             "layers (attention_resolutions) for its cross-attention")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level, e.g. (28, 14, 7)."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mults)))

    @classmethod
    def preset(cls, name: str, **overrides) -> UNetConfig:
        """A named configuration (see PRESETS), with any field overridden.

        A preset sets widths and depths; with another `image_size` (or fewer levels) its self-attention
        stays at the same levels (the 7x7 level of a 28x28 "tiny" UNet becomes the 16x16 level at 64x64),
        unless `attention_resolutions` is given too.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown UNet preset {name!r}; expected one of {sorted(PRESETS)}")
        base = PRESETS[name]
        size, mults = overrides.get("image_size", base.image_size), overrides.get("channel_mults", base.channel_mults)
        if (size, tuple(mults)) != (base.image_size, base.channel_mults) and "attention_resolutions" not in overrides:
            levels = {min(base.resolutions.index(r), len(mults) - 1) for r in base.attention_resolutions}  # (0 = full size)
            overrides["attention_resolutions"] = tuple(size // 2**i for i in sorted(levels))
        try:
            return dataclasses.replace(base, **overrides)
        except ValueError as e:
            raise ValueError(f"preset {name!r} at image size {size}: {e}") from None


PRESETS = {
    # tests and DDPM_FAST: under 100k parameters, yet the same three levels and every kind of block
    "tiny": UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(7,),
                       num_heads=2, num_groups=4, dropout=0.0),
    # the bundled model (about 1.1M parameters): trains to clear digits in 40 minutes on a 2-core CPU
    "small": UNetConfig(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(7,),
                        num_heads=4, num_groups=8, dropout=0.1),
    # the course model (about 3.6M parameters): good MNIST digits after minutes on one GPU
    "mnist": UNetConfig(base_channels=48, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(7,),
                        num_heads=4, num_groups=16, dropout=0.1),
    # CIFAR-10 (32x32 RGB), sized for one T4-class GPU: four levels (32, 16, 8, 4), attention at 16x16 and 8x8
    "cifar10": UNetConfig(image_size=32, in_channels=3, base_channels=64, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                          attention_resolutions=(16, 8), num_heads=4, num_groups=16, dropout=0.1),
    # folders at 64x64: one more down-sampling level than "cifar10" (64, 32, 16, 8, 4), attention at 16x16 and 8x8
    "folder64": UNetConfig(image_size=64, in_channels=3, base_channels=64, channel_mults=(1, 1, 2, 2, 2), num_res_blocks=2,
                           attention_resolutions=(16, 8), num_heads=4, num_groups=16, dropout=0.1),
}


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + projected embedding, GroupNorm -> SiLU -> dropout -> conv, + skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2, self.conv2 = nn.GroupNorm(groups, out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):  # x (B, in_ch, H, W), emb (B, emb_dim)
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, H, W)
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]  # time (and label) injected here
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, ch: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x, emb=None):  # x (B, C, H, W)
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        q, k, v = rearrange(qkv, "b (three n d) h w -> three b n (h w) d", three=3, n=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C/heads)
        return x + self.proj(rearrange(out, "b n (h w) d -> b (n d) h w", h=x.shape[2]))


class CrossAttention(nn.Module):
    """Queries from the image features, keys and values from the prompt's tokens (Rombach et al. 2022, Sec. 3.3):
    softmax(Q K^T / sqrt(d)) V, the softmax over the tokens, so each position takes a mix of the prompt's words.
    With `keep_attention` set, the weights (B, heads, H*W, L) of the last call are kept in `attention`."""

    def __init__(self, ch: int, context_dim: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads, self.keep_attention, self.attention = num_heads, False, None
        self.norm = nn.GroupNorm(groups, ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x, context):  # x (B, C, H, W), context (B, L, context_dim)
        q = rearrange(self.q(self.norm(x)), "b (n d) h w -> b n (h w) d", n=self.num_heads)
        k, v = rearrange(self.kv(context), "b l (two n d) -> two b n l d", two=2, n=self.num_heads)
        weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, heads, H*W, L): over the tokens
        if self.keep_attention:
            self.attention = weights.detach()
        return x + self.proj(rearrange(weights @ v, "b n (h w) d -> b (n d) h w", h=x.shape[2]))


class PromptEncoder(nn.Module):
    """Token ids (B, L) -> (B, L, dim): word and position embeddings, then one pre-norm transformer layer, so that
    each word's vector can depend on the others (a tiny stand-in for the text encoders of text-to-image models)."""

    def __init__(self, vocab_size: int, length: int, dim: int, num_heads: int):
        super().__init__()
        self.words, self.positions = nn.Embedding(vocab_size + 1, dim), nn.Parameter(torch.zeros(length, dim))
        self.layer = nn.TransformerEncoderLayer(dim, num_heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, tokens):
        return self.layer(self.words(tokens) + self.positions)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, emb=None):  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, emb=None):  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Block(nn.Module):
    """A residual block, followed by self-attention at the chosen resolutions."""

    def __init__(self, in_ch, out_ch, emb_dim, cfg: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, cfg.num_groups)
        self.attn = AttentionBlock(out_ch, cfg.num_heads, cfg.num_groups) if attention else None
        prompts = attention and cfg.context_len
        self.cross = CrossAttention(out_ch, emb_dim, cfg.num_heads, cfg.num_groups) if prompts else None

    def forward(self, x, emb, context=None):
        h = self.res(x, emb)
        h = h if self.attn is None else self.attn(h)
        return h if self.cross is None else self.cross(h, context)


class UNet(nn.Module):
    """eps_theta(x, t, y): x (B, C, H, W) in [-1, 1], t (B,) integer steps, y (B,) labels or None."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        cfg = self.config = config if config is not None else UNetConfig()
        self.num_classes = cfg.num_classes  # the null label
        emb_dim = 4 * cfg.base_channels
        self.time_embed = TimeEmbedding(cfg.base_channels, emb_dim)
        labels = cfg.num_classes is not None and not cfg.context_len
        self.label_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if labels else None
        self.prompt_encoder = PromptEncoder(cfg.num_classes, cfg.context_len, emb_dim, cfg.num_heads) if cfg.context_len else None
        self.input_conv = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)

        channels = [cfg.base_channels * m for m in cfg.channel_mults]
        skip_chs, ch = [cfg.base_channels], cfg.base_channels
        self.down = nn.ModuleList()
        for level, (out_ch, res) in enumerate(zip(channels, cfg.resolutions, strict=True)):
            for _ in range(cfg.num_res_blocks):
                self.down.append(Block(ch, out_ch, emb_dim, cfg, res in cfg.attention_resolutions))
                ch = out_ch
                skip_chs.append(ch)
            if level < len(channels) - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)

        self.mid = nn.ModuleList([Block(ch, ch, emb_dim, cfg, cfg.mid_attention), Block(ch, ch, emb_dim, cfg, False)])

        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            out_ch, res = channels[level], cfg.resolutions[level]
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(Block(ch + skip_chs.pop(), out_ch, emb_dim, cfg, res in cfg.attention_resolutions))
                ch = out_ch
            if level > 0:
                self.up.append(Upsample(ch))

        out_ch = cfg.in_channels * (2 if cfg.learned_variance else 1)  # learned variances: Nichol & Dhariwal 2021, Eq. 15
        self.out = nn.Sequential(nn.GroupNorm(cfg.num_groups, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))

    def check_inputs(self, x, t, y) -> None:
        """Raise ValueError with the shapes involved if x, t or y cannot be used."""
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != cfg.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {cfg.in_channels}, H, W), got {shape}")
        B, (H, W), factor = x.shape[0], x.shape[2:], 2 ** (len(cfg.channel_mults) - 1)
        if H % factor or W % factor:
            raise ValueError(
                f"spatial size {H}x{W} cannot be down-sampled {len(cfg.channel_mults) - 1} times by 2; "
                f"use sizes divisible by {factor} (this UNet was built for {cfg.image_size}x{cfg.image_size})"
            )
        if not isinstance(t, torch.Tensor) or t.shape != (B,):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a tensor of shape (B,) = ({B},), got {shape}")
        if y is None:
            return
        if cfg.num_classes is None:
            raise ValueError("this UNet is unconditional (num_classes=None) but got labels y")
        shape = (B, cfg.context_len) if cfg.context_len else (B,)
        if not isinstance(y, torch.Tensor) or y.shape != shape or y.dtype.is_floating_point:
            what = f"a prompt, an integer tensor of word ids of shape (B, L) = {shape}" if cfg.context_len else \
                f"an integer tensor of shape (B,) = ({B},)"
            raise ValueError(f"y must be {what}, got {getattr(y, 'shape', y)!r}")
        if bool(((y < 0) | (y > cfg.num_classes)).any()):
            raise ValueError(
                f"{'word ids' if cfg.context_len else 'labels'} must lie in 0..{cfg.num_classes - 1} "
                f"(or {cfg.num_classes}, the null {'pad' if cfg.context_len else 'label'}), "
                f"got values {y.min().item()}..{y.max().item()}"
            )

    def forward(self, x, t, y=None):
        self.check_inputs(x, t, y)
        emb = self.time_embed(t)  # (B, 4 * base)
        if self.label_embed is not None:
            y = torch.full_like(t, self.num_classes, dtype=torch.long) if y is None else y
            emb = emb + self.label_embed(y.long())  # null label = "no class"
        context = None
        if self.prompt_encoder is not None:  # y = None: the empty prompt
            y = torch.full((x.shape[0], self.config.context_len), self.num_classes, device=x.device) if y is None else y
            context = self.prompt_encoder(y.long())  # (B, L, 4 * base)

        h = self.input_conv(x)  # (B, base, H, W)
        skips = [h]
        for block in self.down:
            h = block(h, emb, context) if isinstance(block, Block) else block(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb, context)  # (B, C_max, H / 2^(L-1), W / 2^(L-1))
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context) if isinstance(block, Block) else block(h)
        return self.out(h)  # (B, in_channels, H, W), or (B, 2 in_channels, H, W) with learned variances


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

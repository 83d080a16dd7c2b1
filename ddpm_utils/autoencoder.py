"""A small KL-regularised autoencoder, the first stage of latent diffusion (Rombach et al. 2022, Sec. 3.1).

The encoder maps an image (C, H, W) in [-1, 1] to a Gaussian q(z | x) = N(mean, exp(logvar)) over a latent
(c, h, w), h = w = padded size / 4; the decoder maps z back to pixels. Training minimises the L1 reconstruction
error plus `kl_weight` times KL(q(z | x) || N(0, I)) per latent element: a small weight (Rombach et al. use 1e-6
on summed losses) keeps the latent near a standard normal's scale without blurring the reconstructions. At 28-32
px an L1 loss alone gives sharp enough digits, so the perceptual and adversarial terms of Stable Diffusion's
autoencoder are left out.

Diffusion then runs on z * `scale`, where `scale` = 1 / std of the training set's latents, measured and stored
with the weights (Stable Diffusion's 0.18215 was measured the same way for its autoencoder).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

FORMAT = "ddpm_utils.autoencoder/1"
ASSETS = Path(__file__).resolve().parent / "assets"
# Bundled autoencoders: name -> {"file" in assets/, "sha256"} (a file holds the weights, the scale and the train config)
PRETRAINED = {
    # preset "mnist" on the bundled 5,000 digits, 3,000 steps, 266 s on the 2-core CPU: 28x28 -> 4x8x8, held-out L1 0.018
    "mnist": {"file": "autoencoder_mnist.pt", "sha256": "994deb671ab826e8bd2f6046800fe13b38a06531c204f3db70ac6604b58683f9"},
}


@dataclass
class AutoencoderConfig:
    image_size: int = 28  # height = width of the images, in pixels
    in_channels: int = 1  # image channels
    padded_size: int = 32  # images are padded (with the background value -1) to this size, a multiple of 4
    latent_channels: int = 4  # channels c of the latent (c, padded_size / 4, padded_size / 4)
    base_channels: int = 32  # feature channels at full resolution (twice this after the first down-sampling)

    def __post_init__(self):
        if self.padded_size % 4 or self.padded_size < self.image_size:
            raise ValueError(f"padded_size must be a multiple of 4 and at least image_size {self.image_size}, "
                             f"got {self.padded_size}")
        if min(self.in_channels, self.latent_channels, self.base_channels) < 1 or self.base_channels % 8:
            raise ValueError("in_channels and latent_channels must be >= 1, base_channels a positive multiple of 8")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of a latent: two 2x down-samplings of the padded image."""
        return (self.latent_channels, self.padded_size // 4, self.padded_size // 4)


PRESETS = {
    "mnist": AutoencoderConfig(base_channels=16),  # 1x28x28 (padded to 32) -> 4x8x8: 784 numbers -> 256
    "rgb32": AutoencoderConfig(image_size=32, in_channels=3, padded_size=32, base_channels=64),  # 3x32x32 -> 4x8x8
}


class _Res(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a (1x1-projected) skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  nn.GroupNorm(8, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.body(x) + self.skip(x)


class Autoencoder(nn.Module):
    """encode(x) -> (mean, logvar) of q(z | x); decode(z) -> x; the buffer `scale` = 1 / std of the latents."""

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        cfg = self.config = config or AutoencoderConfig()
        b, c = cfg.base_channels, cfg.latent_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(cfg.in_channels, b, 3, padding=1), _Res(b, b), nn.Conv2d(b, b, 3, stride=2, padding=1),  # H/2
            _Res(b, 2 * b), nn.Conv2d(2 * b, 2 * b, 3, stride=2, padding=1), _Res(2 * b, 2 * b),  # H/4
            nn.GroupNorm(8, 2 * b), nn.SiLU(), nn.Conv2d(2 * b, 2 * c, 3, padding=1))  # mean and log-variance
        self.decoder = nn.Sequential(
            nn.Conv2d(c, 2 * b, 3, padding=1), _Res(2 * b, 2 * b), nn.Upsample(scale_factor=2.0, mode="nearest"),
            _Res(2 * b, b), nn.Upsample(scale_factor=2.0, mode="nearest"), _Res(b, b),
            nn.GroupNorm(8, b), nn.SiLU(), nn.Conv2d(b, cfg.in_channels, 3, padding=1))
        self.register_buffer("scale", torch.tensor(1.0))  # set by measure_scale

    def check_images(self, x: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (cfg.in_channels, cfg.image_size, cfg.image_size):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"this autoencoder takes images of shape (B, {cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}), got {shape}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [-1, 1] -> mean, logvar (B, c, h, w) of q(z | x)."""
        self.check_images(x)
        pad = self.config.padded_size - self.config.image_size
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)  # background is -1
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, c, h, w) -> images (B, C, H, W) (the padding cropped off; not clipped)."""
        if z.ndim != 4 or tuple(z.shape[1:]) != self.config.latent_shape:
            raise ValueError(f"this autoencoder decodes latents of shape (B, {', '.join(map(str, self.config.latent_shape))}), "
                             f"got {tuple(z.shape)}")
        pad, size = self.config.padded_size - self.config.image_size, self.config.image_size
        return self.decoder(z)[:, :, pad // 2: pad // 2 + size, pad // 2: pad // 2 + size]

    def forward(self, x: torch.Tensor, generator=None):
        """(reconstruction of a z drawn from q(z | x), mean, logvar)."""
        mean, logvar = self.encode(x)
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=generator, device=mean.device)
        return self.decode(z), mean, logvar

    @torch.no_grad()
    def to_latent(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """What diffusion runs on: the mean of q(z | x), times `scale` (about unit standard deviation)."""
        return torch.cat([self.encode(x[i: i + batch_size])[0] for i in range(0, len(x), batch_size)]) * self.scale

    @torch.no_grad()
    def to_image(self, z: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """The inverse of `to_latent`: divide by `scale`, decode, clip to [-1, 1]."""
        return torch.cat([self.decode(z[i: i + batch_size] / self.scale) for i in range(0, len(z), batch_size)]).clamp(-1, 1)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per element: (mean^2 + exp(logvar) - 1 - logvar) / 2."""
    return 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar)


def autoencoder_loss(model: Autoencoder, x: torch.Tensor, kl_weight: float, generator=None) -> tuple[torch.Tensor, dict]:
    """L1 reconstruction error per pixel + kl_weight * KL per latent element; returns (loss, {"l1", "kl"})."""
    recon, mean, logvar = model(x, generator)
    l1, kl = (recon - x).abs().mean(), kl_divergence(mean, logvar).mean()
    return l1 + kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}


@torch.no_grad()
def measure_scale(model: Autoencoder, images: torch.Tensor) -> float:
    """1 / std of the latent means over `images` (all elements pooled), stored in `model.scale`; returns it."""
    model.scale.fill_(1.0)
    scale = 1.0 / model.to_latent(images).std().item()
    model.scale.fill_(scale)
    return scale


@dataclass
class AutoencoderTrainConfig:
    preset: str = "mnist"  # AutoencoderConfig preset (PRESETS): "mnist" (1x28x28 -> 4x8x8) or "rgb32" (3x32x32 -> 4x8x8)
    latent_channels: int = 0  # channels of the latent (0 = the preset's)
    kl_weight: float = 1e-4  # weight of the KL term per latent element against the L1 error per pixel
    dataset: str = "mnist"  # the data set, by name (data.DATASETS)
    data_dir: str = ""  # "folder": the folder or .zip of images; others: torchvision's data folder ("" = the default)
    data_source: str = "auto"  # MNIST's source: "auto", "torchvision" or "bundled"
    batch_size: int = 64  # images per step
    lr: float = 1e-3  # Adam learning rate (constant)
    max_steps: int = 3000  # total optimizer steps
    checkpoint_every: int = 500  # write out_dir/autoencoder.pt every this many steps (and at the end)
    seed: int = 0  # seeds the data order, the latent noise and the initial weights

    def __post_init__(self):
        from .data import DATASETS

        if self.preset not in PRESETS or self.dataset not in DATASETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)} and dataset one of {tuple(DATASETS)}, "
                             f"got {self.preset!r} and {self.dataset!r}")
        if min(self.batch_size, self.max_steps, self.checkpoint_every) < 1 or self.kl_weight < 0 or self.lr <= 0:
            raise ValueError("batch_size, max_steps, checkpoint_every must be >= 1, kl_weight >= 0 and lr > 0")


def train_autoencoder(config: AutoencoderTrainConfig, out_dir, resume: bool = False, progress: bool = True, device=None) -> dict:
    """Train an autoencoder; write `out_dir/autoencoder.pt` (weights, measured scale, state to resume exactly) and
    `reconstructions.png` (held-out digits over their reconstructions). Returns {"model", "history", "recon_l1",
    "checkpoint"}; "recon_l1" is the mean |x - decode(encode(x))| on held-out images, in [-1, 1] units."""
    from .config import get_device
    from .data import StepBatchSampler, load_dataset

    out_dir, device = Path(out_dir), get_device(device)
    path = out_dir / "autoencoder.pt"
    data = load_dataset(config.dataset, root=config.data_dir or None, source=config.data_source)
    images = data.tensors()[0]
    overrides = {"latent_channels": config.latent_channels} if config.latent_channels else {}
    base = PRESETS[config.preset]
    overrides |= {"image_size": data.image_size, "in_channels": data.channels,
                  "padded_size": max(base.padded_size, -(-data.image_size // 4) * 4)}
    torch.manual_seed(config.seed)
    model = Autoencoder(dataclasses.replace(base, **overrides)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator(device).manual_seed(config.seed)
    step, history = 0, []
    if resume:
        saved = torch.load(path, map_location=device, weights_only=True)
        if saved["train_config"] != dataclasses.asdict(config) | {"max_steps": saved["train_config"]["max_steps"]}:
            raise ValueError(f"{path} was trained with a different AutoencoderTrainConfig: {saved['train_config']}")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        gen.set_state(saved["rng"].to("cpu"))
        step, history = saved["step"], [tuple(h) for h in saved["history"]]

    def checkpoint():
        model.eval()
        measure_scale(model, images.to(device))
        model.train()
        save_autoencoder(path, model, step=step, dataset=data.info(),
                         extra={"train_config": dataclasses.asdict(config), "optimizer": optimizer.state_dict(),
                                "rng": gen.get_state(), "history": [list(h) for h in history]})

    sampler = StepBatchSampler(len(data), config.batch_size, config.seed, step, config.max_steps)
    bar = tqdm(total=config.max_steps, initial=step, disable=not progress, desc="autoencoder")
    model.train()
    start = time.perf_counter()
    for idx in sampler:
        loss, parts = autoencoder_loss(model, images[idx].to(device), config.kl_weight, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        history.append((step, parts["l1"], parts["kl"]))
        bar.update(1)
        bar.set_postfix(l1=f"{parts['l1']:.4f}", kl=f"{parts['kl']:.2f}", refresh=False)
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            checkpoint()
    bar.close()
    model.eval()
    held_out = load_dataset(config.dataset, train=False, root=config.data_dir or None, source=config.data_source)
    test = held_out.tensors()[0][torch.randperm(len(held_out), generator=torch.Generator().manual_seed(0))[:500]].to(device)
    recon_l1 = (model.to_image(model.to_latent(test)) - test).abs().mean().item()
    from torchvision.utils import save_image

    pairs = torch.stack([test[:50], model.to_image(model.to_latent(test[:50]))], 1).flatten(0, 1)  # originals over reconstructions
    save_image((pairs.cpu() + 1) / 2, out_dir / "reconstructions.png", nrow=20)
    if progress:
        print(f"{step} steps in {time.perf_counter() - start:.0f} s; held-out L1 {recon_l1:.4f}; latent {model.config.latent_shape}, "
              f"scale {model.scale.item():.4f}; wrote {path}")
    return {"model": model, "history": history, "recon_l1": recon_l1, "checkpoint": path}


def save_autoencoder(path, model: Autoencoder, *, step: int = 0, dataset: dict | None = None, extra: dict | None = None) -> Path:
    """Write the autoencoder (config, weights with the measured scale, data set record, extra plain values) atomically."""
    data = {"format": FORMAT, "config": dataclasses.asdict(model.config), "model": model.state_dict(),
            "scale": model.scale.item(), "step": int(step), "dataset": dataset or {}, **(extra or {})}
    from .checkpoints import atomic_save

    return atomic_save(data, path)


def export_autoencoder(path, out) -> Path:
    """An autoencoder file without its optimizer and RNG states (the bundled format): weights, scale, train config."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    model = load_autoencoder(str(path))
    extra = {"train_config": data.get("train_config", {}), "history": data.get("history", [])[-1:]}
    return save_autoencoder(out, model, step=data["step"], dataset=data["dataset"], extra=extra)


def resolve(name_or_path: str) -> tuple[Path, str | None]:
    """(file, expected SHA-256 or None) of a bundled autoencoder's name or a path."""
    if name_or_path in PRETRAINED:
        entry = PRETRAINED[name_or_path]
        return ASSETS / entry["file"], entry["sha256"] or None
    return Path(name_or_path), None


def load_autoencoder(name_or_path: str = "mnist", device="cpu", sha256: str | None = None) -> Autoencoder:
    """A bundled autoencoder by name (SHA-256 checked) or one written by `train_autoencoder`, in eval mode.
    `sha256`: the digest the file must have (what a latent model's checkpoint recorded for its autoencoder)."""
    from .checkpoints import sha256 as digest_of

    path, expected = resolve(name_or_path)
    expected = sha256 or expected
    if not path.is_file():
        raise FileNotFoundError(f"no autoencoder at {path}: give the path of a file written by `ddpm train-autoencoder` "
                                f"(OUT/autoencoder.pt) or a bundled name {tuple(PRETRAINED)}")
    if expected and digest_of(path) != expected:
        raise ValueError(f"{path} has SHA-256 {digest_of(path)[:16]}..., expected {expected[:16]}...: it is not the "
                         "autoencoder this was made with (retrained or replaced); its latents would mean something else")
    data = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an autoencoder written by ddpm_utils (expected format {FORMAT!r})")
    model = Autoencoder(AutoencoderConfig(**data["config"])).to(device)
    model.load_state_dict(data["model"])
    model.dataset = data["dataset"]
    return model.eval().requires_grad_(False)

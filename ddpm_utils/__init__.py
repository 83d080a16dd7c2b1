"""ddpm_utils: the small, tested library behind the DDPM course notebooks.

One module per concept: schedules, diffusion (forward process, posterior, what the network predicts,
losses, bound), samplers (DDPM, DDIM, DPM-Solver++, Euler, Heun, ancestral Euler: small functions over one
denoiser), guidance (classifier-free and classifier), embeddings, unet, data, checkpoints, config.
How to add a data set, an objective or a sampler: CONTRIBUTING.md.
"""

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

from .checkpoints import load_checkpoint, load_pretrained, save_checkpoint
from .config import fast_mode, get_device, seed_everything
from .data import load_mnist
from .diffusion import GaussianDiffusion, extract
from .embeddings import sinusoidal_embedding
from .guidance import guided_eps
from .samplers import ddim_step, ddpm_step, sample
from .schedules import cosine_betas, linear_betas, make_betas
from .unet import UNet, UNetConfig

__all__ = [
    "GaussianDiffusion", "UNet", "UNetConfig", "cosine_betas", "ddim_step", "ddpm_step", "extract",
    "fast_mode", "get_device", "guided_eps", "linear_betas", "load_checkpoint", "load_mnist",
    "load_pretrained", "make_betas", "sample", "save_checkpoint", "seed_everything", "sinusoidal_embedding",
]

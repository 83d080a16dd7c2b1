"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with weights_only=True.

A checkpoint records the UNet config and the schedule, so loading rebuilds the same model
and diffusion, and refuses a model or diffusion that does not match. Bundled weights
(`PRETRAINED`) carry a SHA-256 that is checked before loading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .diffusion import GaussianDiffusion
from .flow import FlowMatching
from .unet import UNet, UNetConfig

FORMAT = "ddpm_utils.checkpoint/1"
ASSETS = Path(__file__).resolve().parent / "assets"
# name -> {"file": file name in assets/, "sha256": hex digest}. A bundled file stores the EMA
# weights as its "model" weights (and no optimizer), to stay small.
PRETRAINED: dict[str, dict[str, str]] = {
    # `small` preset predicting v, 7,200 steps on the 2-core CPU (see README): 100 % of 1,000 guided samples (s = 3) classified as asked
    "mnist": {"file": "ddpm_mnist.pt", "sha256": "9b090933142775ef3e6c0787fe767cec4a6b6defd6b905582194a02de2ec5e10"},
}


PROCESS_NAMES = {"diffusion": "diffusion (DDPM)", "flow": "flow-matching"}


@dataclass
class Checkpoint:
    model: UNet  # rebuilt (or given) model with the saved weights loaded
    diffusion: GaussianDiffusion | FlowMatching  # rebuilt (or given) process: the saved schedule, or the flow path
    step: int  # training step at which it was saved
    data: dict  # everything saved: "optimizer", "ema", "extra" (RNG states, train config, ...)

    @property
    def dataset(self) -> dict:
        """{"name", "class_names", "channels", "image_size"} of the training data (see `dataset_info`)."""
        return dataset_info(self.data, self.model.config)

    @property
    def autoencoder(self) -> dict | None:
        """A latent model's record of its autoencoder ({"file", "sha256", "scale", "latent_shape", "image_shape"}), or None."""
        return self.data.get("autoencoder")


def _state(obj):
    return obj.state_dict() if isinstance(obj, (nn.Module, torch.optim.Optimizer)) else obj


def save_checkpoint(path, model: UNet, diffusion: GaussianDiffusion | FlowMatching, *, step: int = 0, ema=None, optimizer=None, extra=None,
                    dataset: dict | None = None, autoencoder: dict | None = None) -> Path:
    """Save model (and optional EMA model, optimizer, extra plain values) to `path`, atomically.

    `dataset` records the training data ({"name", "class_names", "channels", "image_size"}, as
    `data.ImageTensors.info()` gives it), so that sampling by class name never needs the data. A latent model
    (notebook 12) records its `autoencoder` (`latent.autoencoder_record`: file, SHA-256, scale and shapes).

    The file is written next to `path` and renamed over it, so a crash mid-write leaves the
    previous checkpoint intact.
    """
    data = {
        "format": FORMAT,
        "unet_config": dataclasses.asdict(model.config),
        "process": diffusion.process,  # "diffusion" (GaussianDiffusion) or "flow" (FlowMatching)
        "schedule": diffusion.schedule,  # {"name", "T", parameters} or None
        "prediction": diffusion.prediction,  # what the network predicts: a name in diffusion.PREDICTIONS
        "betas": diffusion.betas.detach().cpu() if diffusion.process == "diffusion" else torch.zeros(0),
        "step": int(step),
        "model": model.state_dict(),
        "ema": _state(ema),
        "optimizer": _state(optimizer),
        "extra": extra or {},
        "dataset": dataset or dataset_info({}, model.config),
        "autoencoder": autoencoder,  # a latent model's autoencoder (latent.autoencoder_record), or None for pixels
    }
    return atomic_save(data, path)


def atomic_save(data: dict, path) -> Path:
    """torch.save to a file next to `path`, then renamed over it: a crash mid-write leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


def dataset_info(data: dict, config: UNetConfig) -> dict:
    """The training data a checkpoint records; for files from before the record existed, MNIST's digits
    (or unnamed classes "0", "1", ...) as the model's config implies."""
    if data.get("dataset"):
        return data["dataset"]
    names = [str(i) for i in range(config.num_classes)] if config.num_classes else None
    digits = config.in_channels == 1 and config.image_size == 28 and config.num_classes in (10, None)
    return {"name": "mnist" if digits else "unknown", "class_names": names, "channels": config.in_channels,
            "image_size": config.image_size}


def _diffusion_from(data: dict) -> GaussianDiffusion | FlowMatching:
    prediction = data.get("prediction", "eps")  # checkpoints from before the choice existed predict eps
    if data.get("process", "diffusion") == "flow":
        return FlowMatching(prediction, data["schedule"]["time_sampling"], data["schedule"]["T"])
    if data["schedule"] is not None:
        return GaussianDiffusion.from_schedule(**data["schedule"], prediction=prediction)
    return GaussianDiffusion(data["betas"].double(), prediction=prediction)


def _config_diff(a: UNetConfig, b: UNetConfig) -> str:
    return ", ".join(f"{k}: checkpoint {v!r} vs model {getattr(b, k)!r}" for k, v in vars(a).items() if getattr(b, k) != v)


def load_checkpoint(path, *, model: UNet | None = None, diffusion: GaussianDiffusion | FlowMatching | None = None,
                    use_ema: bool = False, map_location="cpu") -> Checkpoint:
    """Load a checkpoint saved by `save_checkpoint`, rebuilding model and diffusion unless given.

    A given model or diffusion must match what the checkpoint records (ValueError otherwise).
    `use_ema=True` loads the EMA weights into the model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} could not be read as a checkpoint (corrupt, truncated or not a torch file): {first_line}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not a ddpm_utils checkpoint (format {found!r}, expected {FORMAT!r})")
    try:
        config = UNetConfig(**data["unet_config"])
    except TypeError as e:
        raise ValueError(f"{path} records a UNet config this version cannot build: {e}") from e
    if model is None:
        model = UNet(config)
    elif model.config != config:
        raise ValueError(f"{path} was saved from a different UNet ({_config_diff(config, model.config)})")
    state = data["ema"] if use_ema else data["model"]
    if state is None:
        raise ValueError(f"{path} holds no EMA weights; load with use_ema=False")
    model.load_state_dict(state)
    saved = _diffusion_from(data)
    if diffusion is None:
        diffusion = saved
    elif diffusion.process != saved.process:
        raise ValueError(f"{path} holds a {PROCESS_NAMES[saved.process]} model, but it was given a "
                         f"{PROCESS_NAMES[diffusion.process]}: "
                         "the network learned to read x_t on its own path (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps at code t "
                         "for a diffusion; (1 - t) x0 + t z at 1000 t for a flow), so on the other one its answers mean "
                         "nothing; load it without a diffusion to get its own")
    elif diffusion.process == "diffusion" and (diffusion.num_timesteps != saved.num_timesteps
                                               or not torch.allclose(diffusion.betas.cpu(), saved.betas, rtol=1e-6, atol=0)):
        raise ValueError(
            f"{path} was trained with schedule {data['schedule'] or 'custom betas'} (T={saved.num_timesteps}), "
            f"which differs from the given diffusion ({diffusion.schedule or 'custom betas'}, T={diffusion.num_timesteps})"
        )
    elif diffusion.prediction != saved.prediction:
        raise ValueError(f"{path} holds a model that predicts {saved.prediction!r}, but the given diffusion reads "
                         f"its output as {diffusion.prediction!r}")
    return Checkpoint(model.to(map_location), diffusion.to(map_location), data["step"], data)


def export_weights(checkpoint, out) -> Path:
    """A training checkpoint's EMA weights as a small file in the bundled format: the EMA weights as "model", no
    optimizer or RNG states, with the step, the data set and the train config (`ddpm export`)."""
    ckpt = load_checkpoint(checkpoint, use_ema=True)
    extra = {"train_config": ckpt.data["extra"].get("train_config", {})}
    return save_checkpoint(out, ckpt.model, ckpt.diffusion, step=ckpt.step, extra=extra, dataset=ckpt.dataset,
                           autoencoder=ckpt.autoencoder)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_pretrained(name: str = "mnist", device="cpu"):
    """Bundled pretrained (model, diffusion): EMA weights, eval mode, on `device`, no internet needed."""
    if name not in PRETRAINED:
        raise ValueError(f"no bundled weights named {name!r}; available: {sorted(PRETRAINED) or 'none yet'}")
    entry = PRETRAINED[name]
    path = ASSETS / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"bundled weights {path} are missing; reinstall ddpm_utils")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(f"{path} has SHA-256 {digest[:16]}..., expected {entry['sha256'][:16]}...: the file is corrupt or was replaced")
    ckpt = load_checkpoint(path, map_location=device)  # bundled files store the EMA weights as "model"
    return ckpt.model.eval(), ckpt.diffusion

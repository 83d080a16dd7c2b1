"""The training loop (Ho et al. 2020, Algorithm 1), readable in one sitting.

AdamW with linear warm-up and an optional cosine decay, gradient clipping, an EMA of the weights, mixed precision where it
helps, classifier-free-guidance label dropout, a progress bar with loss and images/s, periodic
sample grids, and checkpoints written atomically every `checkpoint_every` steps.

Resuming is exact: the data order is a pure function of (seed, step), and the checkpoint holds
the optimizer, the EMA, the loss history and every RNG state, so N steps + resume + N steps gives
the same weights as 2N steps straight (on the CPU). Several processes under `torchrun` train one
model with DistributedDataParallel; only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .autoencoder import load_autoencoder
from .checkpoints import load_checkpoint, save_checkpoint
from .config import get_device
from .data import DATASETS, StepBatchSampler, load_dataset
from .diffusion import PREDICTIONS, WEIGHTINGS, GaussianDiffusion
from .flow import PROCESSES, TIME_SAMPLINGS, FlowMatching
from .latent import autoencoder_record, condition, num_labels, prepare, to_pixels
from .prompts import P_DROP_WORD, PROMPT_LEN, drop_words
from .samplers import sample
from .unet import PRESETS, UNet, UNetConfig


@dataclass
class TrainConfig:
    preset: str = "mnist"  # UNet preset (notebook 04): "tiny" for tests, "small" for a CPU, "mnist" for a GPU
    unet: dict = field(default_factory=dict)  # overrides of the preset's UNetConfig fields, e.g. {"dropout": 0.0}
    schedule: str = "cosine"  # noise schedule name (schedules.make_betas); a diffusion's (a flow's path has none)
    T: int = 1000  # diffusion steps (a flow: the Euler steps of sampling with all steps)
    batch_size: int = 128  # images per step (per process under torchrun)
    lr: float = 2e-4  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 200  # steps of linear learning-rate warm-up from 0
    lr_decay_steps: int = 0  # cosine decay of the learning rate to lr / 10 at this step, constant after it (0 = no decay)
    max_steps: int = 10_000  # total optimizer steps
    grad_clip: float = 1.0  # clip the gradient norm to this (0 = off)
    ema_decay: float = 0.999  # EMA: ema = decay * ema + (1 - decay) * weights, every step
    ema_warmup: bool = False  # use decay min(ema_decay, (1 + step) / (10 + step)): the average soon forgets the initial weights
    p_uncond: float = 0.1  # probability of replacing a label by the null label (classifier-free guidance)
    amp: str = "auto"  # "auto" (bf16 if supported, else fp16 on CUDA, off on CPU), "bf16", "fp16" or "off"
    checkpoint_every: int = 500  # write out_dir/last.pt every this many steps (and at the end)
    keep_every: int = 0  # also keep the EMA weights every this many steps as out_dir/step_NNNNNN.pt, for a learning curve (0 = off)
    sample_every: int = 0  # write a sample grid every this many steps (0 = only at the end)
    sample_steps: int = 50  # DDIM steps for the sample grids
    num_workers: int = 0  # DataLoader worker processes
    data_source: str = "auto"  # MNIST's source: "auto", "torchvision" or "bundled" (data.load_mnist)
    dataset: str = "mnist"  # the data set to train on, by name (data.DATASETS, read by load_dataset)
    data_dir: str = ""  # "folder": the folder or .zip of images; others: torchvision's data folder ("" = the default)
    image_size: int = 0  # train at this size in pixels (0 = the data set's own: data.DATASETS)
    channels: int = 0  # folders: 1 (grayscale) or 3 (RGB); 0 = RGB unless every image is grayscale
    hflip: bool | None = None  # random horizontal flips of the training images (None = the data set's own: data.DATASETS)
    val_every: int = 0  # validation loss on held-out images every this many steps (0 = off)
    seed: int = 0  # seeds the data order, the noise and the initial weights
    process: str = "diffusion"  # "diffusion" (GaussianDiffusion, notebooks 02-10) or "flow" (flow.FlowMatching, notebook 11)
    time_sampling: str = "uniform"  # flow only: how t is drawn, "uniform" or "logit-normal" (Esser et al. 2024)
    prediction: str = ""  # what the UNet predicts: a name in diffusion.PREDICTIONS ("" = "eps", or "velocity" for a flow)
    learned_variance: bool = False  # also learn the reverse variance, trained with L_hybrid (Nichol & Dhariwal 2021)
    loss_weighting: str = "none"  # "none" (plain squared error of the target) or "min-snr" (Hang et al. 2023, gamma 5)
    hybrid_lambda: float = 0.001  # lambda in L_hybrid = L_simple + lambda L_vlb (with learned_variance only)
    latent: str = ""  # diffuse in this autoencoder's latent space (notebook 12): a bundled name ("mnist") or OUT/autoencoder.pt
    prompts: bool = False  # condition on measured prompts ("thick slanted 7") by cross-attention instead of labels (notebook 12)

    @property
    def network_target(self) -> str:
        """What the network predicts: `prediction`, or for "" the process's own (eps; velocity for a flow). Resolved
        here, not stored, so that `dataclasses.replace(config, process="flow")` gets the flow's own."""
        return _network_target(dataclasses.asdict(self))

    def __post_init__(self):
        for name in ("batch_size", "max_steps", "T", "checkpoint_every", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_decay_steps", "keep_every"):  # 0 = off
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")
        if not 0.0 <= self.ema_decay < 1.0 or not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) and p_uncond in [0, 1], got {self.ema_decay}, {self.p_uncond}")
        if self.process not in PROCESSES or self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"process must be one of {PROCESSES} and time_sampling one of {TIME_SAMPLINGS}, got "
                             f"{self.process!r} and {self.time_sampling!r}")
        if self.process == "flow" and self.learned_variance:
            raise ValueError("learned_variance is for a diffusion's reverse chain; a flow (process='flow') has none")
        if self.process == "diffusion" and self.time_sampling != "uniform":
            raise ValueError(f"time_sampling={self.time_sampling!r} is a flow's (process='flow'); a diffusion draws its "
                             "integer t uniformly")
        if self.network_target not in PREDICTIONS or self.loss_weighting not in WEIGHTINGS:
            raise ValueError(f"prediction must be one of {tuple(PREDICTIONS)} and loss_weighting one of {WEIGHTINGS}, "
                             f"got {self.prediction!r} and {self.loss_weighting!r}")
        if not self.hybrid_lambda >= 0:
            raise ValueError(f"hybrid_lambda must be >= 0, got {self.hybrid_lambda}")
        if "learned_variance" in self.unet:
            raise ValueError("set TrainConfig.learned_variance, not unet['learned_variance']")
        if {"image_size", "in_channels"} & set(self.unet):
            raise ValueError("the image size and channels come from the data: set TrainConfig.image_size / channels, not unet[...]")
        if {"latent", "context_len"} & set(self.unet):
            raise ValueError("set TrainConfig.latent / prompts, not unet['latent'] / unet['context_len']")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {self.dataset!r}")
        if self.dataset == "folder" and not self.data_dir:
            raise ValueError("dataset 'folder' needs data_dir: a folder of images (class sub-folders = labels) or a .zip of one")
        if self.prompts and self.hflip:
            raise ValueError("prompts=True words each image's measured slant, which a horizontal flip would reverse: leave hflip off")
        if self.latent and (self.hflip or self.image_size):
            raise ValueError("a latent model (latent=...) trains on its autoencoder's latents of the data at their own size: "
                             "leave hflip and image_size unset")
        if self.val_every < 0 or self.image_size < 0 or self.channels not in (0, 1, 3):
            raise ValueError(f"val_every and image_size must be >= 0 and channels 0, 1 or 3, got {self.val_every}, "
                             f"{self.image_size}, {self.channels}")


def make_process(config: TrainConfig):
    """The process `config` trains on: a `GaussianDiffusion` of its schedule, or a `FlowMatching` path."""
    if config.process == "flow":
        return FlowMatching(config.network_target, config.time_sampling, config.T)
    return GaussianDiffusion.from_schedule(config.schedule, config.T, prediction=config.network_target)


def _network_target(fields: dict) -> str:
    """What a config's network predicts: its `prediction`, or ("") its process's own (eps, or velocity for a flow)."""
    return fields["prediction"] or ("velocity" if fields["process"] == "flow" else "eps")


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `setting` on `device`, or None for full precision."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    # bf16 needs Ampere (compute capability 8) or newer; torch.cuda.is_bf16_supported() also says
    # yes to the slow emulation on older GPUs such as Colab's T4, so ask for the capability instead.
    if setting == "bf16" or (setting == "auto" and torch.cuda.get_device_capability(device)[0] >= 8):
        return torch.bfloat16
    return torch.float16  # older GPUs such as Colab's T4; needs the gradient scaler


MAX_SKIPPED_STEPS = 20  # fp16: consecutive overflowing steps the scaler may skip before the run counts as diverged


def optimizer_step(loss, model, optimizer, scheduler, scaler, grad_clip: float) -> bool:
    """Backward, clip, step. With fp16 the gradient scaler skips a step whose gradients overflowed
    (and lowers its scale); the learning-rate schedule then does not advance either, so the
    warm-up counts real updates. Returns whether the weights were updated."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    stepped = not scaler.is_enabled() or scaler.get_scale() >= scale  # the scale drops exactly when a step was skipped
    if stepped:
        scheduler.step()
    return stepped


LR_FLOOR = 0.1  # lr_decay_steps: the cosine decay ends at this fraction of the peak learning rate


def lr_factor(config: TrainConfig, step: int) -> float:
    """The learning rate at `step` as a fraction of `config.lr`: linear warm-up from 0 over `warmup_steps`, then
    (with `lr_decay_steps`) half a cosine down to LR_FLOOR at `lr_decay_steps`, constant after it. A function of
    the step alone, so a run extended by `--resume --max-steps` keeps the schedule it started with."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if not config.lr_decay_steps:
        return warm
    done = min(1.0, step / config.lr_decay_steps)
    return warm * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * done)))


def ema_decay_at(config: TrainConfig, step: int) -> float:
    """The EMA decay used after `step` updates. With `ema_warmup`, min(decay, (1 + step) / (10 + step)), as in
    TensorFlow's ExponentialMovingAverage(num_updates=step): the first averages follow the weights closely, so
    a high decay does not leave the random initial weights in the average of a short run."""
    return min(config.ema_decay, (1 + step) / (10 + step)) if config.ema_warmup else config.ema_decay


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)  # e = decay * e + (1 - decay) * p
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


VAL_IMAGES, VAL_TIMESTEPS = 256, 8  # the validation loss: this many held-out images, each at this many timesteps


def load_data(config: TrainConfig, train: bool = True):
    """The data set that `config` names (train or held-out split)."""
    return load_dataset(config.dataset, train, root=config.data_dir or None, image_size=config.image_size or None,
                        source=config.data_source, channels=config.channels or None)


def fixed_subset(dataset, n: int = VAL_IMAGES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of `dataset` picked by a seeded permutation (all if fewer): (images (n, C, H, W), labels (n,))."""
    images, labels = dataset.tensors()
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx], labels[idx]


@torch.no_grad()
def fixed_grid_loss(model, diffusion, x0: torch.Tensor, y: torch.Tensor | None, seed: int = 0, batch_size: int = 256) -> float:
    """L_simple (the unweighted loss of the network's target) averaged over x0 at VAL_TIMESTEPS evenly spaced
    timesteps (flow times, for a flow) with noise fixed by `seed`: the same weights always give the same value, so
    successive values of a run differ only because the weights did. Dropout is off while it runs."""
    device, was_training = next(iter(diffusion.buffers())).device, model.training
    grid = (torch.arange(VAL_TIMESTEPS) + 0.5) / VAL_TIMESTEPS  # flow time t; a diffusion's code t is T times it
    grid = grid if diffusion.process == "flow" else (grid * diffusion.num_timesteps).long()
    g = torch.Generator().manual_seed(seed)
    model.eval()
    total = 0.0
    for t in grid.tolist():
        noise = torch.randn(x0.shape, generator=g)
        for i in range(0, len(x0), batch_size):
            xb, nb = x0[i: i + batch_size].to(device), noise[i: i + batch_size].to(device)
            yb = None if y is None else y[i: i + batch_size].to(device)
            tb = torch.full((len(xb),), t, device=device)
            total += diffusion.training_loss(model, xb, yb, t=tb, noise=nb, hybrid_lambda=0.0).item() * len(xb)
    model.train(was_training)
    return total / (len(x0) * len(grid))


def sample_grid(model, diffusion, steps: int, seed: int = 0, autoencoder=None) -> torch.Tensor:
    """100 samples for a 10 x 10 grid: row k asks for class k (guidance scale 3, DDIM; classes repeat if
    there are fewer than 10), for a class-conditional model (a prompt model: the class word); unconditional
    samples otherwise. A latent model's samples are decoded by its `autoencoder`."""
    num_classes = num_labels(model)
    y = condition(model, (torch.arange(100) // 10) % num_classes) if num_classes else None
    x = sample(model, diffusion, (100, model.config.in_channels, model.config.image_size, model.config.image_size),
               num_steps=steps, y=y, guidance_scale=3.0 if y is not None else 1.0,
               generator=torch.Generator().manual_seed(seed), progress=False)
    return to_pixels(x, autoencoder)


def save_sample_grid(model, diffusion, path, steps: int, seed: int = 0, autoencoder=None) -> Path:
    """`sample_grid` written to the PNG file `path`."""
    from torchvision.utils import save_image

    save_image((sample_grid(model, diffusion, steps, seed, autoencoder) + 1) / 2, path, nrow=10)
    return Path(path)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group when run under torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def train(config: TrainConfig, out_dir, resume: bool = False, device=None, progress: bool = True, callback=None) -> dict:
    """Train a UNet on the data set `config` names; write `out_dir/last.pt`, `samples.png` and `loss.png`.

    With `resume=True`, continue exactly from `out_dir/last.pt`. `callback(step, history, val_history)`,
    if given, is called on rank 0 after every step (a live loss plot, for example). Returns {"model", "ema",
    "diffusion", "history" (list of (step, loss)), "val_history" (list of (step, training-image loss,
    held-out loss), both `fixed_grid_loss` of the weights being trained, every `val_every` steps),
    "dataset" (the training data), "checkpoint" (path)}.
    """
    out_dir = Path(out_dir)
    rank, world, local_rank = _distributed()
    device = torch.device(f"cuda:{local_rank}") if world > 1 and torch.cuda.is_available() else get_device(device)
    main = rank == 0
    images = load_data(config, train=True)
    autoencoder, ae_record = None, None
    if config.latent:
        autoencoder = load_autoencoder(config.latent, device=device)
        ae_record = autoencoder_record(config.latent, autoencoder)
    dataset = prepare(images, autoencoder, config.prompts)  # latents and/or prompts, if asked; else the images
    if config.val_every:
        held_out = prepare(load_data(config, train=False), autoencoder, config.prompts)
        val_sets = [fixed_subset(dataset, seed=config.seed), fixed_subset(held_out, seed=config.seed)]
        val_sets = [(x, y if dataset.num_classes else None) for x, y in val_sets]
    hflip = config.hflip if config.hflip is not None else DATASETS[config.dataset].hflip and not (config.latent or config.prompts)
    torch.manual_seed(config.seed)  # the initial weights

    unet = {"image_size": dataset.image_size, "in_channels": dataset.channels, "num_classes": dataset.num_classes,
            "learned_variance": config.learned_variance, **config.unet}
    if config.prompts:
        unet["context_len"] = PROMPT_LEN
    if config.latent:
        unet["latent"] = True  # unbounded latents: the samplers must not clip x0 to [-1, 1]
    if config.latent and "attention_resolutions" not in config.unet:  # attention is cheap on an 8x8 latent: every level
        unet["attention_resolutions"] = tuple(dataset.image_size // 2**i for i in range(len(PRESETS[config.preset].channel_mults)))
    try:
        unet_config = UNetConfig.preset(config.preset, **unet)
    except ValueError as e:
        if not config.latent:
            raise
        raise ValueError(f"the autoencoder's latents are {'x'.join(map(str, ae_record['latent_shape']))}, which preset "
                         f"{config.preset!r} cannot take ({e}); use an autoencoder whose latent can be halved as often (a larger "
                         "padded_size) or fewer UNet levels (unet={'channel_mults': ...})") from None
    model = UNet(unet_config).to(device)
    diffusion = make_process(config).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
    noise_gen = torch.Generator(device).manual_seed(config.seed * 1_000 + rank)  # t, eps and label dropout
    step, history, val_history, path, scaler_state = 0, [], [], out_dir / "last.pt", None

    if resume:
        ckpt = load_checkpoint(path, model=model, diffusion=diffusion, map_location=device)
        saved = ckpt.data["extra"]
        then = {**dataclasses.asdict(TrainConfig()), **saved["train_config"]}  # fields added since: their defaults
        now = dataclasses.asdict(config)
        now["prediction"], then["prediction"] = _network_target(now), _network_target(then)  # "" and its meaning agree
        changed = {k: (v, then[k]) for k, v in now.items()
                   if k not in ("max_steps", "val_every", "keep_every") and then[k] != v}  # these leave the weights alone
        if changed:
            raise ValueError(f"{path} was trained with a different TrainConfig (now vs then): {changed}. To train with "
                             f"the new settings, start afresh in another run folder (or delete {path}); to continue, use the old ones")
        if ae_record and ckpt.data.get("autoencoder", {}).get("sha256") != ae_record["sha256"]:
            raise ValueError(f"{path} was trained on the latents of another autoencoder than {config.latent} (its SHA-256 "
                             "differs): its latents mean something else; start afresh in another run folder")
        ema.load_state_dict(ckpt.data["ema"])
        optimizer.load_state_dict(ckpt.data["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if len(saved["noise_rng"]) != world:
            raise ValueError(f"{path} was written by {len(saved['noise_rng'])} processes; resume with as many, not {world}")
        noise_gen.set_state(saved["noise_rng"][rank].to("cpu"))
        scaler_state = saved["scaler"]
        torch.set_rng_state(saved["torch_rng"])  # dropout
        if device.type == "cuda" and saved["cuda_rng"] is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        step, history = ckpt.step, [tuple(h) for h in saved["history"]]
        val_history = [tuple(h) for h in saved.get("val_history", [])]
        if main:
            print(f"resuming from {path} at step {step}")

    def rng_states():
        return noise_gen.get_state(), torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def checkpoint(rngs):
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise FloatingPointError(f"weights are not finite at step {step}; not saved over {path}. Try a lower lr.")
        noise_rng, torch_rng, cuda_rng = rngs
        states = [noise_rng]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, noise_rng)
        extra = {"train_config": dataclasses.asdict(config), "scheduler": scheduler.state_dict(), "noise_rng": states,
                 "scaler": scaler.state_dict(), "torch_rng": torch_rng, "cuda_rng": cuda_rng,
                 "history": [list(h) for h in history], "val_history": [list(h) for h in val_history]}
        if main:
            save_checkpoint(path, model, diffusion, step=step, ema=ema, optimizer=optimizer, extra=extra, dataset=dataset.info(),
                            autoencoder=ae_record)

    def write_figures(sample_file):
        from .viz import loss_figure

        save_sample_grid(ema, diffusion, out_dir / sample_file, config.sample_steps, autoencoder=autoencoder)
        loss_figure(history, val_history).savefig(out_dir / "loss.png", dpi=100)

    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, step, config.max_steps, rank, world)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # its own RNG, so iterating it leaves the dropout RNG alone
    net = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None) if world > 1 else model
    dtype = amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if scaler_state:
        scaler.load_state_dict(scaler_state)
    bar = tqdm(total=config.max_steps, initial=step, disable=not (progress and main), desc="training")

    model.train()
    updating = False  # True while the optimizer step is half applied: no consistent state to save
    skipped_in_a_row = 0  # fp16 steps skipped by the gradient scaler for a non-finite loss
    rngs_at_start = rng_states()
    try:
        for x0, y in loader:
            start, rngs_at_start = time.perf_counter(), rng_states()
            x0, y = x0.to(device, non_blocking=True), y.to(device, non_blocking=True) if model.num_classes else None
            if config.prompts:  # every subset of a prompt's words, drawn from the run's own generator
                y = drop_words(y, P_DROP_WORD, model.num_classes, noise_gen)
            if hflip:  # drawn from the run's own generator, so resuming replays the same flips
                flip = torch.rand(x0.shape[0], generator=noise_gen, device=device) < 0.5
                x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = diffusion.training_loss(net, x0, y, p_uncond=config.p_uncond, generator=noise_gen,
                                               loss_weighting=config.loss_weighting, hybrid_lambda=config.hybrid_lambda)
            skipped_in_a_row = skipped_in_a_row + 1 if not torch.isfinite(loss) else 0
            if skipped_in_a_row and (not scaler.is_enabled() or skipped_in_a_row > MAX_SKIPPED_STEPS):
                # With fp16 the scaler skips an overflowing step (below) and lowers its scale; anything
                # else non-finite, or an fp16 run that never recovers, is a diverged run.
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {step}; weights not saved. The last good checkpoint is {path} "
                    "(if any). Try a lower lr, amp='off' or a smaller grad_clip."
                )
            updating = True
            optimizer_step(loss, model, optimizer, scheduler, scaler, config.grad_clip)
            update_ema(ema, model, ema_decay_at(config, step))
            step += 1
            history.append((step, loss.item()))
            updating = False
            if main and config.val_every and step % config.val_every == 0:
                val_history.append((step, *(fixed_grid_loss(model, diffusion, x, yv, seed=config.seed) for x, yv in val_sets)))
                if progress:
                    bar.write(f"step {step}: loss on training images {val_history[-1][1]:.4f}, held-out {val_history[-1][2]:.4f}")
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{x0.shape[0] * world / (time.perf_counter() - start):.0f}",
                            refresh=False)  # tqdm redraws at its own pace; forcing it floods Colab's output channel
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                checkpoint(rng_states())
            if main and config.keep_every and step % config.keep_every == 0:  # EMA weights only (as model and as EMA)
                save_checkpoint(out_dir / f"step_{step:06d}.pt", ema, diffusion, step=step, ema=ema, dataset=dataset.info(),
                                autoencoder=ae_record)
            if main and config.sample_every and step % config.sample_every == 0:
                write_figures(f"samples_{step:06d}.png")
            if main and callback is not None:
                callback(step, history, val_history)
    except (KeyboardInterrupt, Exception) as e:
        # Nothing made so far is lost: save the state at the start of the interrupted step, so that
        # resume=True replays that step exactly. (Not for a non-finite loss, and not mid-update.)
        if world == 1 and step > 0 and not updating and not isinstance(e, FloatingPointError):
            checkpoint(rngs_at_start)
            if main:
                print(f"interrupted at step {step}: saved {path}; continue with resume=True")
        raise
    finally:
        bar.close()
    if main:
        write_figures("samples.png")
    if world > 1:
        dist.barrier()  # the other ranks wait for rank 0's files before anyone shuts the process group down
    return {"model": model, "ema": ema, "diffusion": diffusion, "history": history, "val_history": val_history,
            "dataset": dataset, "checkpoint": path}

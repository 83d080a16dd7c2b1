"""Throughput: training images/s and sampling images/s of a UNet preset, measured, never asserted.

    python -m ddpm_utils bench --preset mnist --batch-sizes 32,128 [--compile]

Each row times `steps` training steps (forward, backward, AdamW) after `warmup` untimed ones,
and `steps` sampling forward passes; sampling images/s is for a 50-step DDIM run. AMP rows
appear where a GPU is present; torch.compile rows on request (compiling takes minutes on a CPU).
"""

from __future__ import annotations

import time

import torch

from .config import get_device
from .diffusion import GaussianDiffusion
from .training import amp_dtype
from .unet import UNet, UNetConfig


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, steps: int, warmup: int, device) -> float:
    """Seconds per call of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def measure(preset: str, batch: int, amp: str, compiled: bool, steps: int, warmup: int, device) -> dict:
    """Training and sampling images/s for one variant."""
    torch.manual_seed(0)
    model = UNet(UNetConfig.preset(preset)).to(device)
    net = torch.compile(model) if compiled else model
    diffusion = GaussianDiffusion.from_schedule("cosine", 1000).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    c, s = model.config.in_channels, model.config.image_size
    x0, y = torch.rand(batch, c, s, s, device=device) * 2 - 1, torch.randint(0, 10, (batch,), device=device)
    t = torch.full((batch,), 500, device=device)
    dtype = amp_dtype(amp, device)
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731

    def train_step():
        with autocast():
            loss = diffusion.training_loss(net, x0, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample_step():
        with autocast():
            net(x0, t, y)

    model.train()
    train_s = _time(train_step, steps, warmup, device)
    model.eval()
    sample_s = _time(sample_step, steps, warmup, device)
    return {"preset": preset, "device": str(device), "batch": batch, "amp": str(dtype).removeprefix("torch.") if dtype else "off",
            "compile": compiled, "train_img_s": batch / train_s, "sample_img_s": batch / (50 * sample_s)}


def benchmark(preset="mnist", batch_sizes=(32, 128), steps=5, warmup=2, device=None, compile=False) -> list[dict]:
    """One row per (batch size, amp, compile) variant; AMP rows only on a GPU, compile rows on request."""
    device = get_device(device)
    amps = ["off"] + (["auto"] if device.type == "cuda" else [])
    return [measure(preset, batch, amp, compiled, steps, warmup, device)
            for batch in batch_sizes for amp in amps for compiled in ([False, True] if compile else [False])]


def format_table(rows: list[dict]) -> str:
    lines = [f"{'preset':>7} {'device':>7} {'batch':>6} {'amp':>9} {'compile':>8} {'train img/s':>12} {'sample img/s (50 DDIM steps)':>29}"]
    for r in rows:
        lines.append(f"{r['preset']:>7} {r['device']:>7} {r['batch']:>6} {r['amp']:>9} {str(r['compile']):>8} "
                     f"{r['train_img_s']:>12.1f} {r['sample_img_s']:>29.1f}")
    return "\n".join(lines)

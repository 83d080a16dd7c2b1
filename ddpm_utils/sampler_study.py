"""The samplers compared, by network evaluations: their error against the exact ODE on notebook 10's 2-D
mixture, and the quality of the bundled model's digits. Measured and printed, never asserted.

    python -m ddpm_utils compare-samplers --exact                 # the 2-D table (seconds)
    python -m ddpm_utils compare-samplers --nfe 5,10,20 --num 200 --guidance-scale 1   # digits (minutes)

Heun takes two evaluations per step but the last (2N - 1 for N steps), every other sampler one; with
classifier-free guidance one evaluation is one forward pass on a batch of 2B, so the count is the same.
"""

from __future__ import annotations

import math

import torch

from .denoiser import Denoised
from .diffusion import GaussianDiffusion
from .evaluation import generate, proportion_interval
from .samplers import SAMPLERS, SPACINGS, noise_levels
from .toy import GaussianMixture


def steps_for(sampler: str, nfe: int) -> int:
    """The number of steps that takes at most `nfe` network evaluations."""
    return max(1, (nfe + 1) // 2) if sampler == "heun" else nfe


def notebook_mixture() -> GaussianMixture:
    """Notebook 10's data: six Gaussians (std 0.45) on a circle of radius 2."""
    angles = torch.arange(6) * math.pi / 3
    return GaussianMixture(2.0 * torch.stack([angles.cos(), angles.sin()], 1), stds=0.45, labels=[0, 1, 2, 0, 1, 2])


def exact_denoiser(mix: GaussianMixture, counter: list | None = None):
    """D(x; sigma) of the mixture, exact (Tweedie): x0 = x - sigma E[eps | x_t], with x_t = x / sqrt(1 + sigma^2)."""
    def denoise(x, sigma):
        if counter is not None:
            counter.append(sigma)
        abar = 1 / (1 + sigma**2)
        eps = mix.eps(x * abar**0.5, abar)
        return Denoised(x - sigma * eps, eps, None)
    return denoise


def ode_errors(nfes=(10, 20, 40, 80), n: int = 1000, schedule: str = "linear", seed: int = 6) -> list[dict]:
    """Mean distance of each deterministic sampler's end point to the exact probability-flow ODE solution from the
    same start at the same level (Heun with 4,000 "karras" steps, whose own error is below 1e-5 here), on notebook
    10's mixture and schedule, with the exact denoiser: the solver's error alone. Rows: sampler, spacing, steps, evaluations, error."""
    mix, diffusion = notebook_mixture(), GaussianDiffusion.from_schedule(schedule, 1000)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def run(sampler, spacing, steps, counter=None, sigma_max=None):
        levels = noise_levels(diffusion, steps, spacing, sigma_max=sigma_max)
        return SAMPLERS[sampler](exact_denoiser(mix, counter), z * (1 + levels[0].item() ** 2) ** 0.5, levels, None)

    rows = []
    for spacing in SPACINGS:  # the truth starts where the spacing starts (the schedule's top, or 80)
        truth = run("heun", "karras", 4000, sigma_max=noise_levels(diffusion, 2, spacing)[0].item())
        for sampler in ("euler", "heun", "dpm-solver++"):
            for nfe in nfes:
                counter = []
                end = run(sampler, spacing, steps_for(sampler, nfe), counter)
                rows.append({"sampler": sampler, "spacing": spacing, "steps": steps_for(sampler, nfe),
                             "evaluations": len(counter), "error": (end - truth).norm(dim=1).mean().item()})
    return rows


def format_ode_errors(rows: list[dict]) -> str:
    nfes = sorted({r["evaluations"] for r in rows if r["sampler"] != "heun"})
    lines = [f"{'sampler':<14}{'spacing':<9}" + "".join(f"{'NFE ' + str(n):>16}" for n in nfes) + f"{'order':>8}"]
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        for spacing in dict.fromkeys(r["spacing"] for r in rows):
            rs = [r for r in rows if r["sampler"] == sampler and r["spacing"] == spacing]
            cells = "".join(f"{r['error']:>10.2e} ({r['evaluations']:>2})" for r in rs)
            order = math.log(rs[-2]["error"] / rs[-1]["error"]) / math.log(rs[-1]["evaluations"] / rs[-2]["evaluations"])
            lines.append(f"{sampler:<14}{spacing:<9}{cells}{order:>8.2f}")
    return "\n".join(lines) + "\n(error (evaluations); order: from the last two columns, error ~ evaluations^-order)"


def quality_table(model, diffusion, evaluator, nfes=(5, 10, 20), num: int = 200, guidance_scale: float = 1.0,
                  seed: int = 0, samplers=None, spacings=SPACINGS, progress=print) -> list[dict]:
    """Accuracy (Wilson 95 % interval), FD (bootstrap 90 % interval) and KID of `num` class-conditional samples for each
    sampler x spacing x evaluation budget, all from the same starting noise (seed), and the real digits' row at the same n."""
    rows = [{"sampler": "real digits", "spacing": "", "evaluations": 0, **evaluator.score_real(num, seed),
             "fd_interval": evaluator.fd_interval(evaluator.real_sample(num, seed)[0])}]
    calls = []
    counted = _Counting(model, calls)
    for sampler in samplers or tuple(SAMPLERS):
        for spacing in spacings:
            for nfe in nfes:
                calls.clear()
                images, labels, seconds = generate(counted, diffusion, num, steps=steps_for(sampler, nfe),
                                                   guidance_scale=guidance_scale, seed=seed, sampler=sampler, spacing=spacing,
                                                   batch_size=num)
                score = evaluator.score(images, labels)
                rows.append({"sampler": sampler, "spacing": spacing, "evaluations": len(calls), "seconds": seconds, **score,
                             "accuracy_interval": proportion_interval(score["accuracy"], num),
                             "fd_interval": evaluator.fd_interval(images)})
                progress(format_quality(rows[-1:], header=False))
    return rows


class _Counting(torch.nn.Module):
    """`model`, counting its forward passes in `calls`."""

    def __init__(self, model, calls: list):
        super().__init__()
        self.model, self.calls, self.num_classes, self.config = model, calls, model.num_classes, model.config

    def forward(self, x, t, y=None):
        self.calls.append(1)
        return self.model(x, t, y)


def format_quality(rows: list[dict], header: bool = True) -> str:
    lines = [f"{'sampler':<16}{'spacing':<9}{'NFE':>4} {'accuracy (95 %)':>20} {'FD (90 %)':>22} {'KID':>7}"] if header else []
    for r in rows:
        acc = r.get("accuracy")
        acc_text = "-" if acc is None else f"{acc:.1%}" + (" ({:.1%}-{:.1%})".format(*r["accuracy_interval"])
                                                          if "accuracy_interval" in r else "")
        fd = f"{r['fd']:.1f} ({r['fd_interval'][0]:.1f}-{r['fd_interval'][1]:.1f})"
        lines.append(f"{r['sampler']:<16}{r['spacing']:<9}{r['evaluations'] or '':>4} {acc_text:>20} {fd:>22} {r['kid']:>7.1f}")
    return "\n".join(lines)

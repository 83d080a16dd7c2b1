"""Command line: `python -m ddpm_utils train ...` and `python -m ddpm_utils sample ...`.

    python -m ddpm_utils train --preset mnist --max-steps 10000 --out runs/mnist [--resume]
    python -m ddpm_utils sample --out digits.png [--label 3] [--guidance-scale 3] [--steps 50] [--checkpoint runs/mnist/last.pt]
    python -m ddpm_utils bench [--preset mnist] [--batch-sizes 32,128] [--compile]
    python -m ddpm_utils train-classifier --out ddpm_utils/assets/mnist_classifier.pt
    python -m ddpm_utils figures [--out images]
    python -m ddpm_utils exercises
    python -m ddpm_utils evaluate [--checkpoint PATH] [--steps 50,0] [--guidance-scale 1,3] [--num 500] [--ancestral] [--nll 100]

Runs under `torchrun --nproc_per_node=K -m ddpm_utils train ...` for several GPUs (or CPU processes).
Bad arguments and library errors are reported in one line, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

from .checkpoints import load_checkpoint, load_pretrained
from .samplers import sample
from .training import TrainConfig, train


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm_utils", description="Train and sample the course's DDPM.")
    commands = parser.add_subparsers(dest="command", required=True)

    t = commands.add_parser("train", help="train a UNet on MNIST; writes OUT/last.pt and OUT/samples.png")
    t.add_argument("--out", required=True, help="run folder (checkpoint, sample grids)")
    t.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        kind = {"int": int, "float": float, "str": str}.get(f.type)  # every plain TrainConfig field is an option
        default = getattr(defaults, f.name)
        if kind is not None:
            t.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default, help=f"(default {default})")
        elif f.type == "bool":
            t.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=default,
                           help=f"(default {default})")

    s = commands.add_parser("sample", help="draw a grid of samples to a PNG file")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--checkpoint", help="checkpoint from `train` (default: the bundled pretrained model)")
    s.add_argument("--label", type=int, help="digit 0-9 to draw (default: one row per digit)")
    s.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance scale s (default 3)")
    s.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50; 0 = all T ancestral DDPM steps)")
    s.add_argument("--num", type=int, default=100, help="number of images (default 100)")
    s.add_argument("--seed", type=int, default=0)

    e = commands.add_parser("evaluate", help="score samples with the MNIST classifier (accuracy, FD, memorisation)")
    e.add_argument("--checkpoint", help="checkpoint from `train` (default: the bundled pretrained model)")
    e.add_argument("--steps", default="50", help="comma-separated DDIM step counts; 0 = all T ancestral DDPM steps (default 50)")
    e.add_argument("--guidance-scale", default="3", help="comma-separated guidance scales (default 3)")
    e.add_argument("--unconditional", action="store_true", help="also score unconditional samples")
    e.add_argument("--ancestral", action="store_true", help="ancestral DDPM respaced to each --steps count instead of DDIM")
    e.add_argument("--nll", type=int, default=0, metavar="N",
                   help="also the bound in bits/dim on N held-out digits (all T terms: T network evaluations per digit, slow)")
    e.add_argument("--num", type=int, default=500, help="samples per setting (default 500)")
    e.add_argument("--seed", type=int, default=0)

    commands.add_parser("exercises", help="write notebooks/exercises/ from the solution notebooks")

    f = commands.add_parser("figures", help="regenerate the README's figures from the bundled model")
    f.add_argument("--out", default="images", help="folder to write (default images)")
    f.add_argument("--steps", type=int, default=50, help="DDIM steps for the sample grids (default 50)")
    f.add_argument("--gif-steps", type=int, default=50, help="ancestral steps (frames) of the denoising animation (default 50)")

    c = commands.add_parser("train-classifier", help="train the evaluation classifier; prints its held-out accuracy")
    c.add_argument("--out", required=True, help="weights file (the shipped one is ddpm_utils/assets/mnist_classifier.pt)")
    c.add_argument("--epochs", type=int, default=15)
    c.add_argument("--seed", type=int, default=0)

    b = commands.add_parser("bench", help="measure training and sampling images/s")
    b.add_argument("--preset", default="mnist", help="UNet preset (default mnist)")
    b.add_argument("--batch-sizes", default="32,128", help="comma-separated batch sizes (default 32,128)")
    b.add_argument("--steps", type=int, default=5, help="timed steps per measurement (default 5)")
    b.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile on a CPU)")
    return parser


def _model(checkpoint):
    """(model, diffusion) from a checkpoint's EMA weights, or the bundled model, on the best device."""
    from .config import get_device

    device = get_device()
    if checkpoint:
        ckpt = load_checkpoint(checkpoint, use_ema=True, map_location=device)
        return ckpt.model.eval(), ckpt.diffusion
    return load_pretrained("mnist", device=device)


def _numbers(text: str, kind, name: str) -> list:
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None


def _evaluate(args) -> None:
    from .evaluation import Evaluator, format_table, generate

    steps, scales = _numbers(args.steps, int, "--steps"), _numbers(args.guidance_scale, float, "--guidance-scale")
    if args.num < 2 or min(steps) < 0:
        raise ValueError(f"--num must be >= 2 and --steps >= 0, got {args.num} and {args.steps}")
    model, diffusion = _model(args.checkpoint)
    evaluator = Evaluator()
    rows = [{"setting": "real training digits", **evaluator.score_real(args.num, args.seed)}]
    settings = [(n, s, True) for n in steps for s in scales] + [(n, 1.0, False) for n in steps if args.unconditional]
    for n, s, conditional in settings:
        sampler = f"DDPM {n or diffusion.num_timesteps}" if args.ancestral or not n else f"DDIM {n}"
        name = f"{sampler}, " + (f"s={s:g}" if conditional else "uncond.")
        images, labels, seconds = generate(model, diffusion, args.num, steps=n or None, guidance_scale=s,
                                           conditional=conditional, seed=args.seed, ancestral=args.ancestral)
        rows.append({"setting": name, "seconds": seconds, **evaluator.score(images, labels)})
        print(format_table(rows[-1:]).splitlines()[1], flush=True)  # one line per setting as it finishes
    print(format_table(rows))
    if args.nll:
        from .evaluation import bits_per_dim

        idx = torch.randperm(len(evaluator.test_images), generator=torch.Generator().manual_seed(args.seed))[:args.nll]
        n, start = len(idx), time.perf_counter()  # a random subset: the held-out digits are sorted by class
        labels = evaluator.test_labels[idx] if model.num_classes else None  # conditioned on its label, if the model can be
        nll = bits_per_dim(model, diffusion, evaluator.test_images[idx], labels, seed=args.seed, progress=True)
        given = " | y" if model.num_classes else ""
        print(f"bound on -log2 p(x0{given}): {nll['bpd']:.3f} +- {nll['sem']:.3f} bits/dim on {n} held-out digits "
              f"(L_T {nll['prior_bpd']:.4f}, L_0 {nll['terms_bpd'][0]:.3f}; {time.perf_counter() - start:.0f} s)")


def _sample(args) -> None:
    from torchvision.utils import save_image

    model, diffusion = _model(args.checkpoint)
    if args.label is not None and not 0 <= args.label < (model.num_classes or 0):
        raise ValueError(f"--label must be a digit 0..{(model.num_classes or 1) - 1}, got {args.label}")
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    if args.label is not None:
        y = torch.full((args.num,), args.label)
    else:
        y = torch.arange(args.num) % 10 if model.num_classes else None
    c, size = model.config.in_channels, model.config.image_size
    images = sample(model, diffusion, (args.num, c, size, size), num_steps=args.steps or None, y=y,
                    guidance_scale=args.guidance_scale if y is not None else 1.0,
                    generator=torch.Generator().manual_seed(args.seed))
    save_image((images + 1) / 2, args.out, nrow=10)
    print(f"wrote {args.out}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            fields = {f.name for f in dataclasses.fields(TrainConfig)}
            config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
            result = train(config, args.out, resume=args.resume)
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            if os.environ.get("RANK", "0") == "0":
                print(f"wrote {result['checkpoint']} and {args.out}/samples.png")
        elif args.command == "train-classifier":
            from .checkpoints import sha256
            from .classifier import train_classifier

            model, acc = train_classifier(epochs=args.epochs, seed=args.seed)
            torch.save(model.state_dict(), args.out)
            print(f"held-out accuracy {acc:.4f} on the 500 test digits; wrote {args.out} (SHA-256 {sha256(args.out)})")
        elif args.command == "bench":
            from .bench import benchmark, format_table

            sizes = _numbers(args.batch_sizes, int, "--batch-sizes")
            print(format_table(benchmark(args.preset, sizes, steps=args.steps, compile=args.compile)))
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "exercises":
            from .exercises import generate

            for path in generate():
                print(f"wrote {path}")
        elif args.command == "figures":
            from .config import get_device
            from .figures import make_figures

            for path in make_figures(args.out, args.steps, args.gif_steps, get_device()):
                print(f"wrote {path}")
        else:
            _sample(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

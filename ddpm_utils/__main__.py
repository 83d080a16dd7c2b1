"""Command line: `python -m ddpm_utils train ...` and `python -m ddpm_utils sample ...`.

    python -m ddpm_utils train --preset mnist --max-steps 10000 --out runs/mnist [--resume]
    python -m ddpm_utils sample --out digits.png [--label 3] [--guidance-scale 3] [--steps 50] [--checkpoint runs/mnist/last.pt]
    python -m ddpm_utils bench [--preset mnist] [--batch-sizes 32,128] [--compile]
    python -m ddpm_utils train-classifier --out ddpm_utils/assets/mnist_classifier.pt

Runs under `torchrun --nproc_per_node=K -m ddpm_utils train ...` for several GPUs (or CPU processes).
Bad arguments and library errors are reported in one line, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

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
        if kind is not None:
            default = getattr(defaults, f.name)
            t.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default, help=f"(default {default})")

    s = commands.add_parser("sample", help="draw a grid of samples to a PNG file")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--checkpoint", help="checkpoint from `train` (default: the bundled pretrained model)")
    s.add_argument("--label", type=int, help="digit 0-9 to draw (default: one row per digit)")
    s.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance scale s (default 3)")
    s.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50; 0 = all T ancestral DDPM steps)")
    s.add_argument("--num", type=int, default=100, help="number of images (default 100)")
    s.add_argument("--seed", type=int, default=0)

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


def _sample(args) -> None:
    from torchvision.utils import save_image

    from .config import get_device

    device = get_device()
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint, use_ema=True, map_location=device)
        model, diffusion = ckpt.model.eval(), ckpt.diffusion
    else:
        model, diffusion = load_pretrained("mnist", device=device)
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

            try:
                sizes = [int(v) for v in args.batch_sizes.split(",")]
            except ValueError:
                raise ValueError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
            print(format_table(benchmark(args.preset, sizes, steps=args.steps, compile=args.compile)))
        else:
            _sample(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

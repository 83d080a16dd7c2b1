"""Command line: `ddpm <command>` (or `python -m ddpm_utils <command>`); `ddpm --help` lists the commands.

    ddpm train --preset mnist --max-steps 10000 --out runs/mnist [--resume]
    ddpm train --dataset folder --data-dir photos.zip --image-size 64 --preset tiny --val-every 200 --out runs/photos
    ddpm sample --out digits.png [--label 3] [--guidance-scale 3] [--steps 50] [--checkpoint runs/mnist/last.pt]
    ddpm evaluate [--checkpoint PATH] [--steps 50,0] [--guidance-scale 1,3] [--classifier-scale 2,4] [--num 500] [--nll 100]
                  [--classifier FILE --data-dir DIR]
    ddpm bench [--preset mnist] [--batch-sizes 32,128] [--compile]
    ddpm train-classifier --out ddpm_utils/assets/mnist_classifier.pt [--dataset cifar10 --data-dir DIR]
    ddpm train-noisy-classifier --out ddpm_utils/assets/mnist_noisy_classifier.pt
    ddpm figures [--out images]
    ddpm export --checkpoint runs/mnist/last.pt --out ddpm_mnist.pt   (EMA weights only, the bundled format)
    ddpm learning-curve RUN [--num 200] [--guidance-scale 0,1] [--out curve.png]   (snapshots of train --keep-every N)
    ddpm exercises
    ddpm nbgrader-course COURSE_DIR [--lessons 01,03]

Every command takes `--device` (cpu, cuda, cuda:1, mps; default: the best available). Runs under
`torchrun --nproc_per_node=K -m ddpm_utils train ...` for several GPUs (or CPU processes).
Whatever a user can get wrong (a bad value, a missing file, a diverging run) ends in one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import sys
import time

import torch

from . import __version__
from .autoencoder import PRESETS as AE_PRESETS
from .autoencoder import AutoencoderTrainConfig, train_autoencoder
from .checkpoints import dataset_info, load_checkpoint, load_pretrained
from .data import DATASETS, SOURCES
from .diffusion import PREDICTIONS, WEIGHTINGS
from .flow import PROCESSES, TIME_SAMPLINGS
from .latent import condition, num_labels, to_pixels
from .prompts import encode as encode_prompt
from .samplers import DEFAULT_SPACING, SAMPLERS, SPACINGS, sample
from .schedules import SCHEDULES
from .training import TrainConfig, train
from .unet import PRESETS

# TrainConfig fields whose values come from a fixed set: the CLI offers exactly these
CHOICES = {"preset": sorted(PRESETS), "schedule": list(SCHEDULES), "amp": ["auto", "bf16", "fp16", "off"],
           "data_source": list(SOURCES), "prediction": list(PREDICTIONS), "loss_weighting": list(WEIGHTINGS),
           "dataset": list(DATASETS), "channels": [0, 1, 3], "process": list(PROCESSES), "time_sampling": list(TIME_SAMPLINGS)}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to find help) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")



SAMPLER_HELP = (f"one of {', '.join(SAMPLERS)} (default ddim; ddpm is ancestral, heun takes 2 network evaluations per "
                "step; see README, 'Samplers')")
SPACING_HELP = ("how the steps' noise levels are spread: " + ", ".join(SPACINGS) + " (default: the sampler's own, "
                + ", ".join(f"{k} {v}" for k, v in DEFAULT_SPACING.items()) + ")")


def field_help(cls) -> dict[str, str]:
    """The end-of-line comment of every field of a config dataclass: its one-line documentation."""
    pattern = re.compile(r"^\s+(\w+):[^#]*#\s*(.+)$")
    return {m.group(1): m.group(2).strip() for line in inspect.getsource(cls).splitlines() if (m := pattern.match(line))}


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ddpm", description="Train, sample and evaluate the DDPM course's models (ddpm_utils).",
                     epilog="Run `ddpm COMMAND --help` for a command's options. `python -m ddpm_utils` is the same program.")
    parser.add_argument("--version", action="version", version=f"ddpm_utils {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: a CUDA GPU if there is one, else Apple MPS, else the CPU)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name, func, help):
        sub = commands.add_parser(name, parents=[common], help=help, description=help[0].upper() + help[1:] + ".")
        sub.set_defaults(func=func)
        return sub

    t = command("train", _train, "train a UNet on MNIST or another data set; writes OUT/last.pt, OUT/samples.png and OUT/loss.png")
    t.add_argument("--out", required=True, help="run folder (checkpoint, sample grids)")
    t.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    defaults, comments = TrainConfig(), field_help(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = {"int": int, "float": float, "str": str}.get(f.type)  # every plain TrainConfig field is an option
        default, option = getattr(defaults, f.name), "--" + f.name.replace("_", "-")
        helptext = f"{comments[f.name]} (default {default})".replace("%", "%%")
        if kind is not None:
            t.add_argument(option, type=kind, default=default, choices=CHOICES.get(f.name), help=helptext)
        elif f.type in ("bool", "bool | None"):
            t.add_argument(option, action=argparse.BooleanOptionalAction, default=default, help=helptext)

    lc = command("learning-curve", _learning_curve, "score the snapshots a run kept (RUN/step_*.pt, from train --keep-every) "
                 "and plot FD, KID and accuracy against the training step")
    lc.add_argument("run", help="run folder of `train --keep-every N`")
    lc.add_argument("--num", type=int, default=200, help="samples per snapshot and guidance scale (default 200)")
    lc.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    lc.add_argument("--guidance-scale", default="0,1", help="comma-separated guidance scales, 0 = unconditional (default 0,1)")
    lc.add_argument("--seed", type=int, default=0, help="seed of the starting noise, the same for every snapshot (default 0)")
    lc.add_argument("--out", help="PNG file for the figure (default RUN/learning_curve.png)")

    x = command("export", _export, "write a run's EMA weights (or an autoencoder's weights) as a small file in the bundled "
                "format (no optimizer state) and print its SHA-256 (to replace ddpm_utils/assets/ddpm_mnist.pt: also put the "
                "digest into checkpoints.PRETRAINED; for assets/autoencoder_mnist.pt, autoencoder.PRETRAINED)")
    x.add_argument("--checkpoint", required=True, help="checkpoint from `train` (OUT/last.pt) or `train-autoencoder` "
                   "(OUT/autoencoder.pt)")
    x.add_argument("--out", required=True, help="file to write")

    s = command("sample", _sample, "draw a grid of samples to a PNG file (the bundled model unless --checkpoint)")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--checkpoint", help="checkpoint from `train` (default: the bundled pretrained model)")
    s.add_argument("--label", help="the class to draw, by name (e.g. airplane, or 3 for MNIST) or index (default: one row per class)")
    s.add_argument("--prompt", help="what to draw, for a model trained with --prompts: words of its vocabulary, e.g. "
                   "'thick slanted 7' ('' = the empty prompt)")
    s.add_argument("--autoencoder", help="a latent model's autoencoder, if it is no longer where it was trained "
                   "(default: the file its checkpoint names)")
    s.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale s (default 3; class-conditional models only)")
    s.add_argument("--classifier-scale", type=float, default=0.0,
                   help="classifier guidance with the bundled noise-aware classifier (default 0 = off; "
                        "--guidance-scale 0 --classifier-scale 4 guides the unconditional model by the classifier alone)")
    s.add_argument("--sampler", choices=tuple(SAMPLERS), help=SAMPLER_HELP)
    s.add_argument("--spacing", choices=SPACINGS, help=SPACING_HELP)
    s.add_argument("--steps", type=int, default=50, help="sampling steps (default 50; 0 = all T ancestral DDPM steps)")
    s.add_argument("--num", type=int, default=100, help="number of images (default 100)")
    s.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")

    e = command("evaluate", _evaluate, "score samples with the MNIST classifier (accuracy, FD, memorisation, bits/dim)")
    e.add_argument("--checkpoint", help="checkpoint from `train` (default: the bundled pretrained model)")
    e.add_argument("--sampler", choices=tuple(SAMPLERS), help=SAMPLER_HELP)
    e.add_argument("--spacing", choices=SPACINGS, help=SPACING_HELP)
    e.add_argument("--steps", default="50", help="comma-separated step counts; 0 = all T ancestral DDPM steps (default 50)")
    e.add_argument("--guidance-scale", help="comma-separated guidance scales (default 3; class-conditional models only)")
    e.add_argument("--classifier-scale", default="", help="comma-separated classifier-guidance scales: also score the "
                   "unconditional model guided by the bundled noise-aware classifier at each (default: none)")
    e.add_argument("--unconditional", action="store_true", help="also score unconditional samples")
    e.add_argument("--ancestral", action="store_true", help="the same as --sampler ddpm (respaced to each --steps count)")
    e.add_argument("--nll", type=int, default=0, metavar="N",
                   help="also the bound in bits/dim on N held-out digits (all T terms: T network evaluations per digit, slow)")
    e.add_argument("--num", type=int, default=500, help="samples per setting (default 500)")
    e.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")
    e.add_argument("--classifier", help="judge with this classifier from `train-classifier --dataset` (needed for any data "
                   "but MNIST; default: the shipped MNIST classifier)")
    e.add_argument("--data-dir", help="where the classifier's data set is (default: the folder recorded in its file)")
    e.add_argument("--autoencoder", help="a latent model's autoencoder, if it is no longer where it was trained "
                   "(default: the file its checkpoint names)")

    cs = command("compare-samplers", _compare_samplers, "every sampler x spacing by network evaluations: error on the "
                 "exact 2-D ODE (--exact), or the quality of a model's digits")
    cs.add_argument("--exact", action="store_true", help="the error against notebook 10's exact 2-D ODE (seconds) instead")
    cs.add_argument("--checkpoint", help="checkpoint from `train` (default: the bundled pretrained model)")
    cs.add_argument("--nfe", help="comma-separated network-evaluation budgets (default 5,10,20; --exact: 10,20,40,80)")
    cs.add_argument("--sampler", default="", help="comma-separated samplers (default: all)")
    cs.add_argument("--spacing", default="", help=f"comma-separated spacings (default: all of {', '.join(SPACINGS)})")
    cs.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale (default 1)")
    cs.add_argument("--num", type=int, default=200, help="samples per setting (default 200)")
    cs.add_argument("--seed", type=int, default=0, help="seed of the starting noise, the same for every setting (default 0)")

    a = command("train-autoencoder", _train_autoencoder, "train the autoencoder of latent diffusion (notebook 12); writes "
                "OUT/autoencoder.pt (with the measured latent scale) and OUT/reconstructions.png")
    a.add_argument("--out", required=True, help="run folder")
    a.add_argument("--resume", action="store_true", help="continue exactly from OUT/autoencoder.pt")
    ae_defaults, ae_comments = AutoencoderTrainConfig(), field_help(AutoencoderTrainConfig)
    for f in dataclasses.fields(AutoencoderTrainConfig):
        kind, default = {"int": int, "float": float, "str": str}[f.type], getattr(ae_defaults, f.name)
        a.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default, help=f"{ae_comments[f.name]} (default {default})",
                       choices={"preset": list(AE_PRESETS), "dataset": list(DATASETS), "data_source": list(SOURCES)}.get(f.name))

    b = command("bench", _bench, "measure training and sampling images/s")
    b.add_argument("--preset", default="mnist", choices=sorted(PRESETS), help="UNet preset (default mnist)")
    b.add_argument("--batch-sizes", default="32,128", help="comma-separated batch sizes (default 32,128)")
    b.add_argument("--steps", type=int, default=5, help="timed steps per measurement (default 5)")
    b.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile on a CPU)")

    c = command("train-classifier", _train_classifier, "train the evaluation classifier; prints its held-out accuracy")
    c.add_argument("--out", required=True, help="weights file (the shipped one is ddpm_utils/assets/mnist_classifier.pt)")
    c.add_argument("--dataset", choices=tuple(DATASETS), help="train on this labelled data set (default: the bundled MNIST digits, "
                   "written in the shipped file's format)")
    c.add_argument("--data-dir", help="the data set's folder (for --dataset folder: the image folder or .zip)")
    c.add_argument("--image-size", type=int, help="resize to this (default: the data's own; use the size the model was trained at)")
    c.add_argument("--channels", type=int, choices=[1, 3], help="folders: 1 or 3 (default: RGB unless every image is grayscale)")
    c.add_argument("--epochs", type=int, default=15, help="passes over the training images (default 15)")
    c.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order (default 0)")

    n = command("train-noisy-classifier", _train_noisy_classifier,
                "train the noise-aware classifier for classifier guidance; prints its held-out accuracy by t")
    n.add_argument("--out", required=True, help="weights file (the shipped one is ddpm_utils/assets/mnist_noisy_classifier.pt)")
    n.add_argument("--checkpoint", help="train on x_t of this checkpoint's schedule (default: the bundled model's)")
    n.add_argument("--epochs", type=int, default=20, help="passes over the 4,500 training digits, each at new t and noise (default 20)")
    n.add_argument("--seed", type=int, default=0, help="seed of the weights, t, noise and data order (default 0)")

    f = command("figures", _figures, "regenerate the README's figures from the bundled model (or draw the sample figures of "
                "a checkpoint, diffusion or flow)")
    f.add_argument("--out", default="images", help="folder to write (default images)")
    f.add_argument("--checkpoint", help="checkpoint from `train`: its samples, guidance grid and denoising animation instead "
                   "of the bundled model's (default: the bundled model, and the schedule figures too)")
    f.add_argument("--steps", type=int, default=50, help="DDIM steps for the sample grids (default 50)")
    f.add_argument("--gif-steps", type=int, default=50, help="ancestral steps (frames) of the denoising animation (default 50)")

    command("exercises", _exercises, "write notebooks/exercises/ and the lessons' nbgrader metadata from the solution "
            "markers (run in a clone)")
    g = command("nbgrader-course", _nbgrader_course, "lay out an nbgrader course folder (source/ and nbgrader_config.py) "
                "from the lessons with exercises")
    g.add_argument("out", help="the course folder to write (nbgrader's course root)")
    g.add_argument("--lessons", help="comma-separated lesson numbers, e.g. 01,03 (default: every lesson with exercises)")
    return parser


def _device(name: str | None) -> torch.device:
    """The device asked for with --device, refused with a clear message where it does not exist."""
    from .config import get_device

    try:
        device = get_device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device name (expected cpu, cuda, cuda:N or mps): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available here (torch.cuda.is_available() is False); use --device cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {name}: Apple MPS is not available here; use --device cpu")
    return device


def _train(args) -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    result = train(config, args.out, resume=args.resume, device=_device(args.device))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {result['checkpoint']} and {args.out}/samples.png")


def _train_autoencoder(args) -> None:
    fields = {f.name for f in dataclasses.fields(AutoencoderTrainConfig)}
    train_autoencoder(AutoencoderTrainConfig(**{k: v for k, v in vars(args).items() if k in fields}), args.out,
                      resume=args.resume, device=_device(args.device))


def _train_classifier(args) -> None:
    from .checkpoints import sha256
    from .classifier import save_classifier, train_classifier
    from .data import load_dataset

    if args.dataset is None:
        model, acc = train_classifier(epochs=args.epochs, seed=args.seed)
        torch.save(model.state_dict(), args.out)  # the shipped file's format: plain weights
        print(f"held-out accuracy {acc:.4f} on the 500 test digits; wrote {args.out} (SHA-256 {sha256(args.out)})")
        return
    kw = {"root": args.data_dir, "image_size": args.image_size, "channels": args.channels}
    train_set, test_set = load_dataset(args.dataset, True, **kw), load_dataset(args.dataset, False, **kw)
    model, acc = train_classifier(epochs=args.epochs, seed=args.seed, train_set=train_set, test_set=test_set)
    model.dataset["data_dir"] = os.path.abspath(args.data_dir) if args.data_dir else None
    save_classifier(model, args.out)
    print(f"held-out accuracy {acc:.4f} on {len(test_set):,} test images of {args.dataset}; wrote {args.out}")


def _train_noisy_classifier(args) -> None:
    from .checkpoints import sha256
    from .classifier import save_noisy_classifier, train_noisy_classifier

    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    _, diffusion, _, ae = _model(args.checkpoint, "cpu")
    if ae is not None:
        raise ValueError("the noise-aware classifier is trained on pixel images at a DDPM's noise levels; this checkpoint is "
                         "a latent model")
    model, acc = train_noisy_classifier(diffusion, epochs=args.epochs, seed=args.seed)
    save_noisy_classifier(model, args.out)
    print("held-out accuracy by paper t: " + ", ".join(f"t={t}: {a:.1%}" for t, a in acc.items()))
    print(f"wrote {args.out} (SHA-256 {sha256(args.out)})")


def _compare_samplers(args) -> None:
    from . import sampler_study

    if args.exact:
        print(sampler_study.format_ode_errors(sampler_study.ode_errors(_numbers(args.nfe or "10,20,40,80", int, "--nfe"))))
        return
    from .evaluation import Evaluator

    samplers = [name for name in args.sampler.split(",") if name] or list(SAMPLERS)
    spacings = [name for name in args.spacing.split(",") if name] or list(SPACINGS)
    if set(samplers) - set(SAMPLERS) or set(spacings) - set(SPACINGS):
        raise ValueError(f"--sampler must name samplers from {tuple(SAMPLERS)} and --spacing spacings from {SPACINGS}, "
                         f"got {args.sampler!r} and {args.spacing!r}")
    model, diffusion, info, ae = _model(args.checkpoint, args.device)
    if info["name"] != "mnist" or ae is not None or model.config.context_len:
        raise ValueError(f"compare-samplers judges a pixel-space MNIST label model's digits with the shipped classifier; this "
                         f"model makes {info['name']}{' latents' if ae is not None else ''}"
                         f"{' from prompts' if model.config.context_len else ''} (evaluate --sampler scores one sampler)")
    evaluator = Evaluator(next(model.parameters()).device)
    print(sampler_study.format_quality([]))
    rows = sampler_study.quality_table(model, diffusion, evaluator, _numbers(args.nfe or "5,10,20", int, "--nfe"), args.num,
                                       args.guidance_scale, args.seed, samplers, spacings)
    print(sampler_study.format_quality(rows))


def _bench(args) -> None:
    from .bench import benchmark, format_table

    sizes = _numbers(args.batch_sizes, int, "--batch-sizes")
    print(format_table(benchmark(args.preset, sizes, steps=args.steps, compile=args.compile)))


def _figures(args) -> None:
    from .figures import make_figures

    for path in make_figures(args.out, args.steps, args.gif_steps, _device(args.device), checkpoint=args.checkpoint):
        print(f"wrote {path}")


def _export(args) -> None:
    from .autoencoder import FORMAT, export_autoencoder
    from .checkpoints import export_weights, sha256

    if torch.load(args.checkpoint, map_location="cpu", weights_only=True).get("format") == FORMAT:
        path = export_autoencoder(args.checkpoint, args.out)
    else:
        path = export_weights(args.checkpoint, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, SHA-256 {sha256(path)})")


def _learning_curve(args) -> None:
    from .evaluation import format_table
    from .figures import learning_curve, learning_curve_figure

    if args.num < 2 or args.steps < 1:
        raise ValueError(f"--num must be >= 2 and --steps >= 1, got {args.num} and {args.steps}")
    rows, real = learning_curve(args.run, args.num, args.steps, _numbers(args.guidance_scale, float, "--guidance-scale"),
                                args.seed, _device(args.device))
    named = [{**r, "setting": f"step {r['step']}, " + (f"s={r['scale']:g}" if r["scale"] else "uncond.")} for r in rows]
    print(format_table([{"setting": "real training digits", **real}] + named))
    out = args.out or os.path.join(args.run, "learning_curve.png")
    learning_curve_figure(rows, real).savefig(out, dpi=120, bbox_inches="tight")
    print(f"wrote {out}")


def _exercises(args) -> None:
    from .exercises import generate

    for path in generate():
        print(f"wrote {path}")


def _nbgrader_course(args) -> None:
    from .grading import make_course

    out = make_course(args.out, args.lessons.split(",") if args.lessons else None)
    for path in sorted((out / "source").glob("*/*.ipynb")):
        print(f"wrote {path}")
    print(f"wrote {out / 'nbgrader_config.py'}; next: cd {out} && nbgrader generate_assignment {path.parent.name}")


def _model(checkpoint, device_name, autoencoder=None):
    """(model, diffusion, its training data's record, a latent model's autoencoder or None) from a checkpoint's EMA
    weights, or the bundled model. `autoencoder`: where a latent model's autoencoder is, if not where it was."""
    from .latent import load_decoder

    device = _device(device_name)
    if checkpoint:
        ckpt = load_checkpoint(checkpoint, use_ema=True, map_location=device)
        return ckpt.model.eval(), ckpt.diffusion, ckpt.dataset, load_decoder(ckpt.autoencoder, autoencoder, device)
    if autoencoder:
        raise ValueError("--autoencoder is for a latent model's checkpoint (--checkpoint); the bundled model works on pixels")
    model, diffusion = load_pretrained("mnist", device=device)
    return model, diffusion, dataset_info({}, model.config), None


def _label(text: str, info: dict) -> int:
    """A class index from --label: a class name of the training data (any case) or an index."""
    names = info["class_names"]
    if not names:
        raise ValueError(f"--label {text}: this model was trained on unlabelled images ({info['name']}), so it has no classes to "
                         "draw; leave out --label (and --guidance-scale)")
    lower = [n.lower() for n in names]
    if text.lower() in lower:
        return lower.index(text.lower())
    if text.isdigit() and int(text) < len(names):
        return int(text)
    raise ValueError(f"--label {text!r} is not a class of this model; its classes are {names} (or indices 0..{len(names) - 1})")


def _check_classifier_scale(info: dict, autoencoder=None) -> None:
    if autoencoder is not None:
        raise ValueError("--classifier-scale guides by a classifier of noisy pixel images; a latent model's x_t are latents")
    if info["name"] != "mnist":
        raise ValueError(f"--classifier-scale uses the bundled noise-aware MNIST classifier; this model was trained on "
                         f"{info['name']} ({info['channels']}x{info['image_size']}x{info['image_size']})")


def _numbers(text: str, kind, name: str) -> list:
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None


def _sampler(name: str | None, steps: int, ancestral: bool = False) -> str:
    """The sampler that --sampler, --steps and --ancestral ask for: --steps 0 means all T ancestral DDPM steps."""
    if steps == 0 and name not in (None, "ddpm"):
        raise ValueError(f"--steps 0 means all T steps of ancestral DDPM, not --sampler {name}; give {name} a number of "
                         "steps (e.g. --steps 20), or leave out --sampler")
    if ancestral and name not in (None, "ddpm"):
        raise ValueError(f"--ancestral is the same as --sampler ddpm; it cannot be combined with --sampler {name}")
    return "ddpm" if ancestral or steps == 0 else name or "ddim"


def _evaluate(args) -> None:
    from .evaluation import Evaluator, format_table, generate

    steps, scales = _numbers(args.steps, int, "--steps"), _numbers(args.guidance_scale or "3", float, "--guidance-scale")
    if args.num < 2 or min(steps) < 0:
        raise ValueError(f"--num must be >= 2 and --steps >= 0, got {args.num} and {args.steps}")
    for n in steps:
        _sampler(args.sampler, n, args.ancestral)  # a clear error before anything is loaded
    model, diffusion, info, autoencoder = _model(args.checkpoint, args.device, args.autoencoder)
    if args.nll and (diffusion.process == "flow" or autoencoder is not None):
        what = ("a flow-matching model, which has no reverse chain to bound" if autoencoder is None
                else "a latent model (a bound on latents is not one on pixels)")
        raise ValueError(f"--nll is a pixel diffusion's variational bound; this checkpoint holds {what}: leave out --nll")
    if info["name"] != "mnist" and not info["class_names"]:
        raise ValueError(f"this model was trained on unlabelled images ({info['name']}): there are no classes to train a judging "
                         "classifier on; look at its samples and their nearest training images instead (notebook 08)")
    if info["name"] != "mnist" and not args.classifier:
        raise ValueError(f"this model was trained on {info['name']}; the shipped classifier judges MNIST digits only. Train one "
                         f"with `ddpm train-classifier --dataset {info['name']} --data-dir DIR --image-size {info['image_size']} "
                         "--out classifier.pt` and pass --classifier classifier.pt")
    evaluator = Evaluator(next(model.parameters()).device, classifier=args.classifier, data_dir=args.data_dir)
    shape = (info["channels"], info["image_size"], info["image_size"])  # the images it makes (a latent model's: decoded)
    if shape != evaluator.shape or (model.num_classes and evaluator.class_names != info["class_names"]):
        raise ValueError(f"the classifier judges {evaluator.shape} images of classes {evaluator.class_names}; the model makes "
                         f"{shape} images of classes {info['class_names']}")
    if not model.num_classes and (args.guidance_scale is not None or args.classifier_scale):
        raise ValueError("this model is unconditional (trained on unlabelled images): it takes no guidance; "
                         "evaluate it with --unconditional alone")
    scales = scales if model.num_classes else []
    args.unconditional = args.unconditional or not model.num_classes
    rows = [{"setting": "real training images", **evaluator.score_real(args.num, args.seed)}]
    classifier_scales = _numbers(args.classifier_scale, float, "--classifier-scale") if args.classifier_scale else []
    classifier = None
    if classifier_scales:
        _check_classifier_scale(info, autoencoder)
        from .classifier import load_noisy_classifier

        classifier = load_noisy_classifier(next(model.parameters()).device)
    settings = ([(n, s, True, 0.0) for n in steps for s in scales] + [(n, 0.0, True, c) for n in steps for c in classifier_scales]
                + [(n, 1.0, False, 0.0) for n in steps if args.unconditional])
    for n, s, conditional, c in settings:
        sampler = _sampler(args.sampler, n, args.ancestral)
        name = f"{sampler.upper()} {n or diffusion.num_timesteps}, " + (f"classifier c={c:g}" if c else f"s={s:g}" if conditional
                                                                         else "uncond.")
        images, labels, seconds = generate(model, diffusion, args.num, steps=n or None, guidance_scale=s, conditional=conditional,
                                           seed=args.seed, sampler=sampler, classifier=classifier, classifier_scale=c,
                                           spacing=args.spacing, autoencoder=autoencoder)
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

    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise FileNotFoundError(f"--out {args.out}: the folder {os.path.dirname(os.path.abspath(args.out))} does not exist")
    sampler = _sampler(args.sampler, args.steps)
    model, diffusion, info, autoencoder = _model(args.checkpoint, args.device, args.autoencoder)
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    if args.prompt is not None and not model.config.context_len:
        raise ValueError("--prompt is for a model trained with --prompts; this one takes "
                         + ("class labels: use --label" if model.num_classes else "no condition"))
    if args.prompt is not None and args.label is not None:
        raise ValueError("give --prompt or --label, not both (a label is the prompt of its class word alone)")
    if args.prompt is not None:
        y = encode_prompt(args.prompt, info["vocabulary"]).expand(args.num, -1)
    elif args.label is not None:
        y = condition(model, torch.full((args.num,), _label(args.label, info)))
    else:
        y = condition(model, torch.arange(args.num) % num_labels(model)) if model.num_classes else None
    if y is None and (args.guidance_scale is not None or args.classifier_scale):
        raise ValueError("this model is unconditional (trained on unlabelled images): guidance needs classes to aim at; "
                         "leave out --guidance-scale and --classifier-scale")
    classifier = None
    if args.classifier_scale:
        from .classifier import load_noisy_classifier

        _check_classifier_scale(info, autoencoder)
        classifier = load_noisy_classifier(next(model.parameters()).device)
    c, size = model.config.in_channels, model.config.image_size
    images = sample(model, diffusion, (args.num, c, size, size), sampler=sampler,
                    spacing=args.spacing, num_steps=args.steps or None, y=y,
                    guidance_scale=(3.0 if args.guidance_scale is None else args.guidance_scale) if y is not None else 1.0,
                    generator=torch.Generator().manual_seed(args.seed), classifier=classifier, classifier_scale=args.classifier_scale)
    images = to_pixels(images, autoencoder)
    save_image((images + 1) / 2, args.out, nrow=10)
    print(f"wrote {args.out}")


def main(argv=None) -> int:
    """Run one command; returns the exit code (0, or 2 for anything the user can put right)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already reported in one line)
        return e.code if isinstance(e.code, int) else 2
    try:
        args.func(args)
    except (ValueError, OSError, FloatingPointError) as e:  # bad values, missing or unreadable files, a diverged run
        print("ddpm: error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message
        return 2
    except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError):  # torch.OutOfMemoryError: torch >= 2.5
        print("ddpm: error: out of memory on the device; use a smaller --batch-size (or --num)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddpm: interrupted (a training run saved its last step: continue with --resume)", file=sys.stderr)
        return 130
    return 0


def cli() -> None:
    """The `ddpm` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()

"""The `ddpm` command: help from the config's comments, choices, --version, --device, and one-line errors with exit code 2."""

import dataclasses
import re

import pytest
import torch

from ddpm_utils import __version__, training
from ddpm_utils.__main__ import field_help, main
from ddpm_utils.training import TrainConfig


def test_help_lists_every_command_and_train_options_explain_themselves(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for command in ("train", "sample", "evaluate", "bench", "train-classifier", "train-noisy-classifier", "figures", "exercises"):
        assert f"\n    {command}" in top, command
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    comments = field_help(TrainConfig)
    assert set(comments) == {f.name for f in dataclasses.fields(TrainConfig)}  # every field documents itself
    assert "peak AdamW learning rate (default 0.0002)" in text
    assert "--amp {auto,bf16,fp16,off}" in text and "--preset {cifar10,folder64,mnist,small,tiny}" in text and "--device DEVICE" in text
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"ddpm_utils {__version__}"


def _tiny_run(out, *options):
    """A finished 2-step run of the tiny preset in `out`, with `options` added to `ddpm train`."""
    assert main(["train", *options, "--preset", "tiny", "--max-steps", "2", "--batch-size", "4", "--sample-steps", "2",
                 "--data-source", "bundled", "--device", "cpu", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-step tiny run to resume and sample from."""
    return _tiny_run(tmp_path_factory.mktemp("run"), "--T", "20")


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """A finished 2-step tiny flow-matching run."""
    return _tiny_run(tmp_path_factory.mktemp("flow"), "--process", "flow")


def test_a_flow_checkpoint_samples_and_draws_its_figures(flow_run, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(flow_run / "last.pt"), "--sampler", "heun", "--steps", "2", "--num", "4",
                 "--out", str(tmp_path / "flow.png")]) == 0
    assert main(["figures", "--checkpoint", str(flow_run / "last.pt"), "--steps", "2", "--gif-steps", "2", "--out", str(tmp_path)]) == 0
    assert main(["evaluate", "--checkpoint", str(flow_run / "last.pt"), "--sampler", "euler", "--steps", "2", "--num", "4"]) == 0
    out = capsys.readouterr().out
    assert "EULER 2, s=3" in out and "real training images" in out
    assert (tmp_path / "flow.png").stat().st_size > 0 and "guidance.png" in out and "denoising.gif" in out
    assert not (tmp_path / "schedules.png").exists()  # a checkpoint's figures are its samples only


def bad_inputs(run, tmp_path, flow_run):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    tiny = ["--preset", "tiny", "--T", "20", "--batch-size", "4", "--data-source", "bundled", "--sample-steps", "2"]
    return {  # arguments: words the one-line message must contain
        "no command": ([], "required: COMMAND"),
        "unknown command": (["paint"], "invalid choice: 'paint'"),
        "not a number": (["train", "--out", str(tmp_path), "--batch-size", "abc"], "invalid int value: 'abc'"),
        "unknown preset": (["train", "--out", str(tmp_path), "--preset", "huge"], "invalid choice: 'huge'"),
        "unknown sampler": (["sample", "--sampler", "lms", "--out", "x.png"], "invalid choice: 'lms'"),
        "unknown spacing": (["sample", "--spacing", "even", "--out", "x.png"], "invalid choice: 'even'"),
        "--steps 0 with heun": (["sample", "--sampler", "heun", "--steps", "0", "--out", "x.png"],
                                "--steps 0 means all T steps of ancestral DDPM, not --sampler heun"),
        "--ancestral with heun": (["evaluate", "--sampler", "heun", "--ancestral", "--num", "10"],
                                  "--ancestral is the same as --sampler ddpm"),
        "unknown amp": (["train", "--out", str(tmp_path), "--amp", "fp8"], "invalid choice: 'fp8'"),
        "zero steps": (["train", "--out", str(tmp_path), "--max-steps", "0"], "max_steps must be >= 1"),
        "nothing to resume": (["train", *tiny, "--out", str(tmp_path / "none"), "--resume"], "no checkpoint file"),
        "changed config": (["train", *tiny, "--max-steps", "2", "--lr", "0.5", "--out", str(run), "--resume"],
                           "different TrainConfig"),
        "label out of range": (["sample", "--checkpoint", str(run / "last.pt"), "--label", "12", "--out", "x.png"],
                               "--label '12' is not a class of this model; its classes are"),
        "missing checkpoint": (["sample", "--checkpoint", str(tmp_path / "nope.pt"), "--out", "x.png"], "no checkpoint file"),
        "corrupt checkpoint": (["sample", "--checkpoint", str(corrupt), "--out", "x.png"], "could not be read as a checkpoint"),
        "unwritable output": (["sample", "--checkpoint", str(run / "last.pt"), "--steps", "1", "--num", "2",
                               "--out", str(tmp_path / "no" / "such" / "dir" / "x.png")], "does not exist"),
        "bad step list": (["evaluate", "--checkpoint", str(run / "last.pt"), "--steps", "ten"], "--steps must be comma-separated"),
        "bad batch sizes": (["bench", "--batch-sizes", "a,b"], "--batch-sizes must be comma-separated"),
        "bad classifier scales": (["evaluate", "--checkpoint", str(run / "last.pt"), "--classifier-scale", "x"],
                                  "--classifier-scale must be comma-separated"),
        "classifier of another schedule": (["sample", "--checkpoint", str(run / "last.pt"), "--steps", "1", "--num", "2",
                                            "--classifier-scale", "2", "--out", str(tmp_path / "x.png")], "trained on x_t of schedule"),
        "zero epochs": (["train-noisy-classifier", "--epochs", "0", "--out", str(tmp_path / "c.pt")], "--epochs must be >= 1"),
        "not a device": (["sample", "--device", "gpu0", "--out", "x.png"], "is not a device name"),
        "flow with learned variance": (["train", "--out", str(tmp_path), "--process", "flow", "--learned-variance"],
                                       "a flow (process='flow') has none"),
        "time sampling of a diffusion": (["train", "--out", str(tmp_path), "--time-sampling", "logit-normal"],
                                         "is a flow's (process='flow')"),
        "bound of a flow": (["evaluate", "--checkpoint", str(flow_run / "last.pt"), "--nll", "2", "--num", "2"],
                            "holds a flow-matching model, which has no reverse chain"),
    } | ({} if torch.cuda.is_available() else {"no such GPU": (["sample", "--device", "cuda", "--out", "x.png"],
                                                               "no CUDA GPU is available")})


def message_lines(err: str) -> list[str]:
    """stderr without the progress bars' lines: what the user reads as the error."""
    return [line for line in re.split(r"[\r\n]+", err) if line.strip() and "it/s]" not in line]


def test_every_user_error_is_one_line_and_exit_code_2(run, flow_run, tmp_path, capsys):
    for name, (args, words) in bad_inputs(run, tmp_path, flow_run).items():
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert words in err and len(message_lines(err)) == 1 and "Traceback" not in err, (name, err)


def test_a_diverging_run_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    real_loss = training.GaussianDiffusion.training_loss
    monkeypatch.setattr(training.GaussianDiffusion, "training_loss", lambda self, *a, **k: real_loss(self, *a, **k) * float("nan"))
    args = ["train", "--preset", "tiny", "--T", "20", "--batch-size", "4", "--data-source", "bundled", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "loss is nan at step 0" in err and len(message_lines(err)) == 1 and "Traceback" not in err


def test_sample_with_classifier_guidance_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "guided.png"
    assert main(["sample", "--steps", "2", "--num", "2", "--guidance-scale", "0", "--classifier-scale", "3", "--device", "cpu",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "wrote" in capsys.readouterr().out


def test_sample_with_heun_and_a_spacing_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "heun.png"
    assert main(["sample", "--sampler", "heun", "--spacing", "logsnr", "--steps", "2", "--num", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "wrote" in capsys.readouterr().out


def test_compare_samplers_exact_prints_every_sampler_and_spacing(capsys, monkeypatch):
    from ddpm_utils import sampler_study

    monkeypatch.setattr(sampler_study, "ode_errors", lambda nfes: [
        {"sampler": s, "spacing": sp, "steps": n, "evaluations": n, "error": 1.0 / n} for s in ("euler", "heun")
        for sp in ("uniform", "karras") for n in nfes])
    assert main(["compare-samplers", "--exact", "--nfe", "10,20"]) == 0
    out = capsys.readouterr().out
    assert "heun          karras" in out and "1.00" in out  # order 1 for error ~ 1/n

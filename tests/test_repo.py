"""The repository keeps its promises: README's two commands, CI running the same test command, sane requirements."""

import inspect
import re
from pathlib import Path

import ddpm_utils

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    quick_start = (ROOT / "README.md").read_text().split("## Quick start")[1].split("\n## ")[0]
    return re.findall(r"```bash\n(.*?)\n```", quick_start, flags=re.S)


def test_readme_gives_exactly_two_one_line_commands():
    commands = readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "jupyter lab" in commands[0] and "pytest" in commands[1]
    for c in commands:
        assert c.startswith("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && ")


def test_ci_runs_exactly_the_readme_test_command_last():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == readme_commands()[1]
    assert "rm -rf .venv" in ci and any(line.startswith(".venv/bin/ruff check") for line in ci)


def test_requirements_use_ranges_not_pins():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = {re.split(r"[<>=!~ ]", ln)[0].lower(): ln for ln in lines if ln and not ln.startswith("-")}
    for needed in ["torch", "torchvision", "jupyterlab", "matplotlib", "ipywidgets", "nbval", "einops", "pytest"]:
        assert needed in reqs, needed
    assert not any("==" in ln for ln in reqs.values()), "no exact pins: Colab ships its own versions"
    assert reqs["ipywidgets"] == "ipywidgets>=7.7"  # Colab ships 7.7.1
    assert "-e ." in lines  # the course package itself


def test_bundled_data_is_packaged():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"assets/*.npz"' in pyproject and (ROOT / "ddpm_utils" / "assets" / "mnist_5k.npz").is_file()


def test_design_api_signatures():
    """The public names and signatures that notebooks, tests and docs rely on (DESIGN.md)."""
    expected = {
        "linear_betas": ["T", "beta_start", "beta_end"],
        "cosine_betas": ["T", "s", "max_beta"],
        "make_betas": ["name", "T", "kw"],
        "extract": ["a", "t", "x_shape"],
        "ddpm_step": ["diffusion", "eps", "t", "x_t", "noise", "variance", "clip_x0"],
        "ddim_step": ["diffusion", "eps", "t", "t_prev", "x_t", "eta", "noise", "clip_x0"],
        "sample": ["model", "diffusion", "shape", "num_steps", "eta", "y", "guidance_scale", "generator",
                   "return_trajectory", "progress"],
        "guided_eps": ["model", "x", "t", "y", "guidance_scale", "null_label"],
        "sinusoidal_embedding": ["t", "dim", "max_period"],
        "load_pretrained": ["name", "device"],
        "load_mnist": ["train", "source"],
    }
    for name, params in expected.items():
        got = list(inspect.signature(getattr(ddpm_utils, name)).parameters)
        assert got[: len(params)] == params, name
    gd = ddpm_utils.GaussianDiffusion
    assert list(inspect.signature(gd.training_loss).parameters)[:7] == ["self", "model", "x0", "y", "p_uncond", "t", "noise"]
    assert list(inspect.signature(gd.q_sample).parameters) == ["self", "x0", "t", "noise"]
    assert list(inspect.signature(gd.q_posterior_mean_variance).parameters) == ["self", "x0", "x_t", "t"]
    assert list(inspect.signature(gd.predict_x0_from_eps).parameters) == ["self", "x_t", "t", "eps"]
    assert inspect.signature(ddpm_utils.sample).parameters["num_steps"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(ddpm_utils.sinusoidal_embedding).parameters["max_period"].default == 10000

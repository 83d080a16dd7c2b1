"""The repository keeps its promises: README's two commands, CI running the same test command, sane requirements."""

import inspect
import re
import sys
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


def test_ci_runs_exactly_the_readme_test_command_then_the_pinned_versions():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    readme = ci.index(readme_commands()[1])  # verbatim, as a line of its own
    assert "rm -rf .venv" in ci[:readme] and any(line.startswith(".venv/bin/ruff check") for line in ci[:readme])
    assert "for pins in colab lower-bounds; do" in ci[readme + 1:]
    assert ".venv/bin/python -m pytest -p no:cacheprovider -m instructor tests/test_grading.py" in ci  # nbgrader's workflow
    colab = (ROOT / ".ci" / "colab.txt").read_text()
    assert "torch==2.11.0" in colab and "ipywidgets==7.7.1" in colab  # Colab, late 2026
    floors = dict(re.findall(r"^([\w-]+)==([\d.]+)", (ROOT / ".ci" / "lower-bounds.txt").read_text(), flags=re.M))
    def release(v):  # "2.3.0" and "2.3" are the same floor
        parts = [int(p) for p in v.split(".") if p]
        while parts and parts[-1] == 0:
            parts.pop()
        return parts

    for name, requirement in declared("dependencies").items():
        assert requirement.startswith(f"{name}>=") and name in floors, f"{name} ({requirement}) has no tested floor"
        assert release(requirement.split(">=")[1]) == release(floors[name]), f"{name}: declared {requirement}, tested {floors[name]}"


def declared(block: str) -> dict[str, str]:
    """Requirement strings of a `name = [...]` list in pyproject.toml, by package name."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    body = re.search(rf"^{block} = \[(.*?)\]", pyproject, flags=re.S | re.M).group(1)
    reqs = re.findall(r'"([^"]+)"', body)
    return {re.split(r"[<>=!~ \[]", r)[0].lower(): r for r in reqs}


def test_requirements_use_ranges_not_pins():
    run, test = declared("dependencies"), declared("test")
    for needed in ["torch", "torchvision", "matplotlib", "ipywidgets", "einops", "numpy", "tqdm", "pillow"]:
        assert needed in run, needed
    for needed in ["jupyterlab", "nbval", "pytest", "ruff", "nbstripout"]:
        assert needed in test, needed
    assert not any("==" in r for r in [*run.values(), *test.values()]), "no exact pins: Colab ships its own versions"
    assert run["ipywidgets"] == "ipywidgets>=7.7"  # Colab ships 7.7.1
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert [ln for ln in lines if ln] == ["-e .[test]"]  # README's one-line setup: the package, its extras, nothing else


def test_imports_are_declared():
    """Every third-party module the package imports is a declared dependency (Pillow was not)."""
    import ast

    imported = set()
    for path in (ROOT / "ddpm_utils").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    module_to_package = {"PIL": "pillow", "einops": "einops", "matplotlib": "matplotlib", "numpy": "numpy", "torch": "torch",
                         "torchvision": "torchvision", "tqdm": "tqdm", "ipywidgets": "ipywidgets", "IPython": "ipywidgets"}
    third_party = imported - stdlib - {"ddpm_utils", "google"}  # google.colab: only inside Colab
    unknown = third_party - set(module_to_package)
    assert not unknown, f"imported but not mapped to a declared dependency: {unknown}"
    run = declared("dependencies")
    assert {module_to_package[m] for m in third_party} <= set(run)


def test_version_is_written_once():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "ddpm_utils.__version__"' in pyproject
    assert not re.search(r'^version = "', pyproject, flags=re.M)
    assert f"## {ddpm_utils.__version__} " in (ROOT / "CHANGELOG.md").read_text()
    assert f"version: {ddpm_utils.__version__}" in (ROOT / "CITATION.cff").read_text()


def test_bundled_data_is_packaged():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"assets/*.npz"' in pyproject and (ROOT / "ddpm_utils" / "assets" / "mnist_5k.npz").is_file()


def test_design_api_signatures():
    """The public names and signatures that notebooks, tests and docs rely on (CONTRIBUTING.md, "Stable names")."""
    expected = {
        "linear_betas": ["T", "beta_start", "beta_end"],
        "cosine_betas": ["T", "s", "max_beta"],
        "make_betas": ["name", "T", "kw"],
        "extract": ["a", "t", "x_shape"],
        "ddpm_step": ["diffusion", "eps", "t", "x_t", "noise", "variance", "clip_x0"],
        "ddim_step": ["diffusion", "eps", "t", "t_prev", "x_t", "eta", "noise", "clip_x0"],
        "sample": ["model", "diffusion", "shape", "sampler", "num_steps", "eta", "y", "guidance_scale", "generator",
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


def test_wheel_holds_the_assets_the_licences_and_the_ddpm_command(tmp_path):
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(tmp_path)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("ddpm_utils-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for asset in ("ddpm_mnist.pt", "mnist_5k.npz", "mnist_classifier.pt"):
        assert f"ddpm_utils/assets/{asset}" in names, asset
    assert any(n.endswith("licenses/LICENSE") for n in names) and any(n.endswith("licenses/LICENSE-CONTENT.md") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "ddpm = ddpm_utils.__main__:cli" in entry_points
    script = Path(sys.executable).parent / "ddpm"  # installed by `pip install -e .[test]` (requirements.txt)
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"ddpm_utils {ddpm_utils.__version__}"


def test_the_package_has_no_import_cycles():
    """No module imports, at the top or inside a function, a module that imports it back (directly or through
    others): data/folders and exercises/grading once did. `__main__` and `__init__` are the roots, left out."""
    import ast

    graph = {}
    for path in (ROOT / "ddpm_utils").glob("*.py"):
        if path.stem in ("__main__", "__init__"):
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                imported.update(alias.name for alias in node.names)
        graph[path.stem] = imported - {"__init__"}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m))
    assert not cycles, f"modules in an import cycle: {cycles}"

"""`ddpm_utils.notebook` (setup cell helpers) and the shape every lesson notebook keeps."""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from ddpm_utils import notebook
from ddpm_utils.notebook import REPO_REF, REPO_URL, colab_url, setup, sync_repo_url

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell):
    return "".join(cell["source"])


def test_colab_url():
    owner_repo = REPO_URL.removeprefix("https://github.com/")
    assert colab_url("01_x.ipynb") == f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/01_x.ipynb"


def test_setup_reports_device_fast_mode_and_seeds(capsys, monkeypatch):
    monkeypatch.setenv("DDPM_FAST", "1")
    device, fast = setup(seed=3)
    a = torch.rand(2)
    setup(seed=3)
    assert torch.equal(a, torch.rand(2)) and fast is True and isinstance(device, torch.device)
    out = capsys.readouterr().out
    assert "fast mode (DDPM_FAST): on" in out and "seed: 3" in out and "Runtime" not in out


def test_setup_on_colab_without_gpu_says_how_to_get_one(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(notebook, "get_device", lambda: torch.device("cpu"))
    setup()
    assert "Runtime > Change runtime type > T4 GPU" in capsys.readouterr().out


def test_sync_repo_url_rewrites_badges_and_install_lines(tmp_path):
    copies = [Path(shutil.copy(p, tmp_path / p.name)) for p in [*LESSONS, ROOT / "README.md"]]
    new = "https://github.com/someone/else-course"
    assert sync_repo_url(new, copies) == copies
    for path in copies[:-1]:
        text = path.read_text()
        assert REPO_URL not in text and f'REPO, REF = \\"{new}\\", \\"{REPO_REF}\\"' in text
        assert f"colab.research.google.com/github/someone/else-course/blob/main/notebooks/{path.name}" in text
    readme = copies[-1].read_text()
    assert "github/someone/else-course/blob/main/notebooks/01_" in readme and "github.com/rasbt/mlxtend" in readme
    assert sync_repo_url(new, copies) == []  # idempotent


def colab_block(path) -> str:
    """The setup cell's Colab part, runnable on its own."""
    cell = source(cells(path)[1])
    block = cell[cell.index('if "google.colab" in sys.modules:'):cell.index("from ddpm_utils.notebook import setup")]
    return "import importlib.util\nimport os\nimport subprocess\nimport sys\n" + block


class FakePip:
    """subprocess.run stand-in: records the command and GIT_TERMINAL_PROMPT, answers with `returncode`."""

    def __init__(self, returncode=0, stderr=""):
        self.calls, self.returncode, self.stderr = [], returncode, stderr

    def __call__(self, command, **kwargs):
        self.calls.append((command, os.environ.get("GIT_TERMINAL_PROMPT")))
        return subprocess.CompletedProcess(command, self.returncode, "", self.stderr)


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_colab_setup_cell_installs_the_pinned_tag_once_and_fails_kindly(path, monkeypatch):
    import ddpm_utils

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.delenv("GIT_TERMINAL_PROMPT", raising=False)
    code = colab_block(path)
    published = code.replace(REPO_URL, "https://github.com/a-school/ddpm-course")

    pip = FakePip()  # the right version is already importable: nothing to install, re-running is instant
    monkeypatch.setattr(subprocess, "run", pip)
    exec(published, {})
    assert pip.calls == []

    monkeypatch.setattr(ddpm_utils, "__version__", "0.0.1")  # an older version (or none) is installed
    exec(published, {})
    (command, prompt), = pip.calls
    assert command[-1] == f"ddpm_utils @ git+https://github.com/a-school/ddpm-course@{REPO_REF}" and prompt == "0"
    assert "--force-reinstall" not in command  # never reinstall Colab's torch

    monkeypatch.setattr(subprocess, "run", FakePip(128, "fatal: could not read Username for 'https://github.com'"))
    with pytest.raises(SystemExit, match="Could not install .* fatal: could not read Username .* run this cell again"):
        exec(published, {})  # a private repository or no network: one readable message, not a CalledProcessError

    pip = FakePip()
    monkeypatch.setattr(subprocess, "run", pip)
    with pytest.raises(SystemExit, match="REPO above is a placeholder"):
        exec(code, {})  # the unpublished placeholder address: say so before trying
    assert pip.calls == []


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_notebook_shape(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "commit notebooks stripped of outputs"
    first, setup_cell = source(nb["cells"][0]), source(nb["cells"][1])
    assert first.startswith(f"# {path.name[:2]} · ")
    assert f"]({colab_url(path.name)})" in first and "**You will learn**" in first and "**Time:**" in first
    assert f'REPO, REF = "{REPO_URL}", "{REPO_REF}"' in setup_cell and "device, FAST = setup(seed=0)" in setup_cell
    assert '"pip", "install"' in setup_cell and "--force-reinstall" not in setup_cell  # never reinstall torch on Colab


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_every_figure_has_a_caption(path):
    """STYLE.md 9: a figure is followed by a Markdown cell whose first line is an italic caption."""
    cs = cells(path)
    for i, cell in enumerate(cs[:-1]):
        text = source(cell)
        last_line = text.strip().splitlines()[-1] if text.strip() else ""
        draws = cell["cell_type"] == "code" and ("plt.show()" in text or "interact(" in text or last_line.startswith("viz."))
        if draws:
            following = source(cs[i + 1])
            assert cs[i + 1]["cell_type"] == "markdown" and following.startswith("*"), f"cell {i} of {path.name}"


def test_readme_links_every_lesson_with_its_badge():
    readme = (ROOT / "README.md").read_text()
    for path in LESSONS:
        assert colab_url(path.name) in readme, path.name


def _checks_that_cannot_fail(code: str) -> list[str]:
    """`try/except` with no failing path (nothing raised when no error comes) and asserts comparing an
    expression with itself: checks that pass whatever the code does."""
    import ast

    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Try) and node.handlers and not node.orelse:
            found.append(f"line {node.lineno}: try/except without an `else: raise` for when no error comes")
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.comparators) == 1:
            if ast.dump(node.test.left) == ast.dump(node.test.comparators[0]):
                found.append(f"line {node.lineno}: assert compares an expression with itself")
    return found


def test_the_scan_finds_checks_that_cannot_fail():
    assert _checks_that_cannot_fail("try:\n    f()\nexcept ValueError as e:\n    print(e)") != []
    assert _checks_that_cannot_fail("assert x.sum() == x.sum()") != []
    assert _checks_that_cannot_fail("try:\n    f()\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError") == []
    assert _checks_that_cannot_fail("assert a == b") == []


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_no_lesson_check_passes_whatever_the_code_does(path):
    problems = [f"cell {i}: {p}" for i, c in enumerate(cells(path)) if c["cell_type"] == "code"
                for p in _checks_that_cannot_fail(source(c))]
    assert not problems, problems

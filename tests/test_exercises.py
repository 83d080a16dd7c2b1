"""Exercise notebooks: generated from the solutions, in sync, and each stops first at its first stub."""

import json

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from ddpm_utils.__main__ import main
from ddpm_utils.exercises import BEGIN, EXERCISES, generate, make_exercise, strip_solutions
from ddpm_utils.notebook import NOTEBOOKS, colab_url

EXERCISE_NOTEBOOKS = sorted(EXERCISES.glob("[0-9][0-9]_*.ipynb"))
REQUIRED = ["def log_normal", "def kl_gauss", "def q_sample", "def my_cosine_betas", "def posterior_coefficients", "def embed",
            "def rotation", "class MyResBlock", "def my_group_norm", "def ema_step", "def my_loss", "def ancestral_step",
            "def my_ddim_step", "def drop_labels", "def my_guided_eps", "def to_model_input", "def flow_pair",
            "def velocity_to_eps", "def flow_euler_step", "def to_latent", "def to_image", "def cross_attention",
            "def prompt_guidance"]


def test_strip_solutions_keeps_indentation_and_rejects_unbalanced_blocks():
    source = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\n\nprint(f(1))"
    assert strip_solutions(source) == "def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\n\nprint(f(1))"
    assert strip_solutions("a = 1") == "a = 1"
    for bad in ("### BEGIN SOLUTION\nx", "x\n### END SOLUTION", "### BEGIN SOLUTION\n### BEGIN SOLUTION"):
        with pytest.raises(ValueError, match="SOLUTION"):
            strip_solutions(bad)


def test_committed_exercises_are_in_sync_with_the_solutions(tmp_path):
    written = generate(out=tmp_path)
    assert [p.name for p in written] == [p.name for p in EXERCISE_NOTEBOOKS] and len(written) == len(EXERCISE_NOTEBOOKS) == 12
    for path in written:
        assert path.read_text() == (EXERCISES / path.name).read_text(), f"run `python -m ddpm_utils exercises` ({path.name})"
    (tmp_path / "99_old.ipynb").write_text("{}")
    generate(out=tmp_path)
    assert not (tmp_path / "99_old.ipynb").exists()  # a renamed lesson leaves no stale exercise behind


def test_every_required_exercise_is_marked_and_followed_by_a_check():
    text = "".join(p.read_text() for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))
    for name in REQUIRED:
        assert name in text, name
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for i, cell in enumerate(cells):
            if BEGIN in "".join(cell["source"]):
                following = "".join(cells[i + 1]["source"])
                assert "from ddpm_utils.checks import check_" in following, f"{path.name} cell {i}: no check cell after it"


@pytest.mark.parametrize("path", EXERCISE_NOTEBOOKS, ids=[p.name for p in EXERCISE_NOTEBOOKS])
def test_exercise_notebook_has_stubs_no_solutions_and_its_own_badge(path):
    nb = json.loads(path.read_text())
    text = path.read_text()
    assert BEGIN not in text and "# YOUR CODE HERE" in text and "raise NotImplementedError" in text
    header = "".join(nb["cells"][0]["source"])
    assert f"]({colab_url('exercises/' + path.name)})" in header and "(exercises)" in header.splitlines()[0]
    assert f"]({colab_url(path.name)})" in header  # points to the solution, by an address that opens on Colab too
    assert colab_url("exercises/" + path.name) in (NOTEBOOKS.parent / "README.md").read_text()
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", EXERCISE_NOTEBOOKS, ids=[p.name for p in EXERCISE_NOTEBOOKS])
def test_first_error_of_an_exercise_notebook_is_its_first_stub(path):
    """Run the notebook top to bottom (fast mode): everything before the first exercise works, and
    the first error is the NotImplementedError of the first stub (raised in its cell or in its check)."""
    nb = nbformat.read(path, as_version=4)
    first_stub = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "# YOUR CODE HERE" in c.source)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    failed_at = None
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells[: first_stub + 2]):
            try:
                client.execute_cell(cell, i)
            except CellExecutionError as e:
                failed_at, error = i, e
                break
    assert failed_at in (first_stub, first_stub + 1), f"first error in cell {failed_at}, first stub in cell {first_stub}"
    assert error.ename == "NotImplementedError", error.ename


def test_cli_exercises_writes_the_folder(monkeypatch, tmp_path, capsys):
    import ddpm_utils.exercises as exercises

    monkeypatch.setattr(exercises, "EXERCISES", tmp_path)
    monkeypatch.setattr(exercises.generate, "__defaults__", (NOTEBOOKS, tmp_path))
    assert main(["exercises"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in EXERCISE_NOTEBOOKS]
    assert capsys.readouterr().out.count("wrote ") == len(EXERCISE_NOTEBOOKS) == 12
    monkeypatch.setattr(exercises.generate, "__defaults__", (tmp_path / "nowhere", tmp_path))
    assert main(["exercises"]) == 2
    assert "no lesson notebooks" in capsys.readouterr().err


def test_make_exercise_leaves_the_solution_untouched():
    path = NOTEBOOKS / "02_forward_process_and_schedules.ipynb"
    nb = json.loads(path.read_text())
    before = json.dumps(nb)
    make_exercise(nb, path.name)
    assert json.dumps(nb) == before


@pytest.mark.parametrize("path", EXERCISE_NOTEBOOKS, ids=[p.name for p in EXERCISE_NOTEBOOKS])
def test_no_widget_runs_before_the_first_stub(path):
    """Under ipywidgets 7 (Colab's version) nbclient, which runs these notebooks up to their first stub above, can stall
    on an `interact` cell for its whole timeout: keep every widget after a notebook's first exercise."""
    nb = nbformat.read(path, as_version=4)
    first_stub = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "# YOUR CODE HERE" in c.source)
    assert not [i for i, c in enumerate(nb.cells[: first_stub + 2]) if c.cell_type == "code" and "interact(" in c.source]

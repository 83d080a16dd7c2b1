"""The lessons as nbgrader source notebooks (grading.py), and the whole release-collect-grade workflow.

The workflow test needs nbgrader (`pip install -e ".[instructor]"`); it is marked `instructor`, left out of
the default run, and run by `.ci/run` in its own environment: `pytest -m instructor tests/test_grading.py`.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddpm_utils.__main__ import main
from ddpm_utils.exercises import make_exercise
from ddpm_utils.grading import CHECK, POINTS, lessons, make_course, with_metadata
from ddpm_utils.notebook import BEGIN, dumps

ROOT = Path(__file__).resolve().parent.parent
LESSONS = lessons(ROOT / "notebooks")


def _cells(path):
    return json.loads(Path(path).read_text())["cells"]


def _code(cells):
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_committed_metadata_is_what_the_markers_say(path):
    """`python -m ddpm_utils exercises` writes the metadata; a lesson edited since must be regenerated."""
    assert dumps(with_metadata(json.loads(path.read_text()))) == path.read_text(), \
        f"{path.name}: run `python -m ddpm_utils exercises` to update its nbgrader metadata"


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_every_exercise_is_a_solution_cell_with_a_locked_graded_check(path):
    cells = _cells(path)
    ids = [c["metadata"]["nbgrader"]["grade_id"] for c in cells if "nbgrader" in c["metadata"]]
    assert len(ids) == len(set(ids)), "grade ids must be unique in a notebook"
    exercises = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and BEGIN in "".join(c["source"])]
    assert exercises
    for i in exercises:
        solution, check = cells[i]["metadata"]["nbgrader"], cells[i + 1]["metadata"].get("nbgrader", {})
        assert solution["solution"] and not solution["grade"] and not solution["locked"] and solution["schema_version"] == 3
        assert CHECK in "".join(cells[i + 1]["source"])
        assert check["grade"] and check["locked"] and not check["solution"] and check["points"] == POINTS > 0
    graded = [i for i, c in enumerate(cells) if c["metadata"].get("nbgrader", {}).get("grade")]
    assert graded == [i + 1 for i in exercises]  # nothing else is graded
    assert all(c["metadata"]["nbgrader"]["locked"] for c in cells if c["cell_type"] == "markdown")  # explanations read-only


def test_an_exercise_without_its_check_or_a_name_is_refused():
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": f"def f():\n    {BEGIN}\n    pass\n    ### END SOLUTION"},
                    {"cell_type": "code", "metadata": {}, "source": "print(f())"}]}
    with pytest.raises(ValueError, match="the exercise 'f' .* must be followed by its check cell"):
        with_metadata(nb)
    nb["cells"][0]["source"] = f"{BEGIN}\nx = 1\n### END SOLUTION"
    with pytest.raises(ValueError, match="must define a function or class"):
        with_metadata(nb)


def test_the_course_folder_for_nbgrader(tmp_path, capsys):
    assert main(["nbgrader-course", str(tmp_path / "course"), "--lessons", "01,03"]) == 0
    assert "nbgrader generate_assignment" in capsys.readouterr().out
    sources = sorted(p.relative_to(tmp_path / "course").as_posix() for p in (tmp_path / "course" / "source").rglob("*.ipynb"))
    assert sources == ["source/01_gaussians_and_elbo/01_gaussians_and_elbo.ipynb",
                       "source/03_sinusoidal_embeddings/03_sinusoidal_embeddings.ipynb"]
    config = (tmp_path / "course" / "nbgrader_config.py").read_text()
    assert 'os.environ.setdefault("DDPM_FAST", "1")' in config and "c.Execute.timeout = 120" in config
    compile(config, "nbgrader_config.py", "exec")
    with pytest.raises(ValueError, match="no lesson with exercises matches"):
        make_course(tmp_path / "x", ["99"])


# ---- the workflow, with nbgrader itself -------------------------------------------------------------------

WRONG = {  # a realistic mistake per notebook: (exercise, correct line, wrong line, words of the hint in the feedback)
    "01_gaussians_and_elbo": ("kl_gauss", "return math.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5",
                              "return math.log(sq / sp) + (sp**2 + (mq - mp) ** 2) / (2 * sq**2) - 0.5", "you computed KL(p || q)"),
    "03_sinusoidal_embeddings": ("embed", "torch.cat([torch.sin(args), torch.cos(args)], dim=-1)",
                                 "torch.cat([torch.cos(args), torch.sin(args)], dim=-1)", "sin comes first"),
}


def _nbgrader(course, *args):
    bin_dir = Path(sys.executable).parent  # nbgrader runs `alembic` from the PATH: the environment as if activated
    env = {k: v for k, v in os.environ.items() if k != "DDPM_FAST"}  # the course's config must set it
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run([str(bin_dir / "nbgrader"), *args], cwd=course, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _submit(course, student, name, cells):
    folder = course / "submitted" / student / name
    folder.mkdir(parents=True)
    release = json.loads((course / "release" / name / f"{name}.ipynb").read_text())
    release["cells"] = cells
    (folder / f"{name}.ipynb").write_text(json.dumps(release))


@pytest.mark.instructor
def test_generate_release_autograde_and_feedback_with_nbgrader(tmp_path):
    from nbgrader.api import Gradebook  # marked `instructor`: run where the [instructor] extra is installed

    course = make_course(tmp_path / "course", list({n[:2] for n in WRONG}))
    for name, (exercise, right, wrong, hint) in WRONG.items():
        _nbgrader(course, "generate_assignment", name)
        release = _cells(course / "release" / name / f"{name}.ipynb")
        lesson = _cells(ROOT / "notebooks" / f"{name}.ipynb")
        ours = make_exercise(json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text()), f"{name}.ipynb")["cells"]
        assert _code(release) == _code(ours), "nbgrader's student version and `ddpm exercises` must have the same code cells"
        assert all(c["metadata"].get("editable") is False for c in release if c["metadata"].get("nbgrader", {}).get("grade"))
        # three students: the lesson itself (solved), the release as handed out (blank), and one mistake
        solved = [{**r, "source": "".join(s["source"])} if r["cell_type"] == "code" else r for r, s in zip(release, lesson, strict=True)]
        mistake = [{**c, "source": c["source"].replace(right, wrong)} if exercise in str(c["metadata"].get("nbgrader")) else c
                   for c in solved]
        assert sum(right in c["source"] for c in solved) == 1 and mistake != solved
        _submit(course, "solved", name, solved)
        _submit(course, "blank", name, release)
        _submit(course, "mistake", name, mistake)
        start = time.perf_counter()
        _nbgrader(course, "autograde", name)
        print(f"{name}: autograding 3 submissions took {time.perf_counter() - start:.0f} s")
        _nbgrader(course, "generate_feedback", name)
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            scores = {student: {g.name: g.score for g in gb.find_submission_notebook(name, name, student).grades}
                      for student in ("solved", "blank", "mistake")}
        checks = sorted(scores["solved"])
        assert len(checks) == sum(BEGIN in "".join(c["source"]) for c in lesson) == 2
        assert scores["solved"] == dict.fromkeys(checks, POINTS)
        assert scores["blank"] == dict.fromkeys(checks, 0)
        assert scores["mistake"] == {c: 0 if c == f"{exercise}_check" else POINTS for c in checks}  # exactly that exercise
        feedback = (course / "feedback" / "mistake" / name / f"{name}.html").read_text()
        assert hint in feedback.replace("&#39;", "'").replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
        graded = (course / "autograded" / "solved" / name / f"{name}.ipynb").read_text()
        assert "fast mode (DDPM_FAST): on" in graded  # the course config reached the autograder's kernel
    _nbgrader(course, "export")
    grades = (course / "grades.csv").read_text().splitlines()
    assert len(grades) == 1 + 2 * 3 and grades[0].startswith("assignment,")


@pytest.mark.instructor
@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_nbgrader_accepts_every_lesson_as_a_source_notebook(path):
    import nbformat
    from nbgrader.nbgraderformat import MetadataValidator

    nb = nbformat.read(path, as_version=4)
    MetadataValidator().validate_nb(nb)  # raises ValidationError on bad or missing metadata
    assert sum(bool(c.metadata.get("nbgrader", {}).get("points")) for c in nb.cells) == sum(BEGIN in c.source for c in nb.cells)

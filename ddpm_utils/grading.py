"""The lessons as nbgrader source notebooks, and a course folder for nbgrader (`pip install "ddpm_utils[instructor]"`).

nbgrader (https://nbgrader.readthedocs.io) reads what each cell is from its metadata (format v3):

- an exercise (a code cell with `### BEGIN SOLUTION`) is a *solution* cell, graded through the check after it;
- the check cell after it is an *autograded test* cell worth `POINTS`, locked, so a student cannot edit
  the check away (nbgrader also restores its source before grading);
- the Markdown cells and the setup cell are *read-only*.

`python -m ddpm_utils exercises` writes this metadata into `notebooks/NN_*.ipynb` from the markers
(`write_metadata`), so nobody sets it by hand, and `tests/test_grading.py` keeps the two consistent.
`python -m ddpm_utils nbgrader-course DIR` lays out an nbgrader course folder: `DIR/source/<lesson>/<lesson>.ipynb`
for every lesson with exercises, and `DIR/nbgrader_config.py`, which grades in fast mode (`DDPM_FAST=1`:
every cell runs, on small sizes). Nothing here imports nbgrader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .notebook import BEGIN, NOTEBOOKS, dumps, lessons

POINTS = 1  # points of each exercise's check cell
CHECK = "from ddpm_utils.checks import check_"  # how a check cell starts
SCHEMA_VERSION = 3  # nbgrader's cell metadata format


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def exercise_name(source: str) -> str:
    """The name an exercise defines (`def name` or `class name`), used for its grade id."""
    match = re.search(r"^\s*(?:def|class)\s+(\w+)", source, flags=re.M)
    if match is None:
        raise ValueError(f"an exercise cell must define a function or class; this one does not:\n{source[:200]}")
    return match.group(1)


def _meta(grade_id: str, *, grade=False, solution=False, locked=False, points=None) -> dict:
    meta = {"grade": grade, "solution": solution, "locked": locked, "grade_id": grade_id, "schema_version": SCHEMA_VERSION}
    return meta if points is None else {**meta, "points": points}


def with_metadata(nb: dict) -> dict:
    """A copy of lesson notebook `nb` (the .ipynb dict) whose cells carry nbgrader metadata as the markers say."""
    nb = json.loads(json.dumps(nb))
    cells = nb["cells"]
    for cell in cells:
        cell["metadata"].pop("nbgrader", None)
    for i, cell in enumerate(cells):
        source = _source(cell)
        if cell["cell_type"] == "code" and BEGIN in source:
            name = exercise_name(source)
            check = cells[i + 1] if i + 1 < len(cells) else None
            if check is None or check["cell_type"] != "code" or CHECK not in _source(check):
                raise ValueError(f"the exercise {name!r} (cell {i}) must be followed by its check cell ({CHECK}...)")
            cell["metadata"]["nbgrader"] = _meta(name, solution=True)
            check["metadata"]["nbgrader"] = _meta(f"{name}_check", grade=True, locked=True, points=POINTS)
        elif (cell["cell_type"] == "markdown" or i == 1) and "nbgrader" not in cell["metadata"]:
            cell["metadata"]["nbgrader"] = _meta(f"readonly_{cell.get('id', i)}", locked=True)  # explanation, setup
    return nb


def write_metadata(src: Path = NOTEBOOKS) -> list[Path]:
    """Write nbgrader metadata into every lesson with exercises; returns the files that changed."""
    changed = []
    for path in lessons(src):
        text = path.read_text(encoding="utf-8")
        new = dumps(with_metadata(json.loads(text)))
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


CONFIG = '''\
# nbgrader configuration of the DDPM course (written by `python -m ddpm_utils nbgrader-course`).
import os

os.environ.setdefault("DDPM_FAST", "1")  # the autograder's kernels inherit it: every cell runs, on small sizes

c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "ddpm-course"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.Execute.timeout = 120  # seconds per cell: nbgrader's 30 is too short for the training cells; the slowest takes about 20
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}  # as `ddpm exercises` writes
'''


def make_course(out, names: list[str] | None = None, src: Path = NOTEBOOKS) -> Path:
    """An nbgrader course folder at `out`: source/<lesson>/<lesson>.ipynb for each lesson with exercises (or
    the lessons whose names start with one of `names`, e.g. ["01", "03"]), and nbgrader_config.py."""
    out = Path(out)
    chosen = [p for p in lessons(src) if names is None or any(p.name.startswith(n) for n in names)]
    if not chosen:
        raise ValueError(f"no lesson with exercises matches {names}; lessons: {[p.stem for p in lessons(src)]}")
    for path in chosen:
        folder = out / "source" / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        (folder / path.name).write_text(dumps(with_metadata(json.loads(path.read_text(encoding="utf-8")))), encoding="utf-8")
    (out / "nbgrader_config.py").write_text(CONFIG, encoding="utf-8")  # nothing else: the notebooks import ddpm_utils
    return out

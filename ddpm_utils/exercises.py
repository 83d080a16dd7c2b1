"""Exercise notebooks from the solution notebooks: `python -m ddpm_utils exercises`.

In a lesson notebook, the code a student should write sits between `### BEGIN SOLUTION` and
`### END SOLUTION`. Each such block becomes, at the same indentation,

    # YOUR CODE HERE
    raise NotImplementedError()

in `notebooks/exercises/NN_*.ipynb`, with every output removed (the stub nbgrader's `ClearSolutions`
writes, so `nbgrader generate_assignment` makes the same code cells; `grading.py`). The check cell that follows each
exercise (a `ddpm_utils.checks` function) then tells the student whether their code is right.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from .grading import write_metadata
from .notebook import BEGIN, END, NOTEBOOKS, colab_url, dumps, lessons

EXERCISES = NOTEBOOKS / "exercises"
NOTE = ("> **Exercise version.** Write the code where it says `# YOUR CODE HERE` (delete the `raise NotImplementedError()`), "
        "then run the check cell below it: it tests your code on small cases and gives a hint when something is off. "
        "Stuck? The solution is the lesson notebook [`{name}`]({url}) (it opens in Colab; locally it is `notebooks/{name}`).")


def strip_solutions(source: str) -> str:
    """Replace every BEGIN/END SOLUTION block of a cell's source by a stub at the block's indentation."""
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.split("\n"), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"line {number}: {BEGIN} inside another solution block")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError()"]
        elif stripped == END:
            if not inside:
                raise ValueError(f"line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} without {END}")
    return "\n".join(out)


def make_exercise(nb: dict, name: str) -> dict:
    """The exercise version of notebook `nb` (a dict as in the .ipynb file) called `name`."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code":
            source = strip_solutions(source)
            cell["outputs"], cell["execution_count"] = [], None
        cell["source"] = source.splitlines(keepends=True)
    header = "".join(nb["cells"][0]["source"])
    header = header.replace(colab_url(name), colab_url(f"exercises/{name}"))
    header = re.sub(r"^(# .*)$", r"\1 (exercises)", header, count=1, flags=re.M)
    header = header.replace("\n\n**You will learn**", "\n\n" + NOTE.format(name=name, url=colab_url(name)) + "\n\n**You will learn**", 1)
    nb["cells"][0]["source"] = header.splitlines(keepends=True)
    return nb


def generate(src: Path = NOTEBOOKS, out: Path = EXERCISES) -> list[Path]:
    """Write the exercise version of every lesson notebook that has solution blocks; remove stale ones.
    First the lessons' nbgrader metadata is brought up to date (`grading.write_metadata`)."""
    if not any(Path(src).glob("[0-9][0-9]_*.ipynb")):
        raise FileNotFoundError(f"no lesson notebooks (NN_*.ipynb) in {src}; run this from a clone of the course repository")
    write_metadata(src)  # the lessons' nbgrader metadata, from the same markers
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in lessons(src):
        target = out / path.name
        target.write_text(dumps(make_exercise(json.loads(path.read_text(encoding="utf-8")), path.name)), encoding="utf-8")
        written.append(target)
    for stale in set(out.glob("*.ipynb")) - set(written):
        stale.unlink()
    return written

"""What every notebook's setup cell needs: the course's address, and `setup()`.

`REPO_URL` is the one place the repository's address is written. The notebooks' badges and
Colab install lines, and README's badges, copy it (tests keep them in sync); after changing it,
run `python -m ddpm_utils.notebook` to rewrite them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from . import __version__
from .config import fast_mode, get_device, seed_everything

REPO_URL = "https://github.com/YOUR-GITHUB-ORG/ddpm-course"  # placeholder until the course is published
REPO_REF = f"v{__version__}"  # the git tag Colab installs: tag each release so that a push mid-term changes nothing for a class
BRANCH = "main"
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"  # around the code a student writes (exercises, grading)


def lessons(src: Path = NOTEBOOKS) -> list[Path]:
    """The lesson notebooks (NN_*.ipynb) that have solution blocks."""
    return [p for p in sorted(Path(src).glob("[0-9][0-9]_*.ipynb")) if BEGIN in p.read_text(encoding="utf-8")]


def dumps(nb: dict) -> str:
    """A notebook (a dict as in the .ipynb file) as nbformat writes it."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def colab_url(notebook: str) -> str:
    """The "Open in Colab" address of `notebooks/<notebook>` in REPO_URL."""
    owner_repo = REPO_URL.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/notebooks/{notebook}"


def in_colab() -> bool:
    return "google.colab" in sys.modules


def setup(seed: int = 0) -> tuple[torch.device, bool]:
    """Pick the device, seed every RNG, read DDPM_FAST, and say so in one line. Returns (device, fast)."""
    device, fast = get_device(), fast_mode()
    seed_everything(seed)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
    print(f"device: {name} | fast mode (DDPM_FAST): {'on' if fast else 'off'} | seed: {seed} | torch {torch.__version__}")
    if in_colab() and device.type == "cpu":
        print("No GPU in this Colab runtime. For the training lessons choose Runtime > Change runtime type > "
              "T4 GPU, then run this cell again.")
    return device, fast


def sync_repo_url(url: str = REPO_URL, files=None, ref: str = REPO_REF) -> list[Path]:
    """Rewrite the course's address and tag in the notebooks' Colab install lines (`REPO, REF = "...", "..."`)
    and the address in every Colab badge (notebooks and README.md). Returns the files that changed."""
    install = re.compile(r'(REPO, REF = \\")https://github\.com/[\w.-]+/[\w.-]+(\\", \\")[^\\"]+(\\")')  # inside the .ipynb JSON
    colab = re.compile(r"colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/")
    owner_repo = url.removeprefix("https://github.com/")
    if files is None:
        files = [*sorted(NOTEBOOKS.glob("**/*.ipynb")), NOTEBOOKS.parent / "README.md"]
    changed = []
    for path in map(Path, files):
        text = path.read_text()
        new = install.sub(rf"\g<1>{url}\g<2>{ref}\g<3>", colab.sub(f"colab.research.google.com/github/{owner_repo}/", text))
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


if __name__ == "__main__":
    print("\n".join(str(p) for p in sync_repo_url()) or "notebooks and README already use " + REPO_URL)

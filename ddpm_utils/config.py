"""One place for the run-time settings every notebook shares.

- `fast_mode()`: is `DDPM_FAST` set? (The test suite sets it; notebooks then shrink
  data, model, steps and sample counts, but run the same code.)
- `network_allowed()`: may a loader try the internet? Never under tests or fast mode.
- `get_device()`: the best available device, chosen once per notebook.
- `seed_everything(seed)`: Python, NumPy and torch RNGs in one call.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

_FALSE = {"", "0", "false", "no", "off"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in _FALSE


def fast_mode() -> bool:
    """True when the environment variable `DDPM_FAST` is set to a true value (1, yes, ...)."""
    return _env_flag("DDPM_FAST")


def network_allowed() -> bool:
    """False under pytest, in fast mode, or with `DDPM_OFFLINE=1`; True otherwise."""
    under_pytest = "PYTEST_CURRENT_TEST" in os.environ
    return not (under_pytest or fast_mode() or _env_flag("DDPM_OFFLINE"))


def get_device(prefer: str | None = None) -> torch.device:
    """Return `torch.device(prefer)` if given, else CUDA, then Apple MPS, then CPU."""
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global RNGs; return a CPU generator seeded the same.

    The returned generator is what to pass as `generator=` for reproducible sampling.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)

import random

import numpy as np
import pytest
import torch

from ddpm_utils.config import fast_mode, get_device, network_allowed, seed_everything


@pytest.mark.parametrize("value, expected", [("1", True), ("yes", True), ("0", False), ("", False), ("false", False)])
def test_fast_mode_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("DDPM_FAST", value)
    assert fast_mode() is expected


def test_network_is_never_allowed_under_pytest(monkeypatch):
    monkeypatch.setenv("DDPM_FAST", "0")
    assert network_allowed() is False  # PYTEST_CURRENT_TEST is set while a test runs
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert network_allowed() is True
    monkeypatch.setenv("DDPM_OFFLINE", "1")
    assert network_allowed() is False


def test_seed_everything_makes_all_rngs_repeat():
    g = seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    g = seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    assert a == b
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        seed_everything(-1)


def test_get_device():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device().type in {"cpu", "cuda", "mps"}

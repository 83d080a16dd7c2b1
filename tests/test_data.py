import socket

import pytest
import torch

from ddpm_utils import data
from ddpm_utils.data import load_mnist


def test_bundled_subset_splits_ranges_and_labels(capsys):
    train = load_mnist(train=True, source="bundled")
    assert "MNIST: bundled 5k subset" in capsys.readouterr().out
    test = load_mnist(train=False, source="bundled")
    assert len(train) == 4500 and len(test) == 500
    assert torch.bincount(train.labels).tolist() == [450] * 10
    assert torch.bincount(test.labels).tolist() == [50] * 10
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    # train and test are disjoint (no image appears in both)
    train_set = {bytes(im.numpy()) for im in train.images}
    assert not any(bytes(im.numpy()) in train_set for im in test.images)
    images, labels = train.tensors()
    assert images.shape == (4500, 1, 28, 28) and torch.equal(images[7], train[7][0]) and labels[7].item() == train[7][1]
    loader = torch.utils.data.DataLoader(train, batch_size=16)
    xb, yb = next(iter(loader))
    assert xb.shape == (16, 1, 28, 28) and yb.dtype == torch.long


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network must not be tried")

    def torchvision_without_files(train, root, download):
        if download:
            refuse()
        raise RuntimeError("Dataset not found")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(data, "_torchvision", torchvision_without_files)


def test_auto_in_fast_mode_uses_the_bundled_subset_without_the_network(no_network, capsys):
    ds = load_mnist()
    assert len(ds) == 4500 and "bundled" in capsys.readouterr().out


def test_auto_without_files_or_network_falls_back(no_network, monkeypatch, capsys):
    monkeypatch.setenv("DDPM_FAST", "0")
    monkeypatch.setattr(data, "network_allowed", lambda: False)
    assert len(load_mnist(train=False)) == 500
    assert "no MNIST files found and no network" in capsys.readouterr().out


def test_auto_survives_a_failing_download(monkeypatch, capsys):
    monkeypatch.setenv("DDPM_FAST", "0")
    monkeypatch.setattr(data, "network_allowed", lambda: True)
    monkeypatch.setattr(data, "_reachable", lambda host_port: True)

    def flaky(train, root, download):
        raise (TimeoutError("stalled") if download else RuntimeError("Dataset not found"))

    monkeypatch.setattr(data, "_torchvision", flaky)
    assert len(load_mnist()) == 4500
    assert "download failed: TimeoutError" in capsys.readouterr().out


def test_reachable_gives_up_fast_on_a_dead_address():
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never routed, so this either fails at once or times out.
    assert data._reachable(("192.0.2.1", 9), timeout=0.5) is False


def test_torchvision_source_offline_without_files_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="torchvision MNIST files are not in .* use source='bundled'"):
        load_mnist(source="torchvision", root=tmp_path)


def test_bad_source():
    with pytest.raises(ValueError, match="source must be one of \\('auto', 'torchvision', 'bundled'\\)"):
        load_mnist(source="kaggle")

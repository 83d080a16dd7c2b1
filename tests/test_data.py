import re
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


# ---- the data seam: torchvision's classes on files in their real on-disk layout, written here ----------------

def _write_idx(folder, prefix, images, labels, gz=False):
    """MNIST's idx format (big-endian header, then the bytes), as the data set's files are published."""
    import gzip
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    blobs = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, *images.shape) + images.numpy().tobytes(),
             f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, len(labels)) + labels.numpy().astype("uint8").tobytes()}
    for name, blob in blobs.items():
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)


def _fake_idx_set(folder, gz=False):
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (12, 28, 28), generator=g, dtype=torch.uint8), torch.arange(12) % 10
    test = torch.randint(0, 256, (5, 28, 28), generator=g, dtype=torch.uint8), torch.arange(5)
    _write_idx(folder, "train", *train, gz=gz)
    _write_idx(folder, "t10k", *test, gz=gz)
    return train, test


def test_mnist_and_fashion_mnist_through_torchvisions_classes(tmp_path, capsys):
    (x, y), (x_test, _) = _fake_idx_set(tmp_path / "MNIST" / "raw")
    ds = data.load_dataset("mnist", root=tmp_path, source="torchvision")
    assert "torchvision MNIST" in capsys.readouterr().out
    assert len(ds) == 12 and ds.class_names == [str(d) for d in range(10)] and (ds.channels, ds.image_size) == (1, 28)
    image, label = ds[3]
    assert torch.equal(image, x[3].float().unsqueeze(0) / 127.5 - 1) and label == 3
    (fx, fy), _ = _fake_idx_set(tmp_path / "FashionMNIST" / "raw", gz=True)  # as published: .gz files
    fashion = data.load_dataset("fashion-mnist", root=tmp_path)
    assert fashion.class_names[:2] == ["T-shirt/top", "Trouser"] and fashion.num_classes == 10
    assert torch.equal(fashion.images[:, 0], fx) and torch.equal(fashion.labels, fy)
    test = data.load_dataset("fashion-mnist", train=False, root=tmp_path, image_size=32)
    assert test.images.shape == (5, 1, 32, 32) and test.info() == {"name": "fashion-mnist", "class_names": fashion.class_names,
                                                                   "channels": 1, "image_size": 32}


def test_idx_files_lying_flat_as_debian_installs_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA", str(tmp_path / "cache"))
    (fx, _), _ = _fake_idx_set(tmp_path / "usr-share-datasets-fashion-mnist", gz=True)
    ds = data.load_dataset("fashion-mnist", root=tmp_path / "usr-share-datasets-fashion-mnist")
    assert torch.equal(ds.images[:, 0], fx)
    assert (tmp_path / "cache" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # unpacked into the cache


def test_cifar10_through_torchvisions_class(tmp_path, monkeypatch):
    import pickle

    import numpy as np
    import torchvision.datasets.cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a: True)  # ours are not the official files (MD5)
    ds = data.load_dataset("cifar10", root=tmp_path)
    assert len(ds) == 20 and ds.class_names == names and (ds.channels, ds.image_size) == (3, 32)
    row = batches["data_batch_1"]["data"][1]  # CIFAR's row: 1024 red, then 1024 green, then 1024 blue values
    assert torch.equal(ds.images[1], torch.from_numpy(row.reshape(3, 32, 32).copy()))
    assert ds[1][1] == batches["data_batch_1"]["labels"][1]
    assert len(data.load_dataset("cifar10", train=False, root=tmp_path)) == 4


def test_missing_files_offline_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR10 files are not in .*cifar-10-batches-py and the network is off.*"
                                                r"cifar-10-python.tar.gz"):
        data.load_dataset("cifar10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"FashionMNIST files are not in .*FashionMNIST/raw .*dataset-fashion-mnist"):
        data.load_dataset("fashion-mnist", root=tmp_path)


def test_bad_names_and_options_are_refused():
    with pytest.raises(ValueError, match=re.escape(f"unknown data set 'imagenet'; expected one of {tuple(data.DATASETS)}")):
        data.load_dataset("imagenet")
    with pytest.raises(ValueError, match="only MNIST has a bundled copy"):
        data.load_dataset("cifar10", source="bundled")
    with pytest.raises(ValueError, match="needs root="):
        data.load_dataset("folder")
    with pytest.raises(ValueError, match="channels must be 1 .* or 3"):
        data.load_dataset("folder", root=".", channels=2)
    with pytest.raises(ValueError, match="image_size must be an int >= 8"):
        data.load_dataset("mnist", image_size=4)


def test_mnist_resized_keeps_its_labels():
    ds = data.load_dataset("mnist", source="bundled", image_size=32)
    assert ds.images.shape == (4500, 1, 32, 32) and ds.num_classes == 10 and ds.image_size == 32
    assert torch.equal(ds.labels, load_mnist(source="bundled").labels)


def test_a_new_torchvision_set_is_one_row_and_one_entry(tmp_path, monkeypatch, capsys):
    """CONTRIBUTING.md's data seam: KMNIST (idx files, like MNIST) added as a row of TORCHVISION and an entry of
    DATASETS loads through torchvision's own class, with its class names, flips off and 28 px by default."""
    monkeypatch.setitem(data.TORCHVISION, "kmnist", data.TorchvisionSet("KMNIST", "KMNIST/raw", "the four idx files", True))
    monkeypatch.setitem(data.DATASETS, "kmnist", data.DataSet(data._load_torchvision("kmnist"), 28, False))
    (x, y), _ = _fake_idx_set(tmp_path / "KMNIST" / "raw", gz=True)
    ds = data.load_dataset("kmnist", root=tmp_path)
    assert "kmnist: torchvision KMNIST" in capsys.readouterr().out
    assert torch.equal(ds.images[:, 0], x) and torch.equal(ds.labels, y) and ds.class_names[0] == "o"  # KMNIST's first class
    assert ds.info()["name"] == "kmnist"


def test_the_data_set_table_sets_the_defaults():
    assert not data.DATASETS["mnist"].hflip and not data.DATASETS["fashion-mnist"].hflip
    assert data.DATASETS["cifar10"].hflip and data.DATASETS["folder"].hflip
    assert {name: entry.image_size for name, entry in data.DATASETS.items()} == {"mnist": 28, "fashion-mnist": 28, "cifar10": 32,
                                                                                 "folder": 64}
    assert [name for name, row in data.TORCHVISION.items() if not row.idx] == ["cifar10"]

"""Folders and zips of images as data sets (`data.load_dataset("folder", ...)`), made here file by file."""

import zipfile

import pytest
import torch
from PIL import Image

from ddpm_utils import data
from ddpm_utils.data import write_tinted_digits
from ddpm_utils.folders import folder_transform


def _save(path, mode, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


@pytest.fixture
def messy(tmp_path):
    """Two classes of mixed sizes and modes, plus what a real folder also holds."""
    root = tmp_path / "pets"
    _save(root / "cat" / "a.png", "RGB", (40, 30), (255, 0, 0))
    _save(root / "cat" / "b.jpg", "L", (64, 64), 128)
    _save(root / "cat" / "c.png", "RGBA", (20, 20), (0, 0, 255, 0))  # fully transparent: becomes white
    for i in range(3):
        _save(root / "dog" / f"{i}.png", "P", (50, 80), 3)
    _save(root / "dog" / "d.bmp", "RGB", (16, 16), (0, 255, 0))
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG but not really")
    _save(root / ".ipynb_checkpoints" / "x.png", "RGB", (8, 8), 0)  # hidden: not a class
    (root / "empty").mkdir()  # no images: not a class
    return root


def test_class_sub_folders_become_labels_and_every_image_is_converted(messy, capsys):
    train = data.load_dataset("folder", root=messy, image_size=16)
    test = data.load_dataset("folder", train=False, root=messy, image_size=16)
    out = capsys.readouterr().out
    assert "7 images in 2 classes" in out and "2 file(s) skipped (not images)" in out and "without images: ['empty']" in out
    assert train.class_names == ["cat", "dog"] and train.num_classes == 2 and train.name == "folder"
    assert (train.channels, train.image_size) == (3, 16)  # not every image is grayscale
    assert len(train) + len(test) == 7 and len(test) == 2  # one of each class held out
    assert sorted(test.labels.tolist()) == [0, 1]
    every = torch.cat([train.images, test.images])
    assert every.shape == (7, 3, 16, 16) and every.dtype == torch.uint8
    colours = {tuple(im[:, 8, 8].tolist()) for im in every}
    assert {(255, 0, 0), (128, 128, 128), (255, 255, 255), (0, 255, 0)} <= colours  # RGB, L, transparent RGBA, BMP
    again = data.load_dataset("folder", train=False, root=messy, image_size=16)
    assert torch.equal(again.images, test.images)  # the split is the same on every call


def test_a_grayscale_folder_stays_grayscale_unless_told(tmp_path):
    for c in "ab":
        for i in range(2):
            _save(tmp_path / c / f"{i}.png", "L", (10, 12), 40 * i)
    assert data.load_dataset("folder", root=tmp_path, image_size=8).channels == 1
    rgb = data.load_dataset("folder", root=tmp_path, image_size=8, channels=3)
    assert rgb.channels == 3 and torch.equal(rgb.images[:, 0], rgb.images[:, 2])


def test_a_flat_folder_is_unlabelled(tmp_path):
    for i in range(5):
        _save(tmp_path / f"{i}.png", "RGB", (24, 24), (10 * i, 0, 0))
    ds = data.load_dataset("folder", root=tmp_path, image_size=8)
    assert ds.num_classes is None and ds.class_names is None and set(ds.labels.tolist()) == {-1}
    assert len(ds) == 4 and ds.info()["class_names"] is None


def test_a_zip_works_like_the_folder_it_holds(messy, tmp_path):
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in messy.rglob("*"):
            if path.is_file():
                z.write(path, "pets/" + path.relative_to(messy).as_posix())  # a zipped folder: one top-level folder
    from_zip = data.load_dataset("folder", root=archive, image_size=16)
    from_folder = data.load_dataset("folder", root=messy, image_size=16)
    assert from_zip.class_names == ["cat", "dog"] and torch.equal(from_zip.images, from_folder.images)
    assert (tmp_path / "pets_unzipped" / "pets" / "cat" / "a.png").is_file()  # unpacked once, beside the zip
    (tmp_path / "bad.zip").write_text("no zip")
    with pytest.raises(ValueError, match="is not a readable zip file"):
        data.load_dataset("folder", root=tmp_path / "bad.zip")


def test_empty_single_image_and_missing_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("#")
    with pytest.raises(ValueError, match=r"holds 0 image\(s\) \(and 1 other files\); a data set needs at least 2 images"):
        data.load_dataset("folder", root=tmp_path / "empty")
    _save(tmp_path / "one" / "x.png", "RGB", (8, 8), 0)
    with pytest.raises(ValueError, match=r"holds 1 image\(s\)"):
        data.load_dataset("folder", root=tmp_path / "one")
    with pytest.raises(FileNotFoundError, match="no folder or zip file at"):
        data.load_dataset("folder", root=tmp_path / "nowhere")
    _save(tmp_path / "singles" / "a" / "x.png", "RGB", (8, 8), 0)
    _save(tmp_path / "singles" / "b" / "y.png", "RGB", (8, 8), 0)
    with pytest.raises(ValueError, match="every class has a single image"):
        data.load_dataset("folder", train=False, root=tmp_path / "singles")


def test_folder_transform_keeps_the_aspect_ratio_and_crops_the_centre():
    image = Image.new("RGB", (30, 10), (0, 0, 0))  # wide: a white square in the middle third
    image.paste((255, 255, 255), (10, 0, 20, 10))
    out = folder_transform(10, 3)(image)
    assert out.shape == (3, 10, 10) and out.dtype == torch.uint8
    assert out.min().item() == 255  # only the centre square is left: all white
    gray = folder_transform(5, 1)(Image.new("RGB", (5, 5), (255, 0, 0)))
    assert gray.shape == (1, 5, 5) and gray[0, 0, 0].item() == 76  # ITU-R 601 luma of pure red: 0.299 * 255


def test_tinted_digits_are_a_real_rgb_folder(tmp_path):
    root = write_tinted_digits(tmp_path / "tinted", per_class=3, image_size=32)
    assert sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    ds = data.load_dataset("folder", root=root, image_size=32)
    assert ds.channels == 3 and ds.num_classes == 10 and len(ds) == 20  # 3 per class, 1 held out of each
    digit = ds.images[0].float()
    assert (digit.std(dim=(1, 2)) > 5).any() and not torch.equal(digit[0], digit[1])  # colours, and a stroke on them


def test_a_truncated_image_is_skipped_not_fatal(tmp_path, capsys):
    for i in range(19):
        _save(tmp_path / "a" / f"{i:02d}.png", "RGB", (16, 16), (10 * i, 0, 0))
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "a" / "big.png")
    big = (tmp_path / "a" / "big.png").read_bytes()
    (tmp_path / "a" / "big.png").write_bytes(big[: len(big) // 2])  # the header opens, the pixels do not decode
    sizes = [len(data.load_dataset("folder", train=t, root=tmp_path, image_size=8)) for t in (True, False)]
    assert sum(sizes) == 19  # the good ones, whichever split the bad one fell in (20 images: 2 held out)
    assert "1 file(s) skipped (not images)" in capsys.readouterr().out

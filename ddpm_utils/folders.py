"""Any folder of images (or a .zip of one) as a data set: `data.load_dataset("folder", root=...)`.

Files are found the way torchvision's `ImageFolder` finds them (`torchvision.datasets.folder.make_dataset`):
class sub-folders, sorted by name, become the labels 0, 1, ...; a folder with no sub-folders is
unlabelled. Hidden folders (`.ipynb_checkpoints`, `__MACOSX`) are left out. Files that are not
images are skipped and counted. Every image is converted to the chosen channels (alpha composited
onto white), resized so that its shorter side is `image_size` and centre-cropped to a square
(`folder_transform`), then kept in memory as uint8. A fixed tenth of each class (at least one
image of every class that has two) is held out as the test split, the same on every call.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .images import ImageTensors

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
HOLD_OUT = 10  # one image in HOLD_OUT of each class is held out as the test split
SPLIT_SEED = 0


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith((".", "__")) for part in path.relative_to(root).parts)


def unzip(path: Path) -> Path:
    """Unpack a .zip once into `<name>_unzipped/` beside it (again when the zip is newer); return the image folder.

    A zip of one folder (the usual way of zipping one) gives that folder."""
    out = path.with_name(path.stem + "_unzipped")
    if not out.is_dir() or out.stat().st_mtime < path.stat().st_mtime:
        try:
            with zipfile.ZipFile(path) as z:
                tmp = out.with_name(out.name + ".tmp")
                z.extractall(tmp)  # zipfile drops absolute paths and ".." parts
        except zipfile.BadZipFile as e:
            raise ValueError(f"{path} is not a readable zip file: {e}") from None
        if out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
    entries = [p for p in out.iterdir() if not _hidden(p, out)]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """A PIL image as grayscale ("L", channels 1) or "RGB" (channels 3); transparency becomes white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def folder_transform(image_size: int, channels: int):
    """PIL image -> uint8 tensor (channels, image_size, image_size): mode, shorter side to image_size, centre crop."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Lambda(lambda im: to_mode(im, channels)),
        transforms.Resize(image_size, antialias=True),  # the shorter side becomes image_size; the aspect ratio is kept
        transforms.CenterCrop(image_size),
        transforms.PILToTensor(),  # (C, H, W) uint8
    ])


def _files(root: Path) -> tuple[list[tuple[str, int]], list[str] | None]:
    """[(path, label)] and the class names (None for a flat folder), as ImageFolder would find them."""
    from torchvision.datasets.folder import make_dataset

    valid = lambda p: not _hidden(Path(p), root)  # noqa: E731
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not _hidden(d, root))
    if not classes:  # flat: the folder itself is the one (unnamed) group
        return [(p, -1) for p, _ in make_dataset(root.parent, {root.name: 0}, is_valid_file=valid, allow_empty=True)
                if Path(p).parent == root], None
    return make_dataset(root, {c: i for i, c in enumerate(classes)}, is_valid_file=valid, allow_empty=True), classes


def _split(labels: list[int], train: bool) -> list[int]:
    """Indices of the train or test split: per label, a seeded tenth (at least one of two or more) is held out."""
    keep = []
    g = torch.Generator().manual_seed(SPLIT_SEED)
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        perm = torch.randperm(len(idx), generator=g).tolist()
        n_test = max(1, len(idx) // HOLD_OUT) if len(idx) >= 2 else 0
        test = {idx[j] for j in perm[:n_test]}
        keep += [i for i in idx if (i in test) != train]
    return sorted(keep)


def load_folder(root: Path, train: bool, image_size: int, channels: int | None) -> ImageTensors:
    """See the module docstring."""
    if not root.exists():
        raise FileNotFoundError(f"no folder or zip file at {root}")
    if root.is_file():
        if root.suffix.lower() != ".zip":
            raise ValueError(f"{root} is a file but not a .zip; give a folder of images or a .zip of one")
        root = unzip(root)
    files, classes = _files(root)
    opened, skipped = [], 0
    for path, label in files:
        try:
            with Image.open(path) as im:  # reads the header only
                opened.append((path, label, im.mode))
        except (UnidentifiedImageError, OSError):
            skipped += 1
    if classes is not None:
        used = sorted({label for _, label, _ in opened})
        if not used:
            opened = []
        elif len(used) < len(classes):  # class folders with no image: not classes
            names = [classes[i] for i in used]
            remap = {old: new for new, old in enumerate(used)}
            print(f"folder: left out {len(classes) - len(used)} sub-folder(s) without images: "
                  f"{sorted(set(classes) - set(names))}")
            opened, classes = [(p, remap[y], m) for p, y, m in opened], names
    if len(opened) < 2:
        raise ValueError(f"{root} holds {len(opened)} image(s) (and {skipped} other files); a data set needs at least 2 "
                         f"images (formats: .png, .jpg, .bmp, .webp, ...), in class sub-folders or directly in the folder")
    idx = _split([y for _, y, _ in opened], train)
    if not train and not idx:
        raise ValueError(f"{root}: every class has a single image, so none can be held out; give each class at least 2")
    if channels is None:
        channels = 1 if all(m in GRAY_MODES for _, _, m in opened) else 3
    transform = folder_transform(image_size, channels)
    images, labels = [], []
    for i in tqdm(idx, desc="reading images", leave=False, disable=len(idx) < 1000):
        try:
            with Image.open(opened[i][0]) as im:
                images.append(transform(im))
            labels.append(opened[i][1])
        except OSError:  # a header that opens but pixels that do not decode (a truncated file)
            skipped += 1
    if not images:
        raise ValueError(f"{root}: none of the {len(idx)} images of the {'train' if train else 'test'} split could be decoded")
    labels = torch.tensor(labels, dtype=torch.long)
    kind = f"{len(classes)} classes" if classes is not None else "no classes (unlabelled)"
    note = f", {skipped} file(s) skipped (not images)" if skipped else ""
    print(f"folder: {len(opened):,} images in {kind} from {root}{note}; {len(images):,} {'train' if train else 'test'} "
          f"images at {image_size}x{image_size}, {'RGB' if channels == 3 else 'grayscale'}")
    return ImageTensors(torch.stack(images), labels, f"folder {root}", "folder", classes)

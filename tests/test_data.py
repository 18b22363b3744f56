"""Dataset loaders: official MNIST shapes and label histograms, and clear errors on bad files."""

import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest

from model.data import DatasetError, load_cifar10, load_mnist, read_idx

TRAIN_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_official_split(mnist):
    x_tr, y_tr, x_te, y_te = mnist
    assert x_tr.shape == (60000, 28, 28) and x_tr.dtype == np.uint8
    assert x_te.shape == (10000, 28, 28) and x_te.dtype == np.uint8
    assert np.bincount(y_tr, minlength=10).tolist() == TRAIN_HIST
    assert np.bincount(y_te, minlength=10).tolist() == TEST_HIST
    assert 0 < x_te.mean() < 255


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    return struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(
        f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_mnist(folder, n_train=6, n_test=4, gz=True):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 5, 5), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 5, 5), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for name, arr in files.items():
        raw = _idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return files


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_any_idx_folder(tmp_path, gz):
    files = _write_mnist(tmp_path, gz=gz)
    x_tr, y_tr, x_te, y_te = load_mnist(tmp_path)
    assert np.array_equal(x_tr, files["train-images-idx3-ubyte"])
    assert np.array_equal(y_te, files["t10k-labels-idx1-ubyte"])


def test_truncated_real_file(tmp_path, mnist_dir):
    raw = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: truncated"):
        read_idx(bad)


def test_truncated_gzip(tmp_path, mnist_dir):
    raw = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(bad)


def test_bad_magic_and_missing(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03" + bytes(12))
    with pytest.raises(DatasetError, match="bad IDX magic"):
        load_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetError, match="missing train-images-idx3-ubyte"):
        load_mnist(tmp_path)


def test_label_count_mismatch(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DatasetError, match="has 4 images but .* has 3 labels"):
        load_mnist(tmp_path)


def _png(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_cifar_layouts(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    # python batches
    batches = tmp_path / "py" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    flat = imgs.transpose(0, 3, 1, 2).reshape(4, -1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(batches / name, "wb") as f:
            pickle.dump({b"data": flat, b"labels": [0, 1, 2, 3]}, f)
    x_tr, y_tr, x_te, y_te = load_cifar10(tmp_path / "py")
    assert x_tr.shape == (20, 32, 32, 3) and np.array_equal(x_te, imgs)
    # image folder (lossless PNG) and the same as a tar
    folder = tmp_path / "img"
    with tarfile.open(tmp_path / "c.tar.gz",
                      "w:gz") as tf:
        for split in ("train", "test"):
            for i, cls in enumerate(("cat", "dog")):
                d = folder / split / cls
                d.mkdir(parents=True)
                data = _png(imgs[i])
                (d / "0001.png").write_bytes(data)
                info = tarfile.TarInfo(f"cifar/{split}/{cls}/0001.png")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    x_tr, y_tr, x_te, y_te = load_cifar10(folder)
    assert y_tr.tolist() == [3, 5] and np.array_equal(x_te, imgs[:2])
    tdir = tmp_path / "tar"
    tdir.mkdir()
    (tmp_path / "c.tar.gz").rename(tdir / "c.tar.gz")
    x_tr2, y_tr2, _, _ = load_cifar10(tdir)
    assert np.array_equal(x_tr2, x_tr) and y_tr2.tolist() == [3, 5]


def test_cifar_missing(tmp_path):
    with pytest.raises(DatasetError, match="no cifar-10-batches-py"):
        load_cifar10(tmp_path)


def test_mnist_test_split_needs_only_the_test_files(tmp_path):
    from model.data import load_mnist_split

    files = _write_mnist(tmp_path)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / (name + ".gz")).unlink()
    x, y = load_mnist_split(tmp_path, "test")
    assert np.array_equal(x, files["t10k-images-idx3-ubyte"])
    assert np.array_equal(y, files["t10k-labels-idx1-ubyte"])
    with pytest.raises(DatasetError):
        load_mnist_split(tmp_path, "train")


def _evaluate(capsys, *argv):
    from model import evaluate

    rc = evaluate.main(["--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_evaluate_scores_a_test_only_folder(tmp_path, capsys):
    """An export is scored with the two test files alone (no training set needed)."""
    from model.fixtures import SHIPPED

    _write_mnist(tmp_path, n_test=20)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / (name + ".gz")).unlink()
    rc, out, err = _evaluate(capsys, "--weights", SHIPPED["mac"], "--data-dir", tmp_path)
    assert rc == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("accuracy ") and last.endswith("/20)")


@pytest.mark.parametrize("case", ["corrupt", "missing", "shape"])
def test_evaluate_bad_input_is_one_line(tmp_path, capsys, case):
    """A corrupt or missing export, or images of the wrong shape: one line, exit 2."""
    from model.fixtures import SHIPPED

    _write_mnist(tmp_path)  # 5x5 images: the wrong shape for the LeNet export
    weights = SHIPPED["mac"]
    if case == "corrupt":
        weights = tmp_path / "corrupt.npz"
        weights.write_bytes(SHIPPED["mac"].read_bytes()[:1000])
    elif case == "missing":
        weights = tmp_path / "nothing.npz"
    rc, out, err = _evaluate(capsys, "--weights", weights, "--data-dir", tmp_path)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model.evaluate: "), err
    assert "Traceback" not in err
    want = {"corrupt": "corrupt", "missing": "cannot read", "shape": "5x5"}[case]
    assert want in lines[0]

"""Dataset loaders: MNIST-style IDX folders and CIFAR-10 (python batches, image folders, tars).

NumPy + stdlib (+ Pillow for image folders); no torch, no network unless :func:`download_mnist`
is called explicitly. Every loader takes a folder that the user names (``--data-dir`` or the
``BM_DATA_DIR`` environment variable); :func:`default_data_dir` finds the development copy.

Bad input raises :class:`DatasetError` naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetError",
    "default_data_dir",
    "find_dataset_dir",
    "read_idx",
    "load_mnist",
    "load_mnist_split",
    "load_cifar10",
    "download_mnist",
    "CIFAR10_CLASSES",
    "MNIST_FILES",
]

ENV_VAR = "BM_DATA_DIR"

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent."""


def default_data_dir() -> Path:
    """``$BM_DATA_DIR`` if set, else the shared development copy next to the checkout."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    for cand in (repo.parent / "shared" / "data", repo / "data"):
        if cand.is_dir():
            return cand
    return repo / "data"


def find_dataset_dir(data_dir: str | os.PathLike | None, name: str) -> Path:
    """``data_dir`` itself if it holds the dataset, else ``data_dir/name``."""
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    sub = base / name
    return sub if sub.is_dir() else base


# -- IDX -----------------------------------------------------------------------------------------
def _open_maybe_gz(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array of its declared type and dims."""
    path = Path(path)
    raw = _open_maybe_gz(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES:
        raise DatasetError(f"{path}: bad IDX magic {raw[:4].hex()}")
    if ndim == 0:
        raise DatasetError(f"{path}: IDX file declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have < need:
        raise DatasetError(
            f"{path}: truncated: dims {dims} need {need} data bytes, file has {have}"
        )
    if have > need:
        raise DatasetError(f"{path}: {have - need} bytes of trailing data after dims {dims}")
    arr = np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def _find_file(folder: Path, stem: str) -> Path:
    names = (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz")
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise DatasetError(f"{folder}: missing {stem}[.gz]")


def load_mnist(data_dir: str | os.PathLike | None = None):
    """Load an MNIST-style IDX folder: ``(x_train, y_train, x_test, y_test)``.

    Images are ``uint8 [N, H, W]``, labels ``int64 [N]``. ``data_dir`` may be the folder holding
    the four standard files (gzipped or not) or a parent holding ``mnist/``.
    """
    return (*load_mnist_split(data_dir, "train"), *load_mnist_split(data_dir, "test"))


def load_mnist_split(data_dir: str | os.PathLike | None, split: str):
    """One split (``"train"`` or ``"test"``) of an MNIST-style IDX folder: ``(x, y)``.

    Only that split's two files are read, so scoring the test set needs only the test files.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    folder = find_dataset_dir(data_dir, "mnist")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder (set --data-dir or ${ENV_VAR})")
    ipath = _find_file(folder, MNIST_FILES[f"{split}_images"])
    lpath = _find_file(folder, MNIST_FILES[f"{split}_labels"])
    x, y = read_idx(ipath), read_idx(lpath)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DatasetError(f"{ipath}: expected uint8 images [N, H, W], got {x.dtype} {x.shape}")
    if y.ndim != 1:
        raise DatasetError(f"{lpath}: expected labels [N], got shape {y.shape}")
    if len(x) != len(y):
        raise DatasetError(f"{ipath} has {len(x)} images but {lpath} has {len(y)} labels")
    return x, y.astype(np.int64)


def download_mnist(dest: str | os.PathLike, mirrors=MNIST_MIRRORS) -> Path:
    """Fetch the four MNIST files into ``dest`` (needs internet; never used by the tests)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for stem in MNIST_FILES.values():
        target = dest / f"{stem}.gz"
        if target.exists():
            continue
        last = None
        for base in mirrors:
            try:
                with urllib.request.urlopen(base + target.name, timeout=60) as r:
                    data = r.read()
                tmp = target.with_suffix(".part")
                tmp.write_bytes(data)
                tmp.replace(target)
                break
            except OSError as e:
                last = e
        else:
            raise DatasetError(f"could not download {target.name}: {last}")
    load_mnist(dest)  # validate
    return dest


# -- CIFAR-10 ------------------------------------------------------------------------------------
def _cifar_batches(folder: Path):
    def load(name):
        path = folder / name
        try:
            with open(path, "rb") as f:
                d = pickle.load(f, encoding="bytes")
        except FileNotFoundError:
            raise DatasetError(f"{path}: missing CIFAR-10 batch") from None
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DatasetError(f"{path}: corrupt CIFAR-10 batch ({e})") from None
        x = np.asarray(d[b"data"], dtype=np.uint8)
        y = np.asarray(d[b"labels"], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise DatasetError(f"{path}: expected data [N, 3072] and N labels, got {x.shape}")
        return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y

    tr = [load(f"data_batch_{i}") for i in range(1, 6)]
    te = load("test_batch")
    return (
        np.concatenate([t[0] for t in tr]),
        np.concatenate([t[1] for t in tr]),
        te[0],
        te[1],
    )


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as e:  # PIL raises many types
        raise DatasetError(f"{where}: cannot decode image ({e})") from None
    arr = np.asarray(img, dtype=np.uint8)
    if arr.shape != (32, 32, 3):
        raise DatasetError(f"{where}: expected a 32x32 RGB image, got {arr.shape}")
    return arr


def _cifar_images(entries, where: str):
    """``entries``: iterable of (split, class_name, name, bytes-thunk)."""
    splits = {"train": ([], []), "test": ([], [])}
    for split, cls, name, read in entries:
        if split not in splits or cls not in CIFAR10_CLASSES:
            continue
        if not name.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        xs, ys = splits[split]
        xs.append(_decode_image(read(), f"{where}:{split}/{cls}/{name}"))
        ys.append(CIFAR10_CLASSES.index(cls))
    out = []
    for split in ("train", "test"):
        xs, ys = splits[split]
        if not xs:
            raise DatasetError(f"{where}: no images under {split}/<class>/")
        out += [np.stack(xs), np.asarray(ys, dtype=np.int64)]
    return tuple(out)


def load_cifar10(data_dir: str | os.PathLike | None = None, cache: bool = True):
    """Load CIFAR-10 as ``(x_train, y_train, x_test, y_test)``, images ``uint8 [N, 32, 32, 3]``.

    Accepts, under ``data_dir`` or ``data_dir/cifar10``: the standard ``cifar-10-batches-py``
    folder, an image folder ``train|test/<class>/*.jpg|png``, or a ``.tar[.gz]`` of that image
    folder. Decoded image folders and tars are cached as ``.npz`` next to the source when
    ``cache`` is true and the folder is writable.
    """
    folder = find_dataset_dir(data_dir, "cifar10")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder (set --data-dir or ${ENV_VAR})")
    for cand in (folder / "cifar-10-batches-py", folder):
        if (cand / "data_batch_1").is_file():
            return _cifar_batches(cand)
    if (folder / "train").is_dir() and (folder / "test").is_dir():

        def entries():
            for split in ("train", "test"):
                for cls_dir in sorted((folder / split).iterdir()):
                    if cls_dir.is_dir():
                        for f in sorted(cls_dir.iterdir()):
                            yield split, cls_dir.name, f.name, f.read_bytes

        return _cifar_images(entries(), str(folder))
    tars = sorted(folder.glob("*.tar*")) + sorted(folder.glob("*.tgz"))
    if not tars:
        raise DatasetError(
            f"{folder}: no cifar-10-batches-py, train|test/<class>/ image folder or .tar found"
        )
    tar_path = tars[0]
    cache_path = _cache_path(tar_path)
    if cache and cache_path.is_file():
        with np.load(cache_path) as z:
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    try:
        with tarfile.open(tar_path) as tf:

            def entries():
                for m in tf:
                    if not m.isfile():
                        continue
                    parts = Path(m.name).parts
                    if len(parts) < 3:
                        continue
                    split, cls, name = parts[-3], parts[-2], parts[-1]
                    yield split, cls, name, (lambda m=m: tf.extractfile(m).read())

            result = _cifar_images(entries(), str(tar_path))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{tar_path}: corrupt or truncated tar ({e})") from None
    if cache:
        _write_cache(cache_path, result)
    return result


def _cache_path(tar_path: Path) -> Path:
    stat = tar_path.stat()
    name = f"{tar_path.name}.{stat.st_size}.npz"
    if os.access(tar_path.parent, os.W_OK):
        return tar_path.parent / name
    cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bmfpga"
    return cache_root / name


def _write_cache(path: Path, result) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x_train=result[0], y_train=result[1], x_test=result[2], y_test=result[3])
        tmp.replace(path)
    except OSError:
        pass

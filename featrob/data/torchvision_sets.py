"""Readers of MNIST, FashionMNIST, CIFAR-10/100 and SVHN in torchvision's on-disk layout.

featrob reads the files itself (IDX, CIFAR pickles, SVHN .mat) rather than through
torchvision's dataset classes: those check md5 sums of whole archives, so small or
re-packed copies (and the tiny files the tests write) would be rejected. torchvision is
used only to download missing files when ``download=True``.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featrob.data.base import DatasetBundle, DataSplit
from featrob.data.files import files_fingerprint, no_arg, one_line, resolve_root
from featrob.errors import DataError

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
DIGIT_CLASSES = [str(i) for i in range(10)]

#: (mean, std) per channel that the usual pretrained models of each data set expect.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- public readers


def load_mnist(
    arg: str | None = None, *, root: Path | None = None, download: bool = False
) -> DatasetBundle:
    """MNIST from ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``."""
    no_arg("mnist", arg)
    return _load_idx_set("mnist", "MNIST", DIGIT_CLASSES, resolve_root(root), download)


def load_fashionmnist(
    arg: str | None = None, *, root: Path | None = None, download: bool = False
) -> DatasetBundle:
    """FashionMNIST from ``root/FashionMNIST/raw/`` (same IDX files as MNIST)."""
    no_arg("fashionmnist", arg)
    return _load_idx_set(
        "fashionmnist", "FashionMNIST", FASHION_CLASSES, resolve_root(root), download
    )


def load_cifar10(
    arg: str | None = None, *, root: Path | None = None, download: bool = False
) -> DatasetBundle:
    """CIFAR-10 from ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``."""
    no_arg("cifar10", arg)
    folder = resolve_root(root) / "cifar-10-batches-py"
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    needed = [*train_names, "test_batch"]
    _ensure("cifar10", folder.parent, folder, needed, download, "cifar-10-batches-py/")
    train = [_read_pickle("cifar10", folder / n) for n in train_names]
    test = _read_pickle("cifar10", folder / "test_batch")
    classes = CIFAR10_CLASSES
    meta_path = folder / "batches.meta"
    if meta_path.is_file():
        classes = _names(_field("cifar10", _read_pickle("cifar10", meta_path), "label_names"))
    x_train = np.concatenate([_cifar_images("cifar10", b) for b in train])
    y_train = np.concatenate([_cifar_labels("cifar10", b, "labels") for b in train])
    x_test = _cifar_images("cifar10", test)
    y_test = _cifar_labels("cifar10", test, "labels")
    files = [folder / n for n in [*train_names, "test_batch"]]
    return _bundle("cifar10", (x_train, y_train), (x_test, y_test), classes, files)


def load_cifar100(
    arg: str | None = None, *, root: Path | None = None, download: bool = False
) -> DatasetBundle:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python/{train,test,meta}``."""
    no_arg("cifar100", arg)
    folder = resolve_root(root) / "cifar-100-python"
    needed = ["train", "test", "meta"]
    _ensure("cifar100", folder.parent, folder, needed, download, "cifar-100-python/")
    train = _read_pickle("cifar100", folder / "train")
    test = _read_pickle("cifar100", folder / "test")
    classes = _names(
        _field("cifar100", _read_pickle("cifar100", folder / "meta"), "fine_label_names")
    )
    splits = [
        (_cifar_images("cifar100", b), _cifar_labels("cifar100", b, "fine_labels"))
        for b in (train, test)
    ]
    files = [folder / n for n in ("train", "test", "meta")]
    return _bundle("cifar100", splits[0], splits[1], classes, files)


def load_svhn(
    arg: str | None = None, *, root: Path | None = None, download: bool = False
) -> DatasetBundle:
    """SVHN (cropped digits) from ``root/{train,test}_32x32.mat``; label 10 means digit 0."""
    no_arg("svhn", arg)
    folder = resolve_root(root)
    names = ["train_32x32.mat", "test_32x32.mat"]
    _ensure("svhn", folder, folder, names, download, " and ".join(names))
    splits = [_read_svhn(folder / n) for n in names]
    return _bundle("svhn", splits[0], splits[1], DIGIT_CLASSES, [folder / n for n in names])


# --------------------------------------------------------------------------- shared steps


def _bundle(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: list[str],
    files: list[Path],
) -> DatasetBundle:
    for what, (_, labels) in (("train", train), ("test", test)):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(
                f"{name}: {what} labels span {labels.min()}..{labels.max()} "
                f"but there are {len(classes)} classes"
            )
    mean, std = NORMALIZATION[name]
    return DatasetBundle(
        name=name,
        spec=name,
        test=DataSplit(test[1], images=test[0]),
        train=DataSplit(train[1], images=train[0]),
        classes=list(classes),
        mean=mean,
        std=std,
        fingerprint=files_fingerprint(files),
    )


def _ensure(
    name: str, root: Path, folder: Path, needed: list[str], download: bool, inside: str
) -> None:
    """Download through torchvision when files are missing and allowed, else explain.

    ``root`` is the data root torchvision is given, ``folder`` where the files end up and
    ``inside`` what a ``--data-root`` directory must contain (for the message).
    """
    missing = [n for n in needed if not _exists(folder / n)]
    if missing and download:
        _download(name, root)
        missing = [n for n in needed if not _exists(folder / n)]
        if missing:
            raise DataError(
                f"{name}: download finished but {folder} still lacks {', '.join(missing)}"
            )
    if missing:
        what = "no data" if len(missing) == len(needed) else f"missing {', '.join(missing)}"
        raise DataError(
            f"{name}: {what} under {folder}; pass --download (needs network) or "
            f"--data-root DIR with {inside} inside"
        )


def _exists(path: Path) -> bool:
    return path.is_file() or path.with_name(path.name + ".gz").is_file()


_TV_CLASSES = {
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "svhn": "SVHN",
}


def _download(name: str, root: Path) -> None:
    """Fetch both splits with torchvision into ``root``, where it lays them out as we read."""
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        raise DataError(f"{name}: downloading needs torchvision: {one_line(exc)}") from None
    cls: Callable[..., Any] = getattr(tvd, _TV_CLASSES[name])
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            if name == "svhn":
                cls(str(root), split="train" if train else "test", download=True)
            else:
                cls(str(root), train=train, download=True)
    except Exception as exc:  # network, disk or integrity failures all end here
        raise DataError(f"{name}: download into {root} failed: {one_line(exc)}") from None


# --------------------------------------------------------------------------- formats


def _load_idx_set(
    name: str, folder_name: str, classes: list[str], root: Path, download: bool
) -> DatasetBundle:
    folder = root / folder_name / "raw"
    stems = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    _ensure(name, root, folder, list(stems.values()), download, f"{folder_name}/raw/")
    paths = {k: _pick(folder / stem) for k, stem in stems.items()}
    arrays = {k: _read_idx(name, p) for k, p in paths.items()}
    splits = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(f"{name}: {paths[f'x_{split}']} is not a uint8 N x H x W image file")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{name}: {paths[f'y_{split}']} holds {y.shape} labels for {len(x)} images"
            )
        splits.append((x[:, None], y.astype(np.int64)))
    return _bundle(name, splits[0], splits[1], classes, list(paths.values()))


def _pick(path: Path) -> Path:
    """The uncompressed file when present, else its ``.gz`` twin."""
    return path if path.is_file() else path.with_name(path.name + ".gz")


def _read_idx(name: str, path: Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format): magic 0 0 TYPE NDIM, big-endian dims, data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{name}: cannot read {path}: {one_line(exc)}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{name}: {path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: {path} is truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(
            f"{name}: {path} holds {len(raw) - header} data bytes, expected "
            f"{count * dtype.itemsize} for shape {dims}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).copy()


def _read_pickle(name: str, path: Path) -> dict:
    """Load one CIFAR pickle (Python 2 pickles: byte-string keys)."""
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except Exception as exc:  # pickle can raise almost anything on a corrupt file
        raise DataError(f"{name}: cannot read {path}: {one_line(exc)}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: {path} holds a {type(obj).__name__}, not a CIFAR dict")
    obj["__path__"] = path
    return obj


def _field(name: str, batch: dict, key: str) -> Any:
    """``batch[b"key"]`` or ``batch["key"]`` (pickles written by Python 2 or 3)."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    present = sorted(str(k) for k in batch if k != "__path__")
    raise DataError(f"{name}: {batch.get('__path__')} has no {key!r}; it has {', '.join(present)}")


def _names(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _cifar_images(name: str, batch: dict) -> np.ndarray:
    data = np.asarray(_field(name, batch, "data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{name}: data in {batch['__path__']} must be uint8 N x 3072, "
            f"got {data.dtype} {data.shape}"
        )
    return data.reshape(-1, 3, 32, 32)


def _cifar_labels(name: str, batch: dict, key: str) -> np.ndarray:
    labels = np.asarray(_field(name, batch, key)).reshape(-1)
    n = len(_field(name, batch, "data"))
    if labels.dtype.kind not in "iu" and len(labels):
        raise DataError(f"{name}: {key} in {batch['__path__']} are not integers")
    if len(labels) != n:
        raise DataError(f"{name}: {batch['__path__']} has {len(labels)} {key} for {n} images")
    return labels.astype(np.int64)


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, ...
        raise DataError(f"svhn: cannot read {path}: {one_line(exc)}") from None
    if "X" not in mat or "y" not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__"))
        raise DataError(f"svhn: {path} needs variables X and y; it has {keys}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise DataError(f"svhn: X in {path} must be uint8 32 x 32 x 3 x N, got {x.dtype} {x.shape}")
    if len(y) != x.shape[3]:
        raise DataError(f"svhn: {path} has {len(y)} labels for {x.shape[3]} images")
    y = y.astype(np.int64)
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y

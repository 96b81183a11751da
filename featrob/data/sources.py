"""Readers of every built-in data set, one function per data set.

Each reader has the loader signature of the ``featrob_register_datasets`` hook,
``reader(arg, *, root, download, **options) -> DatasetBundle``, with its options spelled
out as keyword parameters. The bundled 8x8 digits live here; the torchvision-format sets
are in :mod:`featrob.data.torchvision_sets` and user files in :mod:`featrob.data.files`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

from featrob.data.base import DatasetBundle, DataSplit
from featrob.data.files import call_reader, channel_stats, load_imagefolder, load_npz, no_arg
from featrob.data.torchvision_sets import (
    NORMALIZATION,
    load_cifar10,
    load_cifar100,
    load_fashionmnist,
    load_mnist,
    load_svhn,
)

__all__ = [
    "NORMALIZATION",
    "READERS",
    "call_reader",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_fashionmnist",
    "load_imagefolder",
    "load_mnist",
    "load_npz",
    "load_svhn",
]

#: Test fraction and seed of the fixed digits split (independent of the run seed, so
#: every run and every stored result sees the same test images).
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Pixels (0..16, ``[1797, 64]``) and labels of scikit-learn's bundled digits.

    Reads ``sklearn/datasets/data/digits.csv.gz`` directly: importing scikit-learn costs
    about 2 s, more than the rest of a cached default run. Falls back to scikit-learn's own
    loader if the file is not where it has always been.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for base in locations:
        path = Path(base) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float64)
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    return raw.data, raw.target.astype(np.int64)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test positions with ``test_fraction`` of every class in the test set
    (rounded to the nearest count), drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_test = round(test_fraction * len(members))
        test.append(members[rng.permutation(len(members))[:n_test]])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def load_digits(
    arg: str | None = None, *, root: Path | None = None, download: bool = False
) -> DatasetBundle:
    """scikit-learn's bundled 8x8 digits (offline): 1,797 grey images, fixed 75/25 split.

    Pixels 0..16 become uint8 ``round(x * 255 / 16)``, shape ``N x 1 x 8 x 8``. The split is
    stratified per class and seeded with 0; split indices are positions in the original
    array. mean/std come from the training images.
    """
    no_arg("digits", arg)
    pixels, labels = _digits_arrays()
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    mean, std = channel_stats(images[train_idx])
    return DatasetBundle(
        name="digits",
        spec="digits",
        test=DataSplit(labels[test_idx], test_idx, images=images[test_idx]),
        train=DataSplit(labels[train_idx], train_idx, images=images[train_idx]),
        classes=[str(i) for i in range(10)],
        mean=mean,
        std=std,
        fingerprint=f"digits-sklearn-{importlib.metadata.version('scikit-learn')}",
    )


#: Registry name -> reader, as the built-in ``datasets`` plugin registers them.
READERS = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashionmnist": load_fashionmnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "imagefolder": load_imagefolder,
    "npz": load_npz,
}

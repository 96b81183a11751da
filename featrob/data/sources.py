"""Readers of every built-in data set, one function per data set.

Each reader has the loader signature of the ``featrob_register_datasets`` hook,
``reader(arg, *, root, download, **options) -> DatasetBundle``, with its options spelled
out as keyword parameters. The bundled 8x8 digits live here; the torchvision-format sets
are in :mod:`featrob.data.torchvision_sets` and user files in :mod:`featrob.data.files`.
"""

from __future__ import annotations

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


def load_digits(
    arg: str | None = None, *, root: Path | None = None, download: bool = False
) -> DatasetBundle:
    """scikit-learn's bundled 8x8 digits (offline): 1,797 grey images, fixed 75/25 split.

    Pixels 0..16 become uint8 ``round(x * 255 / 16)``, shape ``N x 1 x 8 x 8``. The split is
    stratified and seeded with 0; split indices are positions in the original array.
    mean/std come from the training images.
    """
    import sklearn
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    no_arg("digits", arg)
    raw = sk_load_digits()
    images = np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = raw.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    mean, std = channel_stats(images[train_idx])
    return DatasetBundle(
        name="digits",
        spec="digits",
        test=DataSplit(labels[test_idx], test_idx, images=images[test_idx]),
        train=DataSplit(labels[train_idx], train_idx, images=images[train_idx]),
        classes=[str(i) for i in range(10)],
        mean=mean,
        std=std,
        fingerprint=f"digits-sklearn-{sklearn.__version__}",
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

"""Built-in data sets: bundled digits, torchvision-format sets and user files.

Cheap to import: each loader imports :mod:`featrob.data.sources` (and with it torch,
numpy, scipy) only when it is called, so listing plugins never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import featrob
from featrob.hookspecs import Register

if TYPE_CHECKING:
    from featrob.data.base import DatasetBundle


def _read(
    name: str, arg: str | None, root: Path | None, download: bool, options: dict
) -> DatasetBundle:
    from featrob.data import sources

    return sources.call_reader(name, sources.READERS[name], arg, root, download, options)


def digits(arg: str | None, *, root: Path | None, download: bool, **options: Any) -> DatasetBundle:
    """scikit-learn's bundled 8x8 digits, 10 classes, fixed 75/25 split (offline)."""
    return _read("digits", arg, root, download, options)


def mnist(arg: str | None, *, root: Path | None, download: bool, **options: Any) -> DatasetBundle:
    """MNIST handwritten digits, 1x28x28 (torchvision layout under the data root)."""
    return _read("mnist", arg, root, download, options)


def fashionmnist(
    arg: str | None, *, root: Path | None, download: bool, **options: Any
) -> DatasetBundle:
    """Fashion-MNIST clothing images, 1x28x28 (torchvision layout under the data root)."""
    return _read("fashionmnist", arg, root, download, options)


def cifar10(arg: str | None, *, root: Path | None, download: bool, **options: Any) -> DatasetBundle:
    """CIFAR-10, 3x32x32, 10 classes (cifar-10-batches-py/ under the data root)."""
    return _read("cifar10", arg, root, download, options)


def cifar100(
    arg: str | None, *, root: Path | None, download: bool, **options: Any
) -> DatasetBundle:
    """CIFAR-100 fine labels, 3x32x32, 100 classes (cifar-100-python/ under the data root)."""
    return _read("cifar100", arg, root, download, options)


def svhn(arg: str | None, *, root: Path | None, download: bool, **options: Any) -> DatasetBundle:
    """SVHN house-number digits, 3x32x32 ({train,test}_32x32.mat under the data root)."""
    return _read("svhn", arg, root, download, options)


def imagefolder(
    arg: str | None, *, root: Path | None, download: bool, **options: Any
) -> DatasetBundle:
    """Image files in PATH/{train,test}/<class>/ (imagefolder:PATH), read lazily."""
    return _read("imagefolder", arg, root, download, options)


def npz(arg: str | None, *, root: Path | None, download: bool, **options: Any) -> DatasetBundle:
    """A .npz with x_train, y_train, x_test, y_test uint8 arrays (npz:PATH)."""
    return _read("npz", arg, root, download, options)


_LOADERS = (digits, mnist, fashionmnist, cifar10, cifar100, svhn, imagefolder, npz)


@featrob.hookimpl
def featrob_register_datasets(register: Register) -> None:
    """Register the built-in data-set loaders."""
    for loader in _LOADERS:
        register(loader, name=loader.__name__)

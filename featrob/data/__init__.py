"""Data sets: the in-memory splits featrob analyses and how a spec turns into one.

A data set is named by a spec, ``NAME`` or ``NAME:ARG`` (``digits``, ``cifar10``,
``npz:/data/x.npz``); :func:`load_dataset` looks ``NAME`` up in the data-set registry that
plugins fill through ``featrob_register_datasets`` and calls the registered loader. The
readers of the built-in data sets live in :mod:`featrob.data.sources`.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featrob.data.base import DatasetBundle, DataSplit
from featrob.errors import ConfigError, DataError
from featrob.specs import split_spec

if TYPE_CHECKING:
    from featrob.registry import Registry

__all__ = ["DataSplit", "DatasetBundle", "default_data_root", "load_dataset"]


def default_data_root() -> Path:
    """Where data sets are looked for when no root is given.

    ``$FEATROB_DATA`` when set (and not empty), else ``~/.cache/featrob/data``: one shared
    place, so a data set downloaded once serves every later run.
    """
    env = os.environ.get("FEATROB_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "featrob" / "data"


def load_dataset(
    spec: str,
    registry: Registry,
    *,
    root: Path | None = None,
    download: bool = False,
    n_per_class: int | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> DatasetBundle:
    """Load the data set that ``spec`` names.

    Args:
        spec: ``NAME`` or ``NAME:ARG`` (``digits``, ``npz:/data/x.npz``).
        registry: a :class:`featrob.registry.Registry` of data-set loaders.
        root: where downloadable data sets live (default :func:`default_data_root`).
        download: let loaders fetch missing files (needs network).
        n_per_class: keep only this many test samples per class (the training split is
            never subsampled), drawn with ``seed``; source indices are preserved.
        seed: seed of the test subsample.
        options: extra keyword arguments for the loader (``data_options`` in the config).

    Returns:
        The bundle, with ``spec`` set to the spec as given (stripped).

    Raises:
        UnknownNameError: no loader of that name; the message lists close matches.
        ConfigError: options the loader does not accept, or a bad ``n_per_class``.
        DataError: the data is missing or malformed, has fewer than two classes, or has
            test labels that no training sample has (see
            :meth:`DatasetBundle.check_classes`).
    """
    name, arg = split_spec(spec)
    loader = registry.get(name)
    options = dict(options or {})
    root_path = Path(root).expanduser() if root is not None else default_data_root()
    _check_options(name, loader, arg, root_path, download, options)
    bundle = loader(arg, root=root_path, download=download, **options)
    if not isinstance(bundle, DatasetBundle):
        raise DataError(
            f"data-set loader {name!r} returned {type(bundle).__name__}, not a DatasetBundle"
        )
    bundle.spec = spec.strip()
    bundle.check_classes()
    if n_per_class is not None:
        if isinstance(n_per_class, bool) or not isinstance(n_per_class, int):
            raise ConfigError(f"n_per_class must be a positive integer, got {n_per_class!r}")
        bundle.test = bundle.test.balanced_subset(n_per_class, seed)
    return bundle


def _check_options(
    name: str, loader: Any, arg: str | None, root: Path, download: bool, options: dict
) -> None:
    """Turn a call the loader's signature cannot take into a one-line ConfigError."""
    try:
        signature = inspect.signature(loader)
    except (TypeError, ValueError):  # builtins or C callables: let the call decide
        return
    try:
        signature.bind(arg, root=root, download=download, **options)
    except TypeError as exc:
        raise ConfigError(
            f"data set {name!r} does not take options {sorted(options)}: {exc}"
        ) from None

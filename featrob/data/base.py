"""In-memory data sets: uint8 NCHW images, labels, and the indices they came from.

Images stay uint8 until a batch is needed (CIFAR-10's 50,000 training images take 150 MB,
not 600 MB); :meth:`DataSplit.float_images` gives [0, 1] floats. Every split remembers the
index of each sample in its source, so results, store entries and shards refer to the same
sample whatever subsampling happened.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from featrob.errors import ConfigError, DataError

#: Loads uint8 images ``[n, C, H, W]`` for the given source indices.
ImageLoader = Callable[[np.ndarray], Tensor]

#: How many unseen test labels a :class:`DataError` lists before it summarises the rest.
_MAX_LISTED = 8


class DataSplit:
    """One split (``train`` or ``test``) of a data set.

    Args:
        labels: int64 class labels, one per sample.
        indices: the samples' indices in the source split (default ``0..N-1``).
        images: uint8 ``[N, C, H, W]`` images; or give ``loader`` to read them lazily.
        loader: reads images for source indices (image folders read only what is kept).
    """

    def __init__(
        self,
        labels: Tensor | np.ndarray,
        indices: Tensor | np.ndarray | None = None,
        images: Tensor | np.ndarray | None = None,
        loader: ImageLoader | None = None,
    ) -> None:
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        n = len(self.labels)
        idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        self.indices = torch.as_tensor(idx, dtype=torch.int64).reshape(-1)
        if len(self.indices) != n:
            raise DataError(f"{len(self.indices)} indices for {n} labels")
        if images is None and loader is None:
            raise DataError("a data split needs images or a loader")
        self._images: Tensor | None = None
        if images is not None:
            self._images = _as_uint8_nchw(images)
            if len(self._images) != n:
                raise DataError(f"{len(self._images)} images for {n} labels")
        self._loader = loader

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> Tensor:
        """uint8 ``[N, C, H, W]`` images (read on first access when lazy)."""
        if self._images is None:
            assert self._loader is not None
            self._images = _as_uint8_nchw(self._loader(self.indices.numpy()))
        return self._images

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        if self._images is None:
            first = _as_uint8_nchw(self._loader(self.indices[:1].numpy()))  # type: ignore[misc]
            return tuple(first.shape[1:])  # type: ignore[return-value]
        return tuple(self._images.shape[1:])  # type: ignore[return-value]

    def float_images(self, positions: Tensor | np.ndarray | slice | None = None) -> Tensor:
        """Images as float32 in [0, 1], optionally only those at ``positions``."""
        imgs = self.images if positions is None else self.images[positions]
        return imgs.to(torch.float32).div_(255.0)

    def subset(self, positions: Sequence[int] | np.ndarray | Tensor) -> DataSplit:
        """The samples at ``positions`` (positions in this split, not source indices)."""
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        if self._images is not None:
            return DataSplit(self.labels[pos], self.indices[pos], images=self._images[pos])
        return DataSplit(self.labels[pos], self.indices[pos], loader=self._loader)

    def balanced_subset(self, n_per_class: int, seed: int = 0) -> DataSplit:
        """``n_per_class`` samples of every class, drawn with a fixed seed, in source order.

        Subsets with the same seed are nested: ``n_per_class=15`` contains every sample of
        ``n_per_class=10``. Classes with fewer samples are kept whole (with a warning).
        """
        if n_per_class <= 0:
            raise ConfigError(f"n_per_class must be positive, got {n_per_class}")
        rng = np.random.default_rng(seed)
        labels = self.labels.numpy()
        keep: list[np.ndarray] = []
        short: list[int] = []
        for cls in np.unique(labels):
            members = np.flatnonzero(labels == cls)
            if len(members) < n_per_class:
                short.append(int(cls))
                keep.append(members)
            else:
                # A full per-class permutation, then its head: subsets for growing
                # n_per_class are nested, so a larger run reuses the stored samples.
                keep.append(members[rng.permutation(len(members))[:n_per_class]])
        if short:
            warnings.warn(
                f"classes {short} have fewer than {n_per_class} samples; all of them are used",
                stacklevel=2,
            )
        return self.subset(np.sort(np.concatenate(keep)))


@dataclass
class DatasetBundle:
    """A data set as featrob uses it.

    Attributes:
        name: registry name (``digits``, ``cifar10``, ``npz``, ...).
        spec: the spec the user gave (``npz:/data/x.npz``).
        test: evaluation split.
        train: training split (None when the source has none).
        classes: class names, index = label.
        mean, std: per-channel normalisation the model wrapper applies.
        fingerprint: identifies the content (file hash or size/mtime); part of store keys.
    """

    name: str
    spec: str
    test: DataSplit
    train: DataSplit | None = None
    classes: list[str] = field(default_factory=list)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    fingerprint: str = ""

    def split(self, name: str) -> DataSplit:
        """The ``train`` or ``test`` split."""
        if name == "test":
            return self.test
        if name == "train":
            if self.train is None:
                raise DataError(f"data set {self.spec!r} has no training split")
            return self.train
        raise ConfigError(f"unknown split {name!r}; use 'train' or 'test'")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return self.test.image_shape

    def check_classes(self) -> None:
        """Check that the labels make a classification problem featrob can train and attack.

        A model cannot learn a class it never sees, and with a single class every prediction
        is right, so accuracy and robust accuracy would both read 1 whatever the model.

        Raises:
            DataError: the labels of both splits hold fewer than two classes, or test labels
                occur that no sample of a non-empty training split has (an absent or empty
                training split is an evaluation-only data set and is not compared).
        """
        test = self.test.labels
        train = self.train.labels if self.train is not None else test[:0]
        found = torch.unique(torch.cat([train, test]))
        if len(found) == 1:
            n = len(train) + len(test)
            raise DataError(
                f"{self.spec}: all {n} samples have label {self._label_text(int(found[0]))}; "
                "featrob needs at least two classes"
            )
        if not len(train):
            return
        unseen = ~torch.isin(test, torch.unique(train))
        if not bool(unseen.any()):
            return
        labels, counts = torch.unique(test[unseen], return_counts=True)
        total = int(counts.sum())
        samples = f"{total} test sample{'s have' if total != 1 else ' has'}"
        if len(labels) == 1:
            which = f"label {self._label_text(int(labels[0]))}"
            fix = "add training samples of that class or drop it from the test split"
        else:
            pairs = list(zip(labels.tolist(), counts.tolist(), strict=True))
            shown = [
                f"{self._label_text(lab)} ({c} sample{'s' if c != 1 else ''})"
                for lab, c in pairs[:_MAX_LISTED]
            ]
            if len(labels) > _MAX_LISTED:
                shown.append(f"... ({len(labels) - _MAX_LISTED} more)")
            which = f"labels {', '.join(shown)}"
            fix = "add training samples of those classes or drop them from the test split"
        raise DataError(
            f"{self.spec}: {samples} {which}, which no training sample has; a model cannot "
            f"learn a class it never sees: {fix}"
        )

    def _label_text(self, label: int) -> str:
        """``label``, with its class name when that says more (``2 ('emu')``)."""
        if 0 <= label < len(self.classes) and self.classes[label] != str(label):
            return f"{label} ({self.classes[label]!r})"
        return str(label)

    @property
    def num_classes(self) -> int:
        """Number of classes (from ``classes``, else from the labels)."""
        if self.classes:
            return len(self.classes)
        top = int(self.test.labels.max())
        if self.train is not None:
            top = max(top, int(self.train.labels.max()))
        return top + 1


def _as_uint8_nchw(images: Tensor | np.ndarray) -> Tensor:
    arr = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
    if arr.dim() == 3:  # N x H x W grey images
        arr = arr.unsqueeze(1)
    if arr.dim() != 4:
        raise DataError(f"images must be N x C x H x W, got shape {tuple(arr.shape)}")
    if arr.dtype != torch.uint8:
        raise DataError(f"images must be uint8 (0..255), got {arr.dtype}")
    return arr.contiguous()

"""Readers of user files (``npz:PATH``, ``imagefolder:PATH``) and helpers all readers share.

The helpers keep every reader's conventions the same: uint8 NCHW images, int64 labels,
per-channel mean/std from the training images, a cheap content fingerprint, options checked
against what the reader accepts, and one-line :class:`DataError` messages for bad input.
"""

from __future__ import annotations

import hashlib
import inspect
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featrob.data import default_data_root
from featrob.data.base import DatasetBundle, DataSplit
from featrob.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


# --------------------------------------------------------------------------- helpers


def resolve_root(root: Path | str | None) -> Path:
    """``root`` as an absolute-ish Path, or :func:`default_data_root` when None."""
    return Path(root).expanduser() if root is not None else default_data_root()


def call_reader(
    name: str, reader: Any, arg: str | None, root: Path | None, download: bool, options: dict
) -> DatasetBundle:
    """Call ``reader`` with the user's data options, turning unknown ones into a ConfigError.

    Readers declare their options as keyword parameters; a typo such as ``sise=32`` would
    otherwise surface as a raw TypeError.
    """
    params = inspect.signature(reader).parameters
    accepted = sorted(
        p
        for p, spec in params.items()
        if spec.kind is spec.KEYWORD_ONLY and p not in ("root", "download")
    )
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = ", ".join(accepted) or "none"
        raise ConfigError(f"{name}: unknown data options {unknown}; accepted: {known}")
    return reader(arg, root=root, download=download, **options)


def no_arg(name: str, arg: str | None) -> None:
    """Reject ``name:ARG`` for data sets that take no argument."""
    if arg:
        raise ConfigError(f"data set {name!r} takes no argument, got {name}:{arg}")


def one_line(exc: BaseException) -> str:
    """An exception as one line (library messages sometimes span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def files_fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over the files' names, sizes and modification times (cheap: no content read)."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def channel_stats(images: np.ndarray | torch.Tensor) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std of uint8 ``[N, C, H, W]`` images, scaled to [0, 1].

    Counted through a 256-bin histogram per channel, so a 50,000-image set needs no float
    copy of itself.
    """
    arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.size == 0:
        raise DataError("cannot compute mean/std of an empty image set")
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(arr.shape[1]):
        counts = np.bincount(arr[:, c].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float(counts @ values / total)
        var = float(counts @ (values - mean) ** 2 / total)
        means.append(round(mean, 6))
        stds.append(round(max(var, 0.0) ** 0.5, 6) or 1.0)  # constant images: no scaling
    return tuple(means), tuple(stds)


def check_labels(name: str, labels: np.ndarray, n: int, what: str) -> np.ndarray:
    """Labels as a flat int64 array of length ``n`` with no negative value."""
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels % 1 == 0):
            labels = labels.astype(np.int64)
        else:
            raise DataError(f"{name}: {what} must be integer class labels, got {labels.dtype}")
    if len(labels) != n:
        raise DataError(f"{name}: {len(labels)} labels in {what} for {n} images")
    if n and labels.min() < 0:
        raise DataError(f"{name}: {what} has negative labels")
    return labels.astype(np.int64, copy=False)


def class_names(name: str, classes: Any, labels: Sequence[np.ndarray]) -> list[str]:
    """The ``classes`` option checked against the labels, or ``"0".."K-1"``."""
    top = max((int(lab.max()) for lab in labels if len(lab)), default=-1)
    if classes is None:
        return [str(i) for i in range(top + 1)]
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ConfigError(f"{name}: option classes must be a list of names, got {classes!r}")
    names = [str(c) for c in classes]
    if len(names) <= top:
        raise ConfigError(f"{name}: {len(names)} class names given but labels go up to {top}")
    return names


# --------------------------------------------------------------------------- npz


def load_npz(
    arg: str | None,
    *,
    root: Path | None = None,
    download: bool = False,
    classes: Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
) -> DatasetBundle:
    """Read ``npz:PATH``: a numpy archive with x_train, y_train, x_test, y_test.

    Images may be uint8 ``N x C x H x W``, ``N x H x W`` (grey) or ``N x H x W x C`` with
    C 1 or 3 (transposed). Float images with values in [0, 1] are accepted too and
    converted to uint8 (``round(x * 255)``), since featrob keeps images as uint8.
    A relative PATH is taken from the working directory; ``root`` and ``download`` are
    unused. mean/std come from the training images.

    Options: ``classes`` names the classes; ``size`` (int or ``[H, W]``) resizes every image
    (area averaging when shrinking, bilinear when growing), e.g. to study how robustness
    scales with the input dimension.
    """
    if not arg:
        raise ConfigError("npz needs a path: npz:PATH (a .npz with x_train, y_train, ...)")
    path = Path(arg).expanduser()
    if not path.is_file():
        raise DataError(f"npz: no file {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"npz: {path} is not a .npz archive (write one with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            present = sorted(archive.files)
            missing = [k for k in _NPZ_KEYS if k not in present]
            if missing:
                raise DataError(
                    f"npz: {path} lacks {', '.join(missing)}; it has "
                    f"{', '.join(present) or 'nothing'} (needed: {', '.join(_NPZ_KEYS)})"
                )
            arrays = {k: archive[k] for k in _NPZ_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"npz: cannot read {path}: {one_line(exc)}") from None
    hw = _parse_size(size, "npz")
    x_train = _resize(_as_nchw_uint8(arrays["x_train"], f"x_train of {path}"), hw)
    x_test = _resize(_as_nchw_uint8(arrays["x_test"], f"x_test of {path}"), hw)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"npz: x_train images are {x_train.shape[1:]} but x_test images are {x_test.shape[1:]}"
        )
    y_train = check_labels("npz", arrays["y_train"], len(x_train), "y_train")
    y_test = check_labels("npz", arrays["y_test"], len(x_test), "y_test")
    names = class_names("npz", classes, [y_train, y_test])
    mean, std = channel_stats(x_train) if len(x_train) else channel_stats(x_test)
    return DatasetBundle(
        name="npz",
        spec=f"npz:{arg}",
        test=DataSplit(y_test, images=x_test),
        train=DataSplit(y_train, images=x_train),
        classes=names,
        mean=mean,
        std=std,
        fingerprint=files_fingerprint([path]) + ("" if hw is None else f"-{hw[0]}x{hw[1]}"),
    )


def _resize(x: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    """uint8 NCHW images resized to ``hw`` (unchanged when None or already that size)."""
    if hw is None or tuple(x.shape[2:]) == hw or not len(x):
        return x
    t = torch.from_numpy(x).float()
    shrink = hw[0] <= x.shape[2] and hw[1] <= x.shape[3]
    if shrink:
        out = torch.nn.functional.interpolate(t, size=hw, mode="area")
    else:
        out = torch.nn.functional.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


_FLOAT_RULE = "float images must be finite and lie in [0, 1]; store uint8 0..255"


def _non_finite_counts(x: np.ndarray) -> str:
    """``"holds 12 NaN values and 1 infinite value"``: what makes float images not finite."""
    parts = []
    for count, kind in (
        (np.count_nonzero(np.isnan(x)), "NaN"),
        (np.count_nonzero(np.isinf(x)), "infinite"),
    ):
        if count:
            parts.append(f"{count} {kind} value{'s' if count != 1 else ''}")
    return f"holds {' and '.join(parts)}"


def _as_nchw_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """Images in one of the accepted layouts as uint8 NCHW, or a one-line DataError."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DataError(f"{what}: images must be N x C x H x W, got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind == "f":
        if x.size and not np.isfinite(x).all():
            raise DataError(f"{what}: {_non_finite_counts(x)}; {_FLOAT_RULE}")
        if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):
            raise DataError(
                f"{what}: float images must lie in [0, 1], got values in "
                f"[{float(x.min()):g}, {float(x.max()):g}]; store uint8 0..255"
            )
        return np.ascontiguousarray(np.rint(x * 255.0).astype(np.uint8))
    raise DataError(f"{what}: images must be uint8 (0..255) or float in [0, 1], got {x.dtype}")


# --------------------------------------------------------------------------- image folder


def load_imagefolder(
    arg: str | None,
    *,
    root: Path | None = None,
    download: bool = False,
    size: int | Sequence[int] | None = None,
    grayscale: bool | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> DatasetBundle:
    """Read ``imagefolder:PATH``: ``PATH/{train,test}/<class>/*.png`` (or ``PATH/<class>/``).

    Without ``train``/``test`` subfolders the whole folder is the test split. Classes are
    the sorted subfolder names of both splits. Images are decoded lazily, only those a split
    keeps, when its images are first used; that is also when differing sizes (without
    ``size``) or unreadable files raise :class:`DataError`.

    Options: ``size`` (int or ``[H, W]``) resizes every image; ``grayscale`` True/False
    forces 1 or 3 channels (default: 1 channel if the first image is grey, else 3);
    ``mean``/``std`` set the normalisation (default none).
    """
    if not arg:
        raise ConfigError("imagefolder needs a path: imagefolder:PATH")
    base = Path(arg).expanduser()
    if not base.is_dir():
        raise DataError(f"imagefolder: no directory {base}")
    hw = _parse_size(size)
    norm_mean, norm_std = _parse_norm(mean, std)
    if (base / "train").is_dir() or (base / "test").is_dir():
        if not (base / "test").is_dir():
            raise DataError(f"imagefolder: {base} has train/ but no test/ folder")
        split_dirs = {"test": base / "test"}
        if (base / "train").is_dir():
            split_dirs["train"] = base / "train"
    else:
        split_dirs = {"test": base}
    classes = sorted(
        {
            d.name
            for folder in split_dirs.values()
            for d in folder.iterdir()
            if d.is_dir() and not d.name.startswith(".")  # skip .ipynb_checkpoints and kin
        }
    )
    if not classes:
        raise DataError(f"imagefolder: no class subfolders under {base}")
    listed = {split: _list_images(folder, classes) for split, folder in split_dirs.items()}
    if not listed["test"][0]:
        raise DataError(f"imagefolder: no images ({', '.join(IMAGE_SUFFIXES)}) under {base}")
    mode = _choose_mode(listed["test"][0][0], grayscale)
    splits = {
        split: DataSplit(labels, loader=_FolderReader(files, mode, hw, base))
        for split, (files, labels) in listed.items()
        if files
    }
    digest = hashlib.sha256(f"size={hw} mode={mode}\n".encode())
    for files, _ in listed.values():
        for path in files:
            digest.update(f"{path.relative_to(base).as_posix()}\0{path.stat().st_size}\n".encode())
    return DatasetBundle(
        name="imagefolder",
        spec=f"imagefolder:{arg}",
        test=splits["test"],
        train=splits.get("train"),
        classes=classes,
        mean=norm_mean,
        std=norm_std,
        fingerprint=digest.hexdigest(),
    )


class _FolderReader:
    """Decodes the image files at given source indices into uint8 NCHW."""

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int] | None, base: Path):
        self.files, self.mode, self.size, self.base = files, mode, size, base

    def __call__(self, indices: np.ndarray) -> torch.Tensor:
        from PIL import Image

        arrays = []
        for i in np.asarray(indices, dtype=np.int64).reshape(-1):
            path = self.files[int(i)]
            try:
                with Image.open(path) as img:
                    img = img.convert(self.mode)
                    if self.size is not None and img.size != (self.size[1], self.size[0]):
                        img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
                    arrays.append(np.asarray(img, dtype=np.uint8))
            except (OSError, ValueError) as exc:
                raise DataError(f"imagefolder: cannot read {path}: {one_line(exc)}") from None
            if arrays[-1].shape[:2] != arrays[0].shape[:2]:
                raise DataError(
                    f"imagefolder: images under {self.base} differ in size "
                    f"({arrays[0].shape[1]}x{arrays[0].shape[0]} vs "
                    f"{arrays[-1].shape[1]}x{arrays[-1].shape[0]} in {path.name}); "
                    "pass --set data_options.size=N to resize them"
                )
        if not arrays:
            channels = 1 if self.mode == "L" else 3
            h, w = self.size or (0, 0)
            return torch.empty((0, channels, h, w), dtype=torch.uint8)
        stacked = np.stack(arrays)
        stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(stacked))


def _list_images(folder: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        class_dir = folder / cls
        if not class_dir.is_dir():
            continue
        found = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        files.extend(found)
        labels.extend([label] * len(found))
    return files, np.asarray(labels, dtype=np.int64)


def _choose_mode(first: Path, grayscale: bool | None) -> str:
    if grayscale is not None:
        if not isinstance(grayscale, bool):
            raise ConfigError(
                f"imagefolder: option grayscale must be true or false, got {grayscale!r}"
            )
        return "L" if grayscale else "RGB"
    from PIL import Image

    try:
        with Image.open(first) as img:
            return "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    except (OSError, ValueError) as exc:
        raise DataError(f"imagefolder: cannot read {first}: {one_line(exc)}") from None


def _parse_size(size: Any, reader: str = "imagefolder") -> tuple[int, int] | None:
    if size is None:
        return None
    values = [size] if isinstance(size, int) else size
    if (
        isinstance(values, (list, tuple))
        and len(values) in (1, 2)
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        return (values[0], values[-1])
    raise ConfigError(f"{reader}: option size must be an int or [H, W] > 0, got {size!r}")


def _parse_norm(mean: Any, std: Any) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ConfigError("imagefolder: give both options mean and std, or neither")
    try:
        m = tuple(float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean]))
        s = tuple(float(v) for v in (std if isinstance(std, (list, tuple)) else [std]))
    except (TypeError, ValueError):
        raise ConfigError(f"imagefolder: mean/std must be numbers, got {mean!r}/{std!r}") from None
    if len(m) != len(s) or not all(v > 0 for v in s):
        raise ConfigError(f"imagefolder: need as many mean as std values, std > 0; got {m}/{s}")
    return m, s

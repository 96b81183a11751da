"""Data readers, ``load_dataset`` and balanced subsampling: all offline, on tiny files."""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from featrob.builtins import datasets as builtin_datasets
from featrob.data import DatasetBundle, DataSplit, default_data_root, load_dataset, sources
from featrob.data.torchvision_sets import CIFAR10_CLASSES, FASHION_CLASSES
from featrob.errors import ConfigError, DataError, UnknownNameError
from featrob.registry import Registry

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist_subset.npz"


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg: Registry = Registry("data set")
    builtin_datasets.featrob_register_datasets(functools.partial(reg.add, plugin="datasets"))
    return reg


def _rng_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _assert_one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


# --------------------------------------------------------------------------- digits


def test_digits_shapes_split_and_determinism():
    from sklearn.datasets import load_digits

    a, b = sources.load_digits(), sources.load_digits()
    assert a.name == "digits" and a.classes == [str(i) for i in range(10)]
    assert a.test.images.shape == (450, 1, 8, 8) and a.test.images.dtype == torch.uint8
    assert len(a.train) == 1347 and a.num_classes == 10 and a.input_shape == (1, 8, 8)
    assert torch.equal(a.test.indices, b.test.indices) and torch.equal(a.test.images, b.test.images)
    assert a.fingerprint == b.fingerprint and "digits" in a.fingerprint
    # Indices are positions in sklearn's array; train and test are disjoint and cover it.
    raw = load_digits()
    idx = a.test.indices.numpy()
    assert np.array_equal(a.test.labels.numpy(), raw.target[idx])
    expected = np.rint(raw.images[idx] * 255 / 16).astype(np.uint8)
    assert np.array_equal(a.test.images[:, 0].numpy(), expected)
    all_idx = np.concatenate([idx, a.train.indices.numpy()])
    assert np.array_equal(np.sort(all_idx), np.arange(1797))
    assert len(a.mean) == 1 and 0 < a.mean[0] < 1 and 0 < a.std[0] < 1
    train = a.train.float_images()
    assert a.mean[0] == pytest.approx(train.mean().item(), abs=1e-5)
    assert a.std[0] == pytest.approx(train.std(unbiased=False).item(), abs=1e-5)


def test_digits_rejects_argument_and_options(registry):
    with pytest.raises(ConfigError):
        load_dataset("digits:x", registry)
    with pytest.raises(ConfigError, match="unknown data options"):
        load_dataset("digits", registry, options={"size": 4})


# --------------------------------------------------------------------------- MNIST family


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_set(folder: Path, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": _rng_images(12, (28, 28), seed),
        # every class in training, as load_dataset requires of test labels
        "train-labels-idx1-ubyte": rng.permutation(np.arange(12) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": _rng_images(5, (28, 28), seed + 1),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5).astype(np.uint8),
    }
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    arrays = _write_idx_set(tmp_path / "MNIST" / "raw", gz)
    bundle = sources.load_mnist(root=tmp_path)
    assert bundle.test.images.shape == (5, 1, 28, 28)
    assert np.array_equal(bundle.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(bundle.test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(bundle.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert bundle.classes == [str(i) for i in range(10)]
    assert bundle.mean == (0.1307,) and bundle.std == (0.3081,)
    assert len(bundle.fingerprint) == 64


def test_fashionmnist_reader_and_bad_idx(tmp_path, registry):
    arrays = _write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=True, seed=3)
    bundle = load_dataset("fashionmnist", registry, root=tmp_path)
    assert bundle.classes == FASHION_CLASSES and bundle.spec == "fashionmnist"
    assert np.array_equal(bundle.train.labels.numpy(), arrays["train-labels-idx1-ubyte"])
    (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DataError) as exc:
        sources.load_fashionmnist(root=tmp_path)
    assert "t10k-labels" in _assert_one_line(exc)


# --------------------------------------------------------------------------- CIFAR


def _dump(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj))


def test_cifar10_pickles_round_trip(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = []
    for i in range(1, 6):
        data = _rng_images(3, (3072,), seed=i)
        labels = [(i + k) % 10 for k in range(3)]
        _dump(folder / f"data_batch_{i}", {b"data": data, b"labels": labels})
        batches.append((data, labels))
    test = _rng_images(4, (3072,), seed=9)
    _dump(folder / "test_batch", {b"data": test, b"labels": [9, 0, 1, 2]})
    bundle = sources.load_cifar10(root=tmp_path)
    assert bundle.classes == CIFAR10_CLASSES  # no batches.meta: standard names
    assert bundle.test.images.shape == (4, 3, 32, 32) and len(bundle.train) == 15
    assert np.array_equal(bundle.test.images.numpy().reshape(4, -1), test)
    assert bundle.test.labels.tolist() == [9, 0, 1, 2]
    assert np.array_equal(bundle.train.images[3:6].numpy().reshape(3, -1), batches[1][0])
    assert bundle.mean == (0.4914, 0.4822, 0.4465)
    names = [f"c{i}".encode() for i in range(10)]
    _dump(folder / "batches.meta", {b"label_names": names})
    assert sources.load_cifar10(root=tmp_path).classes == [f"c{i}" for i in range(10)]


def test_cifar10_bad_pickle_is_one_line(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        _dump(folder / name, {b"labels": [0]})
    with pytest.raises(DataError) as exc:
        sources.load_cifar10(root=tmp_path)
    assert "'data'" in _assert_one_line(exc)
    (folder / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError):
        sources.load_cifar10(root=tmp_path)


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = _rng_images(6, (3072,), 1), _rng_images(2, (3072,), 2)
    _dump(folder / "train", {b"data": train, b"fine_labels": [0, 99, 5, 6, 7, 8]})
    _dump(folder / "test", {b"data": test, b"fine_labels": [42, 3], b"coarse_labels": [1, 2]})
    _dump(folder / "meta", {b"fine_label_names": [f"n{i}".encode() for i in range(100)]})
    bundle = sources.load_cifar100(root=tmp_path)
    assert bundle.num_classes == 100 and bundle.classes[99] == "n99"
    assert bundle.test.labels.tolist() == [42, 3] and bundle.train.labels[1] == 99
    assert np.array_equal(bundle.train.images.numpy().reshape(6, -1), train)


# --------------------------------------------------------------------------- SVHN


def test_svhn_mat_transposes_and_maps_label_10(tmp_path):
    import scipy.io

    nchw = {s: _rng_images(n, (3, 32, 32), seed=n) for s, n in (("train", 4), ("test", 3))}
    labels = {"train": np.array([[10], [1], [2], [10]]), "test": np.array([[3], [10], [9]])}
    for split in ("train", "test"):
        x = nchw[split].transpose(2, 3, 1, 0)  # 32 x 32 x 3 x N as SVHN stores it
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": labels[split]})
    bundle = sources.load_svhn(root=tmp_path)
    assert np.array_equal(bundle.train.images.numpy(), nchw["train"])
    assert np.array_equal(bundle.test.images.numpy(), nchw["test"])
    assert bundle.train.labels.tolist() == [0, 1, 2, 0]
    assert bundle.test.labels.tolist() == [3, 0, 9]
    assert bundle.std == (0.1980, 0.2010, 0.1970)


# --------------------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    ("reader", "where"),
    [
        (sources.load_cifar10, "cifar-10-batches-py"),
        (sources.load_cifar100, "cifar-100-python"),
        (sources.load_mnist, "MNIST/raw"),
        (sources.load_fashionmnist, "FashionMNIST/raw"),
        (sources.load_svhn, ""),
    ],
)
def test_missing_torchvision_data_is_one_line(tmp_path, reader, where):
    with pytest.raises(DataError) as exc:
        reader(root=tmp_path)
    text = _assert_one_line(exc)
    assert str(tmp_path / where).rstrip("/") in text and "--download" in text


def test_download_uses_torchvision_and_wraps_failures(tmp_path, monkeypatch):
    # Stand-ins for torchvision's dataset classes: no network, and no 4 s torchvision import.
    tv, tvd = types.ModuleType("torchvision"), types.ModuleType("torchvision.datasets")
    tv.datasets = tvd
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tvd)
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            folder = Path(root) / "cifar-10-batches-py"
            folder.mkdir(exist_ok=True)
            for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
                _dump(folder / name, {b"data": _rng_images(1, (3072,)), b"labels": [1]})

    tvd.CIFAR10 = FakeCIFAR10
    assert len(sources.load_cifar10(root=tmp_path, download=True).test) == 1
    assert calls[0] == (str(tmp_path), True, True)

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading\n<urlopen error [Errno -3]>")

    tvd.MNIST = offline
    with pytest.raises(DataError) as exc:
        sources.load_mnist(root=tmp_path, download=True)
    assert "download" in _assert_one_line(exc)


# --------------------------------------------------------------------------- npz


def _write_npz(path: Path, x_train, x_test, **extra) -> None:
    y_train = np.arange(len(x_train)) % 3
    y_test = np.arange(len(x_test)) % 3
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw"])
def test_npz_layouts_round_trip(tmp_path, layout):
    x_train, x_test = _rng_images(6, (3, 5, 7), 1), _rng_images(4, (3, 5, 7), 2)
    if layout == "nhw":
        x_train, x_test = x_train[:, 0], x_test[:, 0]
        stored = (x_train, x_test)
        expected = (x_train[:, None], x_test[:, None])
    else:
        expected = (x_train, x_test)
        stored = expected if layout == "nchw" else tuple(x.transpose(0, 2, 3, 1) for x in expected)
    path = tmp_path / "d.npz"
    _write_npz(path, *stored)
    bundle = sources.load_npz(str(path), classes=["a", "b", "c"])
    assert np.array_equal(bundle.train.images.numpy(), expected[0])
    assert np.array_equal(bundle.test.images.numpy(), expected[1])
    assert bundle.test.labels.tolist() == [0, 1, 2, 0] and bundle.classes == ["a", "b", "c"]
    channels = expected[0].shape[1]
    train = torch.from_numpy(expected[0]).float() / 255
    assert np.allclose(bundle.mean, train.mean(dim=(0, 2, 3)).numpy(), atol=1e-5)
    assert np.allclose(bundle.std, train.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-5)
    assert len(bundle.mean) == channels and bundle.spec == f"npz:{path}"


def test_npz_float_input_and_fingerprint(tmp_path):
    path = tmp_path / "f.npz"
    x = _rng_images(3, (1, 4, 4))
    _write_npz(path, x.astype(np.float32) / 255, x.astype(np.float64) / 255)
    bundle = sources.load_npz(str(path))
    assert np.array_equal(bundle.test.images.numpy(), x) and bundle.classes == ["0", "1", "2"]
    before = bundle.fingerprint
    _write_npz(path, x[:2], x[:2])
    assert sources.load_npz(str(path)).fingerprint != before


def test_npz_size_option_resizes_by_area_averaging(tmp_path):
    path = tmp_path / "s.npz"
    x = _rng_images(4, (1, 8, 8), 3)
    _write_npz(path, x, x)
    small = sources.load_npz(str(path), size=4)
    assert small.input_shape == (1, 4, 4)
    blocks = x.reshape(4, 1, 4, 2, 4, 2).astype(np.float64).mean(axis=(3, 5))
    assert np.abs(small.test.images.numpy().astype(np.float64) - blocks).max() <= 0.5
    assert small.fingerprint != sources.load_npz(str(path)).fingerprint
    assert sources.load_npz(str(path), size=[8, 8]).test.images.numpy().tolist() == x.tolist()
    with pytest.raises(ConfigError, match="npz: option size"):
        sources.load_npz(str(path), size=0)


def test_npz_errors_are_one_line(tmp_path, registry):
    with pytest.raises(DataError) as exc:
        load_dataset(f"npz:{tmp_path / 'nope.npz'}", registry)
    assert "nope.npz" in _assert_one_line(exc)
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=_rng_images(2, (1, 3, 3)), y_train=[0, 1], images=[1])
    with pytest.raises(DataError) as exc:
        sources.load_npz(str(path))
    text = _assert_one_line(exc)
    assert "x_test, y_test" in text and "images" in text
    _write_npz(path, _rng_images(2, (1, 3, 3)).astype(np.int32), _rng_images(2, (1, 3, 3)))
    with pytest.raises(DataError, match="uint8"):
        sources.load_npz(str(path))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError) as exc:
        sources.load_npz(str(tmp_path / "bad.npz"))
    _assert_one_line(exc)
    with pytest.raises(ConfigError):
        load_dataset("npz", registry)
    _write_npz(path, _rng_images(3, (1, 3, 3)), _rng_images(3, (1, 3, 3)))
    with pytest.raises(ConfigError, match="class names"):
        sources.load_npz(str(path), classes=["only-one"])


def _write_labelled_npz(path: Path, y_train, y_test, x_test=None) -> str:
    x_train = _rng_images(len(y_train), (1, 4, 4), 1)
    x_test = _rng_images(len(y_test), (1, 4, 4), 2) if x_test is None else x_test
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def _run_cli(args: list[str]):
    from typer.testing import CliRunner

    from featrob.cli import create_app
    from featrob.plugins import PluginHost

    return CliRunner().invoke(create_app(lambda: PluginHost()), args)


def test_one_class_data_set_is_one_line_error(tmp_path, registry):
    """Every label the same: accuracy and robust accuracy would both read 1; refused."""
    spec = _write_labelled_npz(tmp_path / "one.npz", [3] * 6, [3] * 4)
    with pytest.raises(DataError) as exc:
        load_dataset(spec, registry)
    assert _assert_one_line(exc) == (
        f"{spec}: all 10 samples have label 3; featrob needs at least two classes"
    )
    _write_pngs(tmp_path / "cats", {"cat": [(4, 4)] * 2})  # imagefolder: the class name too
    with pytest.raises(DataError, match=r"have label 0 \('cat'\); .* at least two classes"):
        load_dataset(f"imagefolder:{tmp_path / 'cats'}", registry)
    # through the CLI: one line, no traceback, before any model is built
    result = _run_cli(["run", "--dataset", spec, "--quiet", "--store", "none"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"featrob: error: {spec}: all 10 samples have label 3; featrob needs at least two classes"
    ], result.output


def test_test_labels_unseen_in_training_are_one_line_error(tmp_path, registry):
    """A class the model never sees cannot be learnt; the error names labels and counts."""
    spec = _write_labelled_npz(tmp_path / "x.npz", [0, 1, 2] * 3, [0, 1, 2] + [9] * 7)
    with pytest.raises(DataError) as exc:
        load_dataset(spec, registry)
    assert _assert_one_line(exc).startswith(
        f"{spec}: 7 test samples have label 9, which no training sample has; "
    )
    spec = _write_labelled_npz(tmp_path / "y.npz", [0, 1] * 3, [0, 1, 7, 9, 9])
    with pytest.raises(DataError) as exc:
        load_dataset(spec, registry, options={"classes": [str(i) for i in range(9)] + ["nine"]})
    text = _assert_one_line(exc)
    assert "3 test samples have labels 7 (1 sample), 9 ('nine') (2 samples)," in text
    assert "drop them from the test split" in text
    # an empty training split is evaluation-only: nothing to compare with
    spec = _write_labelled_npz(tmp_path / "eval.npz", np.zeros(0, np.int64), [0, 1, 1])
    assert load_dataset(spec, registry).num_classes == 2
    _write_pngs(tmp_path / "f" / "train", {"cat": [(4, 4)], "dog": [(4, 4)]})
    _write_pngs(tmp_path / "f" / "test", {"cat": [(4, 4)], "emu": [(4, 4)] * 2})
    with pytest.raises(DataError, match=r"2 test samples have label 2 \('emu'\), which no"):
        load_dataset(f"imagefolder:{tmp_path / 'f'}", registry)
    result = _run_cli(["run", "--dataset", f"npz:{tmp_path / 'x.npz'}", "--store", "none"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "label 9" in result.stderr


def test_npz_nan_and_inf_images_are_named(tmp_path, registry):
    path = tmp_path / "nan.npz"
    x_test = np.full((3, 1, 4, 4), 0.5, np.float32)
    x_test[0, 0, 0] = np.nan  # 4 NaN values
    x_test[1, 0, 1, 1] = -np.inf
    spec = _write_labelled_npz(path, [0, 1, 2], [0, 1, 2], x_test=x_test)
    with pytest.raises(DataError) as exc:
        load_dataset(spec, registry)
    assert _assert_one_line(exc) == (
        f"x_test of {path}: holds 4 NaN values and 1 infinite value; "
        "float images must be finite and lie in [0, 1]; store uint8 0..255"
    )
    x_test[:] = 0.5
    x_test[2, 0, 0, 0] = np.nan
    _write_labelled_npz(path, [0, 1, 2], [0, 1, 2], x_test=x_test)
    with pytest.raises(DataError, match=r": holds 1 NaN value; float images must be finite"):
        sources.load_npz(str(path))
    x_test[:] = 255.0  # pixels 0..255 stored as floats: the range is named
    x_test[0, 0, 0, 0] = 0.0
    _write_labelled_npz(path, [0, 1, 2], [0, 1, 2], x_test=x_test)
    with pytest.raises(DataError, match=r"must lie in \[0, 1\], got values in \[0, 255\]; st"):
        sources.load_npz(str(path))
    result = _run_cli(["run", "--dataset", spec, "--store", "none"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "255" in result.stderr


# --------------------------------------------------------------------------- image folder


def _write_pngs(folder: Path, sizes: dict[str, list[tuple[int, int]]], mode="RGB") -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, shapes in sizes.items():
        (folder / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(folder / cls / f"{i}.png")


def test_imagefolder_with_splits_reads_lazily(tmp_path, registry):
    _write_pngs(tmp_path / "train", {"cat": [(6, 5)] * 2, "dog": [(6, 5)] * 3, "emu": [(6, 5)]})
    _write_pngs(tmp_path / "test", {"cat": [(6, 5)] * 3, "dog": [(6, 5)] * 2, "emu": [(6, 5)]})
    (tmp_path / "test" / ".ipynb_checkpoints").mkdir()
    bundle = load_dataset(f"imagefolder:{tmp_path}", registry)
    assert bundle.classes == ["cat", "dog", "emu"] and bundle.mean is None
    assert bundle.test.labels.tolist() == [0, 0, 0, 1, 1, 2] and len(bundle.train) == 6
    assert bundle.input_shape == (3, 6, 5)
    kept = bundle.test.subset([1, 5])
    (tmp_path / "test" / "cat" / "0.png").write_bytes(b"broken")  # not kept: never read
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / "test" / "cat" / "1.png"))
    assert kept.images.shape == (2, 3, 6, 5) and kept.images.dtype == torch.uint8
    assert np.array_equal(kept.images[0].numpy(), first.transpose(2, 0, 1))
    with pytest.raises(DataError) as exc:
        bundle.test.images  # noqa: B018 - reading the broken file
    assert "0.png" in _assert_one_line(exc)


def test_imagefolder_flat_size_grayscale_and_mixed_sizes(tmp_path):
    _write_pngs(tmp_path / "a", {"x": [(4, 4), (9, 7)], "y": [(4, 4)]}, mode="L")
    with pytest.raises(DataError) as exc:
        sources.load_imagefolder(str(tmp_path / "a")).test.images  # noqa: B018
    assert "data_options.size" in _assert_one_line(exc)
    bundle = sources.load_imagefolder(str(tmp_path / "a"), size=[5, 6], mean=0.5, std=0.25)
    assert bundle.train is None and bundle.classes == ["x", "y"]
    assert bundle.test.images.shape == (3, 1, 5, 6) and bundle.mean == (0.5,)
    rgb = sources.load_imagefolder(str(tmp_path / "a"), size=3, grayscale=False)
    assert rgb.test.images.shape == (3, 3, 3, 3) and rgb.fingerprint != bundle.fingerprint
    with pytest.raises(ConfigError):
        sources.load_imagefolder(str(tmp_path / "a"), size="big")
    with pytest.raises(DataError):
        sources.load_imagefolder(str(tmp_path / "missing"))


# --------------------------------------------------------------------------- subsets, registry


def test_balanced_subset_counts_determinism_and_short_classes():
    labels = np.repeat([0, 1, 2], [10, 8, 2])
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    split = DataSplit(labels, indices=np.arange(100, 120), images=images)
    with pytest.warns(UserWarning, match=r"\[2\]"):
        a = split.balanced_subset(3, seed=1)
    with pytest.warns(UserWarning):
        b = split.balanced_subset(3, seed=1)
    assert np.bincount(a.labels.numpy()).tolist() == [3, 3, 2]
    assert torch.equal(a.indices, b.indices) and bool((a.indices[1:] > a.indices[:-1]).all())
    # source indices travel with the samples
    assert torch.equal(a.indices - 100, a.images.reshape(-1).long())
    assert torch.equal(a.labels, torch.as_tensor(labels)[a.indices - 100])
    c = split.balanced_subset(2, seed=2).balanced_subset(1, seed=0)
    assert len(c) == 3 and set(c.indices.tolist()) <= set(range(100, 120))


def test_load_dataset_registry_subsample_and_root(tmp_path, registry, monkeypatch):
    assert set(registry.names()) == {
        "cifar10", "cifar100", "digits", "fashionmnist", "imagefolder", "mnist", "npz", "svhn",
    }  # fmt: skip
    assert registry.entry("digits").description and registry.entry("npz").plugin == "datasets"
    with pytest.raises(UnknownNameError, match="did you mean 'cifar10'"):
        load_dataset("cifar1O", registry)
    bundle = load_dataset("digits", registry, n_per_class=5, seed=3)
    assert (
        isinstance(bundle, DatasetBundle) and len(bundle.test) == 50 and len(bundle.train) == 1347
    )
    again = load_dataset(" digits ", registry, n_per_class=5, seed=3)
    assert torch.equal(bundle.test.indices, again.test.indices) and again.spec == "digits"
    monkeypatch.setenv("FEATROB_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    with pytest.raises(DataError, match=str(tmp_path / "cifar-10-batches-py")):
        load_dataset("cifar10", registry)
    monkeypatch.delenv("FEATROB_DATA")
    assert default_data_root() == Path.home() / ".cache" / "featrob" / "data"


def test_plugin_module_import_is_cheap():
    code = "import sys, featrob.builtins.datasets; print('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not SHARED_MNIST.exists(), reason="../shared/data not present")
def test_shared_mnist_subset(registry):
    bundle = load_dataset(f"npz:{SHARED_MNIST}", registry, n_per_class=2)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert len(bundle.test) == 20 and bundle.train is not None


def test_balanced_subsets_are_nested():
    """A larger n_per_class keeps every sample of a smaller one (the store reuses them)."""
    from featrob.data.sources import load_digits

    test = load_digits(None).test
    small = set(test.balanced_subset(5, seed=3).indices.tolist())
    large = set(test.balanced_subset(12, seed=3).indices.tolist())
    assert small < large and len(large) == 120

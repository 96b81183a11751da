"""The HDF5 feature store: round trips, cache hits, killed writers, concurrent writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from featrob import store as store_module
from featrob.errors import StoreError
from featrob.extract import Extractor
from featrob.store import CHECKSUM_ATTR, MARKER, FeatureStore
from featrob.testing import tiny_dataset, tiny_model

KEY = {"model": "m", "data": "d", "layer": "features", "perturbation": None}


def test_round_trip_any_order(tmp_path: Path):
    entry = FeatureStore(tmp_path).entry(KEY)
    entry.write(
        np.array([5, 3, 9]), values=np.arange(6.0).reshape(3, 2), labels=np.array([1, 0, 1])
    )
    entry.write(
        np.array([1, 2]), values=np.array([[10.0, 11.0], [12.0, 13.0]]), labels=np.array([0, 0])
    )
    out = entry.read([9, 1, 5])
    np.testing.assert_array_equal(out["values"], [[4.0, 5.0], [10.0, 11.0], [0.0, 1.0]])
    np.testing.assert_array_equal(out["labels"], [1, 0, 1])
    np.testing.assert_array_equal(entry.indices(), [1, 2, 3, 5, 9])
    np.testing.assert_array_equal(entry.missing([7, 3, 8]), [7, 8])
    with pytest.raises(KeyError):
        entry.read([3, 4])


def test_new_store_object_sees_existing_entries(tmp_path: Path):
    FeatureStore(tmp_path).entry(KEY).write(np.arange(4), values=np.ones((4, 3), dtype=np.float32))
    again = FeatureStore(tmp_path).entry(KEY)
    assert again.read(np.arange(4))["values"].dtype == np.float32
    assert FeatureStore(tmp_path).entry_keys() == [KEY]


def test_other_schema_is_detected(tmp_path: Path):
    FeatureStore(tmp_path)
    (tmp_path / MARKER).write_text(json.dumps({"schema": 99}))
    with pytest.raises(StoreError, match="schema version 99"):
        FeatureStore(tmp_path)


def test_garbage_chunk_and_temp_files_are_not_trusted(tmp_path: Path):
    entry = FeatureStore(tmp_path).entry(KEY)
    entry.write(np.array([0, 1]), values=np.zeros((2, 2)))
    (entry.path / "chunk-000000000002-deadbeef.h5").write_bytes(b"not hdf5 at all")
    (entry.path / ".tmp-1-abc.h5").write_bytes(b"half a file")
    fresh = FeatureStore(tmp_path).entry(KEY)
    with pytest.warns(UserWarning, match="unreadable store chunk"):
        np.testing.assert_array_equal(fresh.indices(), [0, 1])


def _tamper(chunk: Path, name: str = "distance", row: int = 1, value: float = 123.0) -> None:
    """Change one value of a chunk in place; the file stays a valid, complete chunk."""
    with h5py.File(chunk, "r+") as f:
        f[name][row] = value


def _checksum_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if "checksum" in str(w.message)]


def test_tampered_chunk_is_not_trusted_and_does_not_shadow_good_rows(tmp_path: Path):
    entry = FeatureStore(tmp_path).entry(KEY)
    bad = entry.write(np.array([0, 1, 2]), distance=np.array([0.5, 1.5, 2.5]))
    entry.write(np.array([1, 2, 3]), distance=np.array([1.5, 2.5, 3.5]))  # overlaps rows 1, 2
    _tamper(bad)
    fresh = FeatureStore(tmp_path).entry(KEY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(fresh.missing([3, 2, 1, 0, 4]), [0, 4])
        rows = fresh.read([1, 2, 3])  # the good chunk, as its verification read it
        assert list(rows) == ["distance"]
        np.testing.assert_array_equal(rows["distance"], [1.5, 2.5, 3.5])
        with pytest.raises(KeyError):  # never rows of the failed chunk
            fresh.read([0])
        np.testing.assert_array_equal(fresh.indices(), [1, 2, 3])
    (warning,) = _checksum_warnings(caught)  # one warning, one line, naming the chunk
    assert str(warning.message) == (
        f"store chunk {bad} failed its checksum (its values were changed); its rows are recomputed"
    )
    assert warning.filename == __file__  # it points at the caller of missing()
    assert not bad.exists() and bad.with_name(f"bad-{bad.name}").exists()  # set aside
    # the recomputed rows land in a new chunk (same name), trusted by this and later readers
    fresh.write(np.array([0, 1, 2]), distance=np.array([0.5, 1.5, 2.5]))
    np.testing.assert_array_equal(fresh.read([0, 1, 2])["distance"], [0.5, 1.5, 2.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        later = FeatureStore(tmp_path).entry(KEY)
        np.testing.assert_array_equal(later.read([0, 1, 2, 3])["distance"], [0.5, 1.5, 2.5, 3.5])


def test_chunk_without_checksum_is_trusted(tmp_path: Path):
    entry = FeatureStore(tmp_path).entry(KEY)
    chunk = entry.write(np.array([4, 5]), distance=np.array([4.0, 5.0]))
    with h5py.File(chunk, "r+") as f:  # a chunk written before checksums existed
        del f.attrs[CHECKSUM_ATTR]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = FeatureStore(tmp_path).entry(KEY)
        assert len(old.missing([4, 5])) == 0
        np.testing.assert_array_equal(old.read([5, 4])["distance"], [5.0, 4.0])


def test_chunks_are_verified_once_and_only_when_their_rows_are_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    entry = FeatureStore(tmp_path).entry(KEY)
    for start in (0, 10, 20):
        entry.write(np.arange(start, start + 3), distance=np.arange(3.0))
    hashed = []
    checksum = store_module.chunk_checksum

    def counting(indices, arrays):
        hashed.append(int(indices[0]))
        return checksum(indices, arrays)

    monkeypatch.setattr(store_module, "chunk_checksum", counting)
    entry.read([0, 21])  # chunks this entry object wrote are trusted
    assert hashed == []
    fresh = FeatureStore(tmp_path).entry(KEY)
    fresh.missing([1, 2])
    assert hashed == [0]  # only the chunk holding the rows asked for
    np.testing.assert_array_equal(fresh.read([1, 2, 11], ["distance"])["distance"], [1, 2, 1])
    fresh.missing([0, 10, 12])
    assert hashed == [0, 10]  # each chunk once per entry object
    fresh.indices()
    assert hashed == [0, 10, 20]
    monkeypatch.setattr(store_module, "VERIFY_CHECKSUMS", False)
    FeatureStore(tmp_path).entry(KEY).read([0, 10, 20])
    assert hashed == [0, 10, 20]  # switched off: nothing verified


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from featrob.store import FeatureStore
    entry = FeatureStore(sys.argv[1]).entry({"k": "killed"})
    start = int(sys.argv[2])
    rows = 4096  # 16 MB per chunk: the process spends most of its time inside writes
    for i in range(start, start + 10_000):
        idx = np.arange(i * rows, (i + 1) * rows)
        entry.write(idx, values=np.full((rows, 1024), float(i), dtype=np.float32))
        print(i, flush=True)
    """
)


def _spawn_writer(root: Path, start: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_writer_never_leaves_a_trusted_partial_chunk(tmp_path: Path):
    proc = _spawn_writer(tmp_path, 0)
    done = 0
    while done < 3:  # wait for a few finished chunks, then kill mid-stream
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        done += 1
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    entry = FeatureStore(tmp_path).entry({"k": "killed"})
    chunks = sorted(entry.path.glob("chunk-*.h5"))
    assert len(chunks) >= 3
    indices = entry.indices()
    assert len(indices) == 4096 * len(chunks)  # every visible chunk is complete
    values = entry.read(indices)["values"]
    np.testing.assert_array_equal(values[:, 0], indices // 4096)
    # a later run resumes: only the missing rows are computed
    wanted = np.arange(4096 * (len(chunks) + 2))
    missing = entry.missing(wanted)
    np.testing.assert_array_equal(missing, np.arange(4096 * len(chunks), 4096 * (len(chunks) + 2)))


def test_two_concurrent_writers_do_not_corrupt(tmp_path: Path):
    procs = [_spawn_writer(tmp_path, 0), _spawn_writer(tmp_path, 2)]
    for proc in procs:  # both write overlapping chunk sets at the same time
        for _ in range(4):
            assert proc.stdout.readline(), proc.stderr.read()
    for proc in procs:
        proc.kill()
        proc.wait()
    entry = FeatureStore(tmp_path).entry({"k": "killed"})
    indices = entry.indices()
    values = entry.read(indices)["values"]
    np.testing.assert_array_equal(values[:, -1], indices // 4096)
    assert set(range(0, 6 * 4096)) <= set(indices.tolist())


# ---------------------------------------------------------------------- extractor
class CountingModel(torch.nn.Module):
    """Wraps a FeatrobModel and counts the samples that went through ``extract``."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.samples = 0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def extract(self, x, layers):
        self.samples += len(x)
        return self.inner.extract(x, layers)

    def forward(self, x):
        return self.inner(x)


def _extractor(model, split, store, batch_size=16):
    return Extractor(
        model,
        split,
        torch.device("cpu"),
        store,
        base_key={"model": "tiny", "data": "digits"},
        batch_size=batch_size,
    )


def test_second_extractor_reads_everything_from_the_store(tmp_path: Path):
    data = tiny_dataset()
    store = FeatureStore(tmp_path)
    first = CountingModel(tiny_model())
    feats = _extractor(first, data.test, store).features(["features", "conv1"])
    assert first.samples == len(data.test)
    second = CountingModel(tiny_model())
    again = _extractor(second, data.test, store).features(["features", "conv1"])
    assert second.samples == 0
    torch.testing.assert_close(again["features"].values, feats["features"].values)
    assert again["conv1"].values.shape[1:] == feats["conv1"].values.shape[1:]
    # a larger sample computes only the new samples
    bigger = tiny_dataset(n_per_class_test=15).test
    third = CountingModel(tiny_model())
    _extractor(third, bigger, store).features(["features"])
    assert third.samples == len(bigger) - len(data.test)


def test_tampered_chunk_rows_are_recomputed(tmp_path: Path):
    data = tiny_dataset()
    store = FeatureStore(tmp_path)
    feats = _extractor(tiny_model(), data.test, store).features(["features"])
    key = next(k for k in store.entry_keys() if k["layer"] == "fc1")
    chunk = sorted(store.entry(key).path.glob("chunk-*.h5"))[2]
    with h5py.File(chunk, "r") as f:
        rows = len(f["indices"])
    _tamper(chunk, "values", row=0, value=1e6)
    second = CountingModel(tiny_model())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = _extractor(second, data.test, FeatureStore(tmp_path)).features(["features"])
    (warning,) = _checksum_warnings(caught)
    assert str(chunk) in str(warning.message) and "\n" not in str(warning.message)
    assert second.samples == rows  # only the tampered chunk's rows were recomputed
    torch.testing.assert_close(again["features"].values, feats["features"].values)
    third = CountingModel(tiny_model())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*store chunk")
        later = _extractor(third, data.test, FeatureStore(tmp_path)).features(["features"])
    assert third.samples == 0  # the recomputed rows were stored, and are trusted
    torch.testing.assert_close(later["features"].values, feats["features"].values)


def test_failed_attack_batch_keeps_finished_batches(tmp_path: Path):
    from featrob.attacks import PGD

    class FlakyPGD(PGD):
        calls = 0
        fail_on_call = 3

        def perturb(self, *args, **kwargs):
            FlakyPGD.calls += 1
            if FlakyPGD.calls == FlakyPGD.fail_on_call:
                raise RuntimeError("batch 3 dies")
            return super().perturb(*args, **kwargs)

    data = tiny_dataset()
    store = FeatureStore(tmp_path)
    attack = FlakyPGD(eps=0.1, steps=3)
    with pytest.raises(RuntimeError, match="batch 3 dies"):
        _extractor(tiny_model(), data.test, store, batch_size=20).features(["logits"], attack)
    FlakyPGD.calls, FlakyPGD.fail_on_call = 0, None
    result = _extractor(tiny_model(), data.test, store, batch_size=20).features(["logits"], attack)
    assert FlakyPGD.calls == 3  # 5 batches in all, 2 were already stored
    reference = _extractor(tiny_model(), data.test, None, batch_size=100).features(
        ["logits"], PGD(eps=0.1, steps=3)
    )
    torch.testing.assert_close(
        result["logits"].values, reference["logits"].values, atol=1e-5, rtol=1e-5
    )


def test_entries_hold_values_labels_and_indices(tmp_path: Path):
    data = tiny_dataset()
    store = FeatureStore(tmp_path)
    _extractor(tiny_model(), data.test, store).features(["features"])
    keys = store.entry_keys()
    assert {k["layer"] for k in keys} == {"fc1", "logits"}  # "features" aliases fc1
    entry = store.entry(next(k for k in keys if k["layer"] == "logits"))
    rows = entry.read(data.test.indices.numpy())
    np.testing.assert_array_equal(rows["labels"], data.test.labels.numpy())
    assert rows["values"].shape == (len(data.test), 10)


def test_inputs_are_stored_once_and_clean_inputs_not_at_all(tmp_path: Path):
    from featrob.attacks import PGD

    data = tiny_dataset()
    store = FeatureStore(tmp_path)
    ex = _extractor(tiny_model(), data.test, store, batch_size=50)
    clean = ex.features(["input", "logits"])
    torch.testing.assert_close(clean["input"].values, data.test.float_images())
    adv = ex.features(["input", "logits"], PGD(eps=0.1, steps=2))
    assert (adv["input"].values - clean["input"].values).abs().max() <= 0.1 + 1e-6
    chunks = {
        k["layer"]: len(list(store.entry(k).path.glob("chunk-*.h5")))
        for k in store.entry_keys()
        if k["perturbation"] is not None
    }
    assert chunks == {"input": 2, "logits": 2}  # 100 samples in batches of 50, no duplicates
    assert not [
        k for k in store.entry_keys() if k["layer"] == "input" and k["perturbation"] is None
    ]

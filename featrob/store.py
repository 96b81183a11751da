"""The HDF5 feature store shared by every plugin.

Features, logits, adversarial inputs and per-sample attack records are expensive; the store
keeps them so that a second run, another metric or a resumed run reads them instead of
recomputing. Layout::

    STORE/
      featrob-store.json              {"schema": 1}
      entries/ab/abcdef.../
        key.json                      what the entry holds (model, data, layer, perturbation)
        chunk-000000000017-5f2c1e0a.h5    rows for a batch of sample indices

An entry is identified by a key dict (model fingerprint, data identity and split, layer,
perturbation spec); its rows are identified by sample index, so work can be split by sample
index (a multi-process mode shards it) and a run that asks for more samples computes only the
new ones.

Atomicity: each chunk is written to a temporary file in the same folder and renamed into
place (``os.replace`` is atomic on POSIX and Windows). A process killed mid-write leaves at
most a ``.tmp-*`` file that readers ignore; every visible chunk is complete. Two runs on the
same store therefore cannot corrupt it: at worst both compute the same rows, and the reader
keeps one copy. Each chunk also carries the schema version and a ``complete`` flag written
last; an unreadable chunk is skipped (its rows recomputed), never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featrob.errors import StoreError

SCHEMA_VERSION = 1
MARKER = "featrob-store.json"
_TMP_MAX_AGE_S = 24 * 3600


def key_digest(key: dict[str, Any]) -> str:
    """Stable hex digest of a key dict (canonical JSON, sorted keys)."""
    text = json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FeatureStore:
    """A folder of store entries.

    Args:
        root: the store folder (created if missing).

    Raises:
        StoreError: the folder holds a store of another schema version, or is not writable.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "entries").mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create feature store at {self.root}: {exc.strerror}"
            ) from None
        self._check_schema()
        self._entries: dict[str, StoreEntry] = {}

    def _check_schema(self) -> None:
        marker = self.root / MARKER
        if not marker.exists():
            _atomic_write_text(marker, json.dumps({"schema": SCHEMA_VERSION}))
        try:
            schema = json.loads(marker.read_text()).get("schema")
        except (OSError, ValueError):
            raise StoreError(f"{marker} is unreadable; delete it or use another --store") from None
        if schema != SCHEMA_VERSION:
            raise StoreError(
                f"feature store {self.root} has schema version {schema}, this featrob reads "
                f"version {SCHEMA_VERSION}; use another --store folder or delete this one"
            )

    def entry(self, key: dict[str, Any]) -> StoreEntry:
        """The entry for ``key`` (created on first write)."""
        digest = key_digest(key)
        if digest not in self._entries:
            self._entries[digest] = StoreEntry(self.root / "entries" / digest[:2] / digest, key)
        return self._entries[digest]

    def entry_keys(self) -> list[dict[str, Any]]:
        """Key dicts of every entry in the store."""
        found = []
        for key_file in sorted((self.root / "entries").glob("*/*/key.json")):
            try:
                found.append(json.loads(key_file.read_text()))
            except (OSError, ValueError):
                continue
        return found

    def size_bytes(self) -> int:
        """Disk space used by finished chunks."""
        return sum(p.stat().st_size for p in (self.root / "entries").glob("*/*/chunk-*.h5"))


class StoreEntry:
    """Rows (one per sample index) of named arrays for one key.

    Every chunk of an entry holds the same array names; row ``i`` of each array belongs to
    sample ``indices[i]``.
    """

    def __init__(self, path: Path, key: dict[str, Any]) -> None:
        self.path = path
        self.key = key
        self._seen: set[str] = set()  # chunk file names already indexed (or found bad)
        self._chunks: list[Path] = []
        # Sorted sample indices with rows, and for each: chunk number and row in that chunk.
        self._idx = np.empty(0, dtype=np.int64)
        self._chunk_of = np.empty(0, dtype=np.int64)
        self._row_of = np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ reading
    def _scan(self) -> None:
        """Index chunk files written since the last scan (cheap when nothing changed)."""
        if not self.path.is_dir():
            return
        self._clean_stale_tmp()
        new_idx, new_chunk, new_row = [], [], []
        for chunk in sorted(self.path.glob("chunk-*.h5")):
            if chunk.name in self._seen:
                continue
            self._seen.add(chunk.name)
            try:
                with h5py.File(chunk, "r") as f:
                    if f.attrs.get("schema") != SCHEMA_VERSION or not f.attrs.get("complete"):
                        raise OSError("incomplete chunk or another schema version")
                    indices = np.asarray(f["indices"][()], dtype=np.int64)
            except (OSError, KeyError) as exc:
                warnings.warn(f"ignoring unreadable store chunk {chunk}: {exc}", stacklevel=3)
                continue
            new_idx.append(indices)
            new_chunk.append(np.full(len(indices), len(self._chunks), dtype=np.int64))
            new_row.append(np.arange(len(indices), dtype=np.int64))
            self._chunks.append(chunk)
        if not new_idx:
            return
        idx = np.concatenate([self._idx, *new_idx])
        chunk_of = np.concatenate([self._chunk_of, *new_chunk])
        row_of = np.concatenate([self._row_of, *new_row])
        # Keep the first occurrence of an index (rows of overlapping chunks are equal).
        order = np.argsort(idx, kind="stable")
        idx, chunk_of, row_of = idx[order], chunk_of[order], row_of[order]
        first = np.ones(len(idx), dtype=bool)
        first[1:] = idx[1:] != idx[:-1]
        self._idx, self._chunk_of, self._row_of = idx[first], chunk_of[first], row_of[first]

    def _locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of ``idx`` in the sorted index, and a mask of those present."""
        pos = np.searchsorted(self._idx, idx)
        pos_clipped = np.minimum(pos, max(len(self._idx) - 1, 0))
        present = (
            (pos < len(self._idx)) & (self._idx[pos_clipped] == idx)
            if len(self._idx)
            else np.zeros(len(idx), bool)
        )
        return pos_clipped, present

    def indices(self) -> np.ndarray:
        """Sorted sample indices that have rows."""
        self._scan()
        return self._idx.copy()

    def missing(self, indices: Iterable[int] | np.ndarray) -> np.ndarray:
        """The subset of ``indices`` without rows, in the given order."""
        self._scan()
        idx = np.asarray(
            list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64
        ).reshape(-1)
        _, present = self._locate(idx)
        return idx[~present]

    def read(
        self, indices: Iterable[int] | np.ndarray, names: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Arrays for ``indices`` (rows in that order).

        Raises:
            KeyError: some indices have no rows (check :meth:`missing` first).
        """
        self._scan()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        pos, present = self._locate(idx)
        if not present.all():
            absent = idx[~present]
            raise KeyError(
                f"{len(absent)} sample indices not in store entry (first: {absent[:5].tolist()})"
            )
        chunk_of, row_of = self._chunk_of[pos], self._row_of[pos]
        out: dict[str, np.ndarray] = {}
        for c in np.unique(chunk_of).tolist():
            sel = np.flatnonzero(chunk_of == c)
            rows = row_of[sel]
            with h5py.File(self._chunks[c], "r") as f:
                wanted = list(names) if names is not None else [k for k in f if k != "indices"]
                for name in wanted:
                    data = f[name][()]
                    if name not in out:
                        out[name] = np.empty((len(idx), *data.shape[1:]), dtype=data.dtype)
                    out[name][sel] = data[rows]
        return out

    # ------------------------------------------------------------------ writing
    def write(self, indices: np.ndarray, **arrays: np.ndarray) -> Path:
        """Write rows for ``indices`` as one chunk, atomically.

        Args:
            indices: sample indices, one per row.
            **arrays: arrays whose first axis matches ``indices``.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        for name, arr in arrays.items():
            if len(arr) != len(idx):
                raise ValueError(f"array {name!r} has {len(arr)} rows for {len(idx)} indices")
        self.path.mkdir(parents=True, exist_ok=True)
        key_file = self.path / "key.json"
        if not key_file.exists():
            _atomic_write_text(
                key_file, json.dumps(self.key, sort_keys=True, default=str, indent=1)
            )
        digest = hashlib.sha256(idx.tobytes()).hexdigest()[:8]
        first = int(idx.min()) if len(idx) else 0
        final = self.path / f"chunk-{first:012d}-{digest}.h5"
        tmp = self.path / f".tmp-{os.getpid()}-{uuid.uuid4().hex}.h5"
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["schema"] = SCHEMA_VERSION
                f.create_dataset("indices", data=idx)
                for name, arr in arrays.items():
                    f.create_dataset(name, data=np.ascontiguousarray(arr))
                f.attrs["complete"] = True
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        self._seen.discard(final.name)
        return final

    def _clean_stale_tmp(self) -> None:
        now = time.time()
        for tmp in self.path.glob(".tmp-*.h5"):
            try:
                if now - tmp.stat().st_mtime > _TMP_MAX_AGE_S:
                    tmp.unlink()
            except OSError:
                continue


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)

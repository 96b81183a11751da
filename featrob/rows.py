"""Rows computed once: the store-backed loop every expensive computation of a run shares.

Features, attack records, collision distances, feature extremes and compression pairs are
all "one row of arrays per key" (a sample index, a pair, a sample x feature cell). Every one
of them is computed the same way, by :meth:`RowCache.rows`:

1. look up which row keys the store already holds (and, optionally, which of those still
   hold for this call: ``accept``);
2. batch the missing rows (``batch_size`` rows at a time, in the order given, or the caller's
   own ``batches`` of positions, such as a grid of cells);
3. share the batches among the ranks of a distributed run (:func:`featrob.distributed.map_batches`);
4. write each finished batch as one store chunk straight away, so a killed run resumes at
   the next batch;
5. return every row, from the store or from this call, in the order of the row keys.

Without a feature store (``--store none``) the same loop runs on an in-memory store kept for
the whole run, so nothing is computed twice within a run either.

Store keys are built here, not by hand: :meth:`RowCache.key` adds the model fingerprint, the
data identity and split, and (for computations that run under ``--amp``) the mixed-precision
mode to the caller's own kind and device-independent parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from featrob.distributed import map_batches, world
from featrob.leases import POLL_S, Lease
from featrob.progress import ProgressBars
from featrob.store import FeatureStore, key_digest

#: ``compute(positions) -> {field: array}``: rows for ``row_keys[positions]``, first axis
#: ``len(positions)``.
Compute = Callable[[np.ndarray], Mapping[str, np.ndarray]]


class Entry(Protocol):
    """What :class:`RowCache` needs of a store entry (on disk or in memory)."""

    def missing(self, indices: np.ndarray) -> np.ndarray: ...

    def read(
        self, indices: np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]: ...

    def write(self, indices: np.ndarray, **arrays: np.ndarray) -> Any: ...


class MemoryEntry:
    """A store entry that lives in memory (same interface as :class:`featrob.store.StoreEntry`)."""

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._index: np.ndarray | None = None  # sorted keys, chunk, row (rebuilt lazily)

    def _build(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._index is None:
            keys = [idx for idx, _ in self._chunks]
            idx = np.concatenate(keys) if keys else np.empty(0, np.int64)
            chunk = np.concatenate([np.full(len(k), c) for c, k in enumerate(keys)] or [idx])
            row = np.concatenate([np.arange(len(k)) for k in keys] or [idx])
            order = np.argsort(idx, kind="stable")
            idx, chunk, row = idx[order], chunk[order], row[order]
            first = np.ones(len(idx), dtype=bool)
            first[1:] = idx[1:] != idx[:-1]  # the first write of a key wins, as on disk
            self._index = np.stack([idx[first], chunk[first], row[first]]).astype(np.int64)
        return self._index[0], self._index[1], self._index[2]

    def missing(self, indices: np.ndarray) -> np.ndarray:
        """The subset of ``indices`` without rows, in the given order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        keys, _, _ = self._build()
        return idx[~np.isin(idx, keys)]

    def read(
        self, indices: np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Arrays for ``indices`` (rows in that order); KeyError for absent ones."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        keys, chunk, row = self._build()
        pos = np.searchsorted(keys, idx)
        if len(idx) and (pos.max(initial=0) >= len(keys) or (keys[pos] != idx).any()):
            raise KeyError(f"{len(self.missing(idx))} sample indices not in memory entry")
        out: dict[str, np.ndarray] = {}
        for c in np.unique(chunk[pos]).tolist():
            sel = np.flatnonzero(chunk[pos] == c)
            arrays = self._chunks[c][1]
            for name in names if names is not None else arrays:
                data = arrays[name]
                if name not in out:
                    out[name] = np.empty((len(idx), *data.shape[1:]), dtype=data.dtype)
                out[name][sel] = data[row[pos][sel]]
        return out

    def write(self, indices: np.ndarray, **arrays: np.ndarray) -> None:
        """Keep rows for ``indices``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        self._chunks.append((idx.copy(), {k: np.asarray(v) for k, v in arrays.items()}))
        self._index = None


class MemoryStore:
    """In-memory entries by key: what a run without a feature store computes into."""

    def __init__(self) -> None:
        self._entries: dict[str, MemoryEntry] = {}

    def entry(self, key: dict[str, Any]) -> MemoryEntry:
        """The entry for ``key`` (created on first use)."""
        return self._entries.setdefault(key_digest(key), MemoryEntry())


class ReadOnlyStore:
    """A feature store that cannot be written, read through, with new rows kept in memory
    (a read-only ``FEATROB_HOME`` still serves what it holds)."""

    def __init__(self, base: FeatureStore, memory: MemoryStore | None = None) -> None:
        self.base, self.memory = base, memory if memory is not None else MemoryStore()

    def entry(self, key: dict[str, Any]) -> LayeredEntry:
        """The stored entry for ``key`` with its in-memory additions."""
        return LayeredEntry(self.base.entry(key), self.memory.entry(key))


class LayeredEntry:
    """Rows of a read-only entry (``base``) and of an in-memory one (``top``)."""

    def __init__(self, base: Entry, top: MemoryEntry) -> None:
        self.base, self.top = base, top

    def missing(self, indices: np.ndarray) -> np.ndarray:
        """Indices in neither layer, in the given order."""
        return self.top.missing(self.base.missing(indices))

    def read(
        self, indices: np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Rows from the store where it has them, else from memory."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        in_base = ~np.isin(idx, self.base.missing(idx))
        out: dict[str, np.ndarray] = {}
        for mask, layer in ((in_base, self.base), (~in_base, self.top)):
            if mask.any():
                _put(out, np.flatnonzero(mask), layer.read(idx[mask], names), len(idx))
        return out

    def write(self, indices: np.ndarray, **arrays: np.ndarray) -> None:
        """Keep new rows in memory."""
        self.top.write(indices, **arrays)


@dataclass
class CachedRows:
    """Every row asked for, in the order of the row keys.

    Attributes:
        values: ``{field: array}``; row ``i`` belongs to ``row_keys[i]``. Fields that
            ``compute`` returns but that are not stored hold zeros for rows read back.
        computed: ``[R]`` True for rows computed in this call (False: from the store).
    """

    values: dict[str, np.ndarray]
    computed: np.ndarray

    def __getitem__(self, field: str) -> np.ndarray:
        return self.values[field]

    @property
    def from_store(self) -> int:
        """Rows read from the store rather than computed."""
        return int((~self.computed).sum())


class RowCache:
    """The store-backed loop of one model on one data set (see the module docstring).

    Args:
        store: the feature store, or None to compute into memory (kept for the cache's life).
        base_key: model fingerprint and data identity (``model``, ``dataset``,
            ``data_fingerprint``, ``data_options``, ``split``) common to every key.
        amp: the run's mixed precision (recorded in keys of computations that use it).
        progress: progress bars (quiet when None).
    """

    def __init__(
        self,
        store: FeatureStore | MemoryStore | ReadOnlyStore | None,
        base_key: Mapping[str, Any],
        *,
        amp: str | None = None,
        progress: ProgressBars | None = None,
    ) -> None:
        self.store = store if store is not None else MemoryStore()
        self.base_key = dict(base_key)
        self.amp = amp
        self.progress = progress or ProgressBars(quiet=True)

    @property
    def shared(self) -> bool:
        """True when rows go to a store on disk (every rank and later runs read them)."""
        return isinstance(self.store, FeatureStore)

    def with_model(self, fingerprint: str) -> RowCache:
        """The same cache for another model on the same data (its rows keyed by its
        fingerprint)."""
        return RowCache(
            self.store,
            {**self.base_key, "model": fingerprint},
            amp=self.amp,
            progress=self.progress,
        )

    def key(
        self, kind: str, params: Mapping[str, Any] | None = None, *, precision: bool = True
    ) -> dict[str, Any]:
        """The full store key of one computation.

        Args:
            kind: what the rows are (``"layer"``, ``"collision-distances"``, ...).
            params: the device-independent parameters that determine the rows (a layer, an
                attack spec, search settings, a version number); they may override a base
                field (``split`` for a computation on another split).
            precision: the computation runs its passes under the run's ``--amp``
                (:meth:`featrob.RunContext.autocast`), so the key records it; False for
                computations always in float32.
        """
        key = {**self.base_key, "kind": kind}
        if precision:
            key["amp"] = self.amp
        key.update(params or {})
        return key

    def entry(self, key: dict[str, Any]) -> Entry:
        """The store (or memory) entry of a full key."""
        return self.store.entry(key)

    def rows(
        self,
        key: dict[str, Any],
        row_keys: np.ndarray,
        compute: Compute,
        *,
        batch_size: int | None = None,
        batches: Sequence[np.ndarray] | None = None,
        label: str = "",
        fields: Sequence[str] | None = None,
        stored: Sequence[str] | None = None,
        accept: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray] | None = None,
    ) -> CachedRows:
        """Rows of one entry for ``row_keys``, computing only what the store lacks.

        Args:
            key: the full key (:meth:`key`).
            row_keys: ``[R]`` int64 row identifiers (distinct).
            compute: ``compute(positions) -> {field: array}`` for ``row_keys[positions]``.
            batch_size: missing rows per ``compute`` call (default: all at once).
            batches: instead, the caller's batches of positions (a batch with any missing
                row is computed whole), e.g. the cells of a grid.
            label: progress-bar text.
            fields: fields to read from the store (default: every stored field).
            stored: fields of ``compute``'s result to write (default: all).
            accept: ``accept(stored_rows, positions) -> bool mask`` of stored rows still
                valid for this call (e.g. a stored partner that still matches); rejected rows
                are recomputed.
        """
        return self.rows_many(
            {"": key},
            row_keys,
            lambda pos: {"": compute(pos)},
            batch_size=batch_size,
            batches=batches,
            label=label,
            fields={"": fields} if fields is not None else None,
            stored=stored,
            accept=accept,
        )[""]

    def rows_many(
        self,
        keys: Mapping[str, dict[str, Any]],
        row_keys: np.ndarray,
        compute: Callable[[np.ndarray], Mapping[str, Mapping[str, np.ndarray]]],
        *,
        batch_size: int | None = None,
        batches: Sequence[np.ndarray] | None = None,
        label: str = "",
        fields: Mapping[str, Sequence[str]] | None = None,
        stored: Sequence[str] | None = None,
        accept: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray] | None = None,
    ) -> dict[str, CachedRows]:
        """:meth:`rows` for several entries filled by one computation (several layers from
        one forward pass): ``compute`` returns ``{name: {field: array}}`` for every name of
        ``keys``; a row missing from any entry is computed for all of them."""
        row_keys = np.asarray(row_keys, dtype=np.int64).reshape(-1)
        entries = {name: self.entry(key) for name, key in keys.items()}
        n = len(row_keys)
        values: dict[str, dict[str, np.ndarray]] = {name: {} for name in entries}
        present = np.ones(n, dtype=bool)
        for entry in entries.values():
            present &= ~np.isin(row_keys, entry.missing(row_keys))
        have = np.flatnonzero(present)
        if len(have) and accept is not None:
            first = next(iter(entries.values())).read(row_keys[have])
            have = have[np.asarray(accept(first, have), dtype=bool)]
        todo = np.setdiff1d(np.arange(n), have, assume_unique=True)
        if batches is not None:
            work = [np.asarray(b, dtype=np.int64) for b in batches]
            work = [b for b in work if np.isin(b, todo).any()]
        else:
            step = batch_size or max(len(todo), 1)
            work = [todo[i : i + step] for i in range(0, len(todo), step)]
        computed = np.zeros(n, dtype=bool)
        for b in work:
            computed[b] = True
        # Rows from the store: everything present that this call does not recompute.
        from_store = np.flatnonzero(present & ~computed)
        if len(from_store):
            for name, entry in entries.items():
                wanted = None if fields is None else fields.get(name)
                _put(values[name], from_store, entry.read(row_keys[from_store], wanted), n)
        shared = self.shared
        # With a store on disk and several ranks, each rank writes its batches and everyone
        # reads them back; otherwise the results travel back from map_batches (one process:
        # a plain loop, nothing copied).
        read_back = shared and world().size > 1 and accept is None

        def run(positions: np.ndarray) -> dict[str, dict[str, np.ndarray]] | None:
            out = {name: dict(arrays) for name, arrays in compute(positions).items()}
            if shared:
                _write(entries, row_keys[positions], out, stored)
            bar.advance(len(positions))
            return None if read_back else out

        total = int(sum(len(b) for b in work))
        bars = self.progress if total else ProgressBars(quiet=True)
        with bars.bar(total, label or "computing") as bar:
            if shared and world().size == 1 and accept is None and work:
                # another run may share this store: claim batches, skip the ones it holds
                done = _claimed(work, run, entries, row_keys, bar)
            else:
                done = map_batches(work, run)  # a collective under torchrun: all ranks call it
        for positions, out in zip(work, done, strict=True):
            if out is None:
                for name, entry in entries.items():
                    wanted = None if fields is None else fields.get(name)
                    _put(values[name], positions, entry.read(row_keys[positions], wanted), n)
                continue
            if not shared:
                _write(entries, row_keys[positions], out, stored)
            for name, arrays in out.items():
                _put(values[name], positions, arrays, n)
        return {name: CachedRows(values[name], computed) for name in entries}


def _claimed(
    work: Sequence[np.ndarray],
    run: Callable[[np.ndarray], Any],
    entries: Mapping[str, Entry],
    row_keys: np.ndarray,
    bar: Any,
) -> list[Any]:
    """``[run(b) for b in work]`` for one process among others on the same store: each batch
    is claimed with a lease (:mod:`featrob.leases`) before it is computed; a batch another
    run holds is left for later, and one that appeared in the store meanwhile is read, not
    computed (its result is None: read back by the caller)."""
    folder = Path(next(iter(entries.values())).path)  # type: ignore[attr-defined]
    folder.mkdir(parents=True, exist_ok=True)

    def stored(keys: np.ndarray) -> bool:
        return all(not len(entry.missing(keys)) for entry in entries.values())

    done: list[Any] = [None] * len(work)
    pending = list(range(len(work)))
    while pending:
        progressed = False
        for i in list(pending):
            keys = row_keys[work[i]]
            lease = Lease(folder / f"batch-{key_digest({'rows': keys.tolist()})}.lease")
            if not stored(keys):
                if not lease.acquire():
                    continue  # someone else computes it: come back later
                try:
                    if not stored(keys):  # it may have been finished while we looked
                        done[i] = run(work[i])
                finally:
                    lease.release()
            if done[i] is None:
                bar.advance(len(work[i]))
            pending.remove(i)
            progressed = True
        if pending and not progressed:
            time.sleep(POLL_S)
    return done


def _put(into: dict[str, np.ndarray], positions: np.ndarray, arrays: Mapping, n: int) -> None:
    """Scatter ``arrays`` (rows for ``positions``) into full-length arrays in ``into``."""
    for field, arr in arrays.items():
        arr = np.asarray(arr)
        if field not in into:
            into[field] = np.zeros((n, *arr.shape[1:]), dtype=arr.dtype)
        into[field][positions] = arr


def _write(
    entries: Mapping[str, Entry],
    keys: np.ndarray,
    out: Mapping[str, Mapping[str, np.ndarray]],
    stored: Sequence[str] | None,
) -> None:
    for name, arrays in out.items():
        kept = {k: v for k, v in arrays.items() if stored is None or k in stored}
        entries[name].write(keys, **kept)

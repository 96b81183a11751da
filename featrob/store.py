"""The HDF5 feature store shared by every plugin.

Features, logits, adversarial inputs and per-sample attack records are expensive; the store
keeps them so that a second run, another metric or a resumed run reads them instead of
recomputing. Layout::

    STORE/
      featrob-store.json              {"schema": 1}
      entries/ab/abcdef.../
        key.json                      what the entry holds (model, data, layer, perturbation)
        chunk-000000000017-5f2c1e0a.h5    rows for a batch of sample indices
        bad-chunk-...h5                   a chunk that failed its checksum (never read)

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

Integrity: atomic writes do not protect a chunk whose values were changed afterwards (a valid
HDF5 file edited in place), so each chunk also carries ``attrs["checksum"]``, written before
``complete``: ``"sumxor64-sha256:"`` and the hex SHA-256 of one line per array, ``indices``
(as little-endian int64) first, then the others in sorted name order:
``f"{name}\\0{dtype.str}\\0{shape}\\0{sum:016x}\\0{xor:016x}\\0"``, where ``dtype.str`` is
numpy's spelling (``<f4``), ``shape`` the sizes joined by commas (``200,10``), and ``sum`` and
``xor`` the wrapping 64-bit sum and the XOR of the array's C-contiguous bytes read as
little-endian uint64 words (the last word zero-padded). Any change to one value changes both;
the words are reduced at memory speed (about 7x faster than hashing the bytes with SHA-256,
which cost a warm run 10-20 % of its time on a 2-core CPU). It detects accidents and naive
edits, not an adversary who recomputes it (:func:`chunk_checksum`).

A :class:`StoreEntry` verifies a chunk once, the first time one of
its rows is looked up (:meth:`~StoreEntry.missing`, :meth:`~StoreEntry.read`,
:meth:`~StoreEntry.indices`), so only chunks that hold requested rows are read in full (and
the arrays read for that serve the :meth:`~StoreEntry.read` that follows); a chunk this entry
object wrote itself is trusted while its file is the one it wrote (same inode, size and
modification time). A chunk that fails gets one warning; its rows count as missing (the
caller recomputes them and writes a new chunk), other chunks holding the same rows serve them
instead, and its file is renamed to ``bad-chunk-*.h5``, which no reader looks at (kept for
inspection; delete it at will), so later runs neither warn again nor let it shadow the new
chunk. Where it cannot be renamed (a read-only store) it stays out of this entry's index and
every new process warns once. Chunks written before checksums (no ``checksum`` attribute) are
trusted as before. :data:`VERIFY_CHECKSUMS` switches verification off (the store benchmark
measures its cost that way); checksums are always written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featrob.errors import StoreError

SCHEMA_VERSION = 1
MARKER = "featrob-store.json"
_TMP_MAX_AGE_S = 24 * 3600
CHECKSUM_ATTR = "checksum"
#: Prefix of checksum values: the recipe below (a later recipe gets another prefix).
CHECKSUM_VERSION = "sumxor64-sha256:"

#: Verify each chunk's checksum before trusting its rows (see the module docstring). Leave it
#: on; the store benchmark switches it off to measure what verification costs.
VERIFY_CHECKSUMS = True
#: Verifying a chunk reads all of it; up to this many bytes of those arrays (per entry) are kept
#: for the :meth:`StoreEntry.read` that usually follows, so a chunk is not read twice. Kept only
#: until that read or the entry's next verification, so a lookup without a read holds at most
#: this much per entry.
_HANDOFF_MAX_BYTES = 64 * 2**20  # what verifying read, kept for the read() that follows


def key_digest(key: dict[str, Any]) -> str:
    """Stable hex digest of a key dict (canonical JSON, sorted keys)."""
    text = json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _words(arr: np.ndarray) -> np.ndarray:
    """An array's bytes as little-endian uint64 words (the last one zero-padded)."""
    raw = arr.reshape(-1).view(np.uint8)
    pad = (-len(raw)) % 8
    if pad:
        raw = np.concatenate([raw, np.zeros(pad, dtype=np.uint8)])
    return raw.view("<u8")


def chunk_checksum(indices: np.ndarray, arrays: Mapping[str, Any]) -> str:
    """A chunk's checksum (the recipe is in the module docstring).

    Args:
        indices: the chunk's sample indices.
        arrays: the chunk's other arrays by name: numpy arrays or h5py datasets (read one at a
            time, in sorted name order).
    """
    digest = hashlib.sha256()
    named = [("indices", np.asarray(indices, dtype="<i8"))]
    named += [(name, arrays[name]) for name in sorted(arrays)]
    for name, value in named:
        arr = np.ascontiguousarray(np.asarray(value))
        words = _words(arr)
        total = int(np.add.reduce(words, dtype=np.uint64)) if len(words) else 0
        xor = int(np.bitwise_xor.reduce(words)) if len(words) else 0
        shape = ",".join(str(n) for n in arr.shape)
        digest.update(f"{name}\0{arr.dtype.str}\0{shape}\0{total:016x}\0{xor:016x}\0".encode())
    return CHECKSUM_VERSION + digest.hexdigest()


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
    sample ``indices[i]``. A chunk's rows are trusted only once its checksum was verified (see
    the module docstring).
    """

    def __init__(self, path: Path, key: dict[str, Any]) -> None:
        self.path = path
        self.key = key
        self._seen: set[str] = set()  # chunk file names already indexed (or found bad)
        self._chunks: list[Path] = []
        self._chunk_idx: list[np.ndarray] = []  # each chunk's indices (empty once found bad)
        self._unverified: set[int] = set()  # chunks whose checksum is still to be verified
        self._written: dict[str, tuple[int, int, int]] = {}  # chunk name -> _file_id we wrote
        # Arrays of chunks the last verifying lookup read (and verified), for the next read.
        self._handoff: dict[int, dict[str, np.ndarray]] = {}
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
        new: list[int] = []
        for chunk in sorted(self.path.glob("chunk-*.h5")):
            if chunk.name in self._seen:
                continue
            self._seen.add(chunk.name)
            try:
                with h5py.File(chunk, "r") as f:
                    if f.attrs.get("schema") != SCHEMA_VERSION or not f.attrs.get("complete"):
                        raise OSError("incomplete chunk or another schema version")
                    indices = np.asarray(f["indices"][()], dtype=np.int64)
                    checked = CHECKSUM_ATTR in f.attrs  # else written before checksums
                ours = self._written.get(chunk.name) == _file_id(chunk)  # and not changed
            except (OSError, KeyError) as exc:
                warnings.warn(f"ignoring unreadable store chunk {chunk}: {exc}", stacklevel=4)
                continue
            if checked and not ours:
                self._unverified.add(len(self._chunks))
            new.append(len(self._chunks))
            self._chunks.append(chunk)
            self._chunk_idx.append(indices)
        if new:
            self._reindex(new, keep=True)

    def _reindex(self, chunks: Iterable[int], keep: bool) -> None:
        """Add the rows of ``chunks`` to the index (``keep=False``: index only theirs).

        The first chunk (in chunk order) holding an index serves it; overlapping chunks hold
        equal rows.
        """
        start = (self._idx, self._chunk_of, self._row_of) if keep else (np.empty(0, np.int64),) * 3
        idx, chunk_of, row_of = ([a] for a in start)
        for c in chunks:
            part = self._chunk_idx[c]
            idx.append(part)
            chunk_of.append(np.full(len(part), c, dtype=np.int64))
            row_of.append(np.arange(len(part), dtype=np.int64))
        idx, chunk_of, row_of = map(np.concatenate, (idx, chunk_of, row_of))
        order = np.argsort(idx, kind="stable")
        idx, chunk_of, row_of = idx[order], chunk_of[order], row_of[order]
        first = np.ones(len(idx), dtype=bool)
        first[1:] = idx[1:] != idx[:-1]
        self._idx, self._chunk_of, self._row_of = idx[first], chunk_of[first], row_of[first]

    def _verify(self, chunk_of: np.ndarray) -> bool:
        """Verify the chunks among ``chunk_of`` not verified yet; drop those that fail.

        Returns:
            True when a chunk failed (the index changed: look the rows up again).
        """
        if not self._unverified or not VERIFY_CHECKSUMS:
            return False
        todo = sorted(self._unverified.intersection(np.unique(chunk_of).tolist()))
        if todo:
            self._handoff = {}  # what an earlier lookup left unread
        failed = False
        for c in todo:
            failed |= not self._verify_chunk(c)  # a loop, not a comprehension: stacklevel
        if failed:
            self._reindex(range(len(self._chunks)), keep=False)
        return failed

    def _verify_chunk(self, c: int) -> bool:
        """Check chunk ``c`` against its checksum; one that fails no longer serves rows, and
        its file is renamed to ``bad-chunk-*.h5`` (best effort)."""
        self._unverified.discard(c)
        path = self._chunks[c]
        try:
            file_id = _file_id(path)
            expected, arrays = _read_chunk(path)
            if expected is None:  # replaced by a chunk written before checksums
                return True
            # The indices this entry serves the rows by, with the arrays read now.
            indices = self._chunk_idx[c]
            if chunk_checksum(indices, arrays) == expected:
                arrays["indices"] = indices
                held = sum(a.nbytes for kept in self._handoff.values() for a in kept.values())
                if held + sum(a.nbytes for a in arrays.values()) <= _HANDOFF_MAX_BYTES:
                    self._handoff[c] = arrays
                return True
        except (OSError, KeyError, TypeError, ValueError) as exc:
            self._chunk_idx[c] = self._chunk_idx[c][:0]
            warnings.warn(f"ignoring unreadable store chunk {path}: {exc}", stacklevel=5)
            return False
        self._chunk_idx[c] = self._chunk_idx[c][:0]
        warnings.warn(  # stacklevel: the caller of missing / read / indices
            f"store chunk {path} failed its checksum (its values were changed); "
            "its rows are recomputed",
            stacklevel=5,
        )
        try:  # set it aside, unless a writer has replaced it since
            if _file_id(path) == file_id:
                os.replace(path, path.with_name(f"bad-{path.name}"))
        except OSError:
            pass  # a read-only store: the chunk just stays out of this entry's index
        return False

    def _lookup(self, idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Positions of ``idx`` (None: every indexed one) in the index and a mask of those
        present, once every chunk that serves one of them is verified."""
        self._scan()
        while True:
            pos, present = self._locate(self._idx if idx is None else idx)
            if not self._verify(self._chunk_of[pos[present]]):
                return pos, present

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
        """Sorted sample indices that have rows (verifies every chunk that serves one)."""
        self._lookup(None)
        return self._idx.copy()

    def missing(self, indices: Iterable[int] | np.ndarray) -> np.ndarray:
        """The subset of ``indices`` without trusted rows, in the given order."""
        idx = np.asarray(
            list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64
        ).reshape(-1)
        _, present = self._lookup(idx)
        return idx[~present]

    def read(
        self, indices: Iterable[int] | np.ndarray, names: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Arrays for ``indices`` (rows in that order).

        Raises:
            KeyError: some indices have no trusted rows (check :meth:`missing` first).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        pos, present = self._lookup(idx)
        if not present.all():
            absent = idx[~present]
            raise KeyError(
                f"{len(absent)} sample indices not in store entry (first: {absent[:5].tolist()})"
            )
        chunk_of, row_of = self._chunk_of[pos], self._row_of[pos]
        wanted = list(names) if names is not None else None
        handoff, self._handoff = self._handoff, {}
        out: dict[str, np.ndarray] = {}
        for c in np.unique(chunk_of).tolist():
            sel = np.flatnonzero(chunk_of == c)
            for name, data in self._arrays(c, wanted, handoff).items():
                if name not in out:
                    out[name] = np.empty((len(idx), *data.shape[1:]), dtype=data.dtype)
                out[name][sel] = data[row_of[sel]]
        return out

    def _arrays(
        self, c: int, names: list[str] | None, handoff: dict[int, dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """Whole arrays ``names`` (None: all but ``indices``) of chunk ``c``, from ``handoff``
        (what verifying it read) when there."""
        if c in handoff:
            arrays = handoff[c]
            names = names if names is not None else [k for k in arrays if k != "indices"]
            return {name: arrays[name] for name in names}
        with h5py.File(self._chunks[c], "r") as f:
            names = names if names is not None else [k for k in f if k != "indices"]
            return {name: _read_array(f, name) for name in names}

    # ------------------------------------------------------------------ writing
    def write(self, indices: np.ndarray, **arrays: np.ndarray) -> Path:
        """Write rows for ``indices`` as one chunk, atomically, with its checksum.

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
                stored = {}
                for name, arr in arrays.items():
                    data = np.ascontiguousarray(arr)
                    dataset = f.create_dataset(name, data=data)
                    # hash what a reader gets back (h5py keeps numpy dtypes; be sure anyway)
                    stored[name] = data if dataset.dtype == data.dtype else dataset
                f.attrs[CHECKSUM_ATTR] = chunk_checksum(idx, stored)
                f.attrs["complete"] = True
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        self._written[final.name] = _file_id(final)
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


def _read_array(f: h5py.File, name: str) -> np.ndarray:
    """All of dataset ``name`` of ``f``: what ``f[name][()]`` returns, with a fraction of
    its overhead (most of the cost of reading a small chunk)."""
    return _read_dataset(h5py.h5d.open(f.id, name.encode()))


def _read_dataset(dataset: h5py.h5d.DatasetID) -> np.ndarray:
    """All of a dataset, through h5py's low-level API."""
    out = np.empty(dataset.shape, dtype=dataset.dtype)
    if out.size:
        dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def _read_chunk(path: Path) -> tuple[str | None, dict[str, np.ndarray]]:
    """A chunk's checksum (None: written before checksums) and every array but ``indices``.

    Through h5py's low-level calls: verifying is then little more than hashing (the high-level
    API's overhead would be most of the cost of a small chunk).
    """
    file = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY)
    try:
        if not h5py.h5a.exists(file, CHECKSUM_ATTR.encode()):
            return None, {}
        attr = h5py.h5a.open(file, CHECKSUM_ATTR.encode())
        checksum = np.empty(attr.shape, dtype=attr.dtype)
        attr.read(checksum)
        root = h5py.h5g.open(file, b"/")
        arrays = {}
        for name in root:
            if name != b"indices":
                arrays[name.decode()] = _read_dataset(h5py.h5d.open(root, name))
        value = checksum[()]
        return value.decode() if isinstance(value, bytes) else str(value), arrays
    finally:
        file.close()


def _file_id(path: Path) -> tuple[int, int, int]:
    """What tells a file from one that replaced it under the same name."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns

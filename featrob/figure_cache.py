"""Rendered figures kept under ``$FEATROB_HOME/figures``, so a warm run draws none.

Drawing a report's figures with matplotlib was most of a warm default run (46 figures, about
5 s of 9.5 s). Each drawn figure is kept under a digest of everything that determines its
bytes: the figure's content (kind, series, title, labels, options) and the renderer's stamp
(format, size, resolution, the versions of matplotlib, Pillow and numpy, the drawing code,
the user's matplotlibrc; :func:`featrob.builtins.figures.renderer_stamp`). A figure drawn
before is read back (matplotlib is not even imported); a changed figure has a new digest and
is drawn anew. Warnings raised while drawing are kept with the figure and raised again when
it is read back, so a cached figure changes nothing a report or results.json holds.

A cache folder that cannot be written costs only the reuse: figures are drawn every time and
the run says so in one warning line, never a failure. The folder is kept under
:data:`MAX_BYTES`, least recently used first.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from featrob.config import featrob_home
from featrob.paths import folder_problem
from featrob.results import Figure
from featrob.run_warnings import warn

#: The cache folder's size limit; past it the least recently used figures are removed
#: (down to three quarters of it) before the next figure is stored.
MAX_BYTES = 64 * 2**20

PNG_START = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"


def figure_digest(fig: Figure, stamp: Mapping[str, Any]) -> str:
    """A hex digest of the figure's content and the renderer's ``stamp``.

    The content is taken as results.json holds it (numpy numbers and arrays as plain ones,
    NaN as null: drawn alike), so a report drawn again from a run folder (``featrob report``)
    finds the figures the run drew.

    Raises:
        TypeError, ValueError: content that is not plain data (such a figure is drawn, not
            cached).
    """
    payload = {
        "kind": fig.kind,
        "series": fig.series,
        "title": fig.title,
        "xlabel": fig.xlabel,
        "ylabel": fig.ylabel,
        "options": fig.options,
        "renderer": dict(stamp),
    }
    text = json.dumps(_plain(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as JSON data, NaN as None (what results.json keeps); TypeError for anything
    that is not data."""
    if isinstance(value, str | bool | int | None):
        return value
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, dict):
        return {_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return _plain(value.tolist())
    raise TypeError(f"{type(value).__name__} is not figure data")


def _key(key: Any) -> str:
    if isinstance(key, str | int) and not isinstance(key, bool):
        return str(key)
    raise TypeError(f"{type(key).__name__} is not a figure data key")


class FigureCache:
    """Rendered figures in the folder ``root``, keyed by :func:`figure_digest`.

    Attributes:
        root: the folder (created on the first figure stored).
        hits: figures read back so far; drawn: figures drawn so far.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.drawn = 0
        self._pruned = False

    def path(self, digest: str, suffix: str = ".png") -> Path:
        """The file of the figure with this digest."""
        return self.root / f"{digest}{suffix}"

    def get_or_draw(
        self, fig: Figure, draw: Callable[[Figure], bytes], stamp: Mapping[str, Any]
    ) -> bytes:
        """The figure's bytes: read back when drawn before with the same ``stamp``, else
        ``draw(fig)`` (kept for next time). An exception from ``draw`` propagates and nothing
        is kept."""
        try:
            digest = figure_digest(fig, stamp)
        except (TypeError, ValueError):
            return draw(fig)
        found = self._read(digest)
        if found is not None:
            data, raised = found
            self.hits += 1
            _raise_again(raised)
            return data
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = draw(fig)
        self.drawn += 1
        raised = [_recorded(w) for w in caught]
        _raise_again(raised)
        self._write(digest, data, raised)
        return data

    def _read(self, digest: str) -> tuple[bytes, list[dict[str, Any]]] | None:
        path = self.path(digest)
        try:
            data = path.read_bytes()
            if not (data.startswith(PNG_START) and data.endswith(PNG_END)):
                return None  # a damaged file: drawn again and replaced
            try:
                raised = json.loads(self.path(digest, ".warnings.json").read_text())
            except FileNotFoundError:
                raised = []
        except (OSError, ValueError):
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept longest
        return data, raised if isinstance(raised, list) else []

    def _write(self, digest: str, data: bytes, raised: list[dict[str, Any]]) -> None:
        problem = folder_problem(self.root)
        if problem is None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                if not self._pruned:
                    self._pruned = True
                    self.prune()
                if raised:  # before the figure: a figure found has its warnings written
                    _atomic_write(self.path(digest, ".warnings.json"), json.dumps(raised).encode())
                _atomic_write(self.path(digest), data)
                return
            except OSError as exc:
                problem = f"cannot write to {self.root}: {exc.strerror or type(exc).__name__}"
        # the same line for every figure: one line per run
        warn(f"report figures are drawn anew each run, not cached: {problem} (set FEATROB_HOME)")

    def prune(self, max_bytes: int = MAX_BYTES) -> None:
        """Remove the least recently used figures while the folder holds over ``max_bytes``
        (down to three quarters of it)."""
        try:
            files = []
            for entry in os.scandir(self.root):
                if entry.is_file() and entry.name.endswith(".png"):
                    stat = entry.stat()
                    files.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        except OSError:
            return
        total = sum(size for _, size, _ in files)
        if total <= max_bytes:
            return
        for _, size, path in sorted(files):
            if total <= max_bytes * 3 // 4:
                break
            for victim in (path, path.with_name(path.stem + ".warnings.json")):
                with contextlib.suppress(OSError):
                    victim.unlink()
            total -= size


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _recorded(w: warnings.WarningMessage) -> dict[str, Any]:
    category = w.category
    return {
        "category": f"{category.__module__}:{category.__qualname__}",
        "message": str(w.message),
        "filename": str(w.filename),
        "lineno": int(w.lineno),
    }


def _raise_again(raised: list[dict[str, Any]]) -> None:
    """Raise recorded warnings again, from where they were first raised (so a run's
    warning line names the library, as it would have)."""
    for item in raised:
        try:
            warnings.warn_explicit(
                str(item["message"]),
                _category(str(item.get("category", ""))),
                str(item.get("filename", "")),
                int(item.get("lineno", 0)),
            )
        except (KeyError, TypeError, ValueError):
            continue


def _category(name: str) -> type[Warning]:
    """The warning class named ``module:qualname`` when it is at hand without importing
    anything, else UserWarning."""
    module, _, qualname = name.partition(":")
    source = builtins if module == "builtins" else sys.modules.get(module)
    found: Any = source
    for part in qualname.split(".") if source is not None else []:
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, Warning):
        return found
    return UserWarning


_CACHES: dict[Path, FigureCache] = {}


def default_cache() -> FigureCache:
    """The cache under the current ``$FEATROB_HOME`` (``figures``), one per folder."""
    root = featrob_home() / "figures"
    if root not in _CACHES:
        _CACHES[root] = FigureCache(root)
    return _CACHES[root]

"""Can a run write where it will write? Asked before any work, answered in one line.

A run writes three places: its output folder (``--out``), the feature store (``--store``,
default ``$FEATROB_HOME/store``) and the model cache (``$FEATROB_HOME/models``). An output
folder that cannot be written is an error before anything is computed; a store or a model
cache that cannot be written only costs reuse, so the run goes on (the store read-only, the
new rows in memory; the trained model uncached) and says so once.

Permissions are asked with :func:`os.access` (root passes every check; tests mock it) and
any later :class:`OSError` on write is still handled where the write happens.
"""

from __future__ import annotations

import os
from pathlib import Path

from featrob.errors import ConfigError


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def folder_problem(path: Path) -> str | None:
    """Why files cannot be created in the folder ``path`` (created if missing), or None."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    existing = nearest_existing(path)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path.absolute() else f" ({existing} is not writable)"
        return f"{path} is not writable{where}"
    return None


def check_output_folder(out: Path) -> None:
    """Raise one ConfigError line when the results folder cannot be written."""
    problem = folder_problem(out)
    if problem is not None:
        raise ConfigError(f"cannot write results to {out}: {problem}; give another --out")


def store_writable(root: Path) -> bool:
    """True when the feature store at ``root`` can take new entries and chunks."""
    root = Path(root).expanduser()
    if folder_problem(root) is not None:
        return False
    entries = root / "entries"
    if entries.is_dir():
        if not os.access(entries, os.W_OK | os.X_OK):
            return False
        # a warm store's entry folders must take new chunks too
        return all(os.access(d, os.W_OK | os.X_OK) for d in entries.iterdir() if d.is_dir())
    return True

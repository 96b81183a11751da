"""Models trained once and kept: the cache behind ``featrob run``'s model and plugins' heads.

Training is the most expensive thing a run can do, so whatever a run trains (the run's
model, a fine-tuned head, a comparison model) is saved under ``$FEATROB_HOME/models`` under
a digest of everything that determines it, and loaded from there next time. Under
``torchrun`` rank 0 trains and writes while the other ranks wait, then load what it wrote.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from featrob.config import featrob_home
from featrob.distributed import main_first
from featrob.leases import exclusive
from featrob.paths import folder_problem
from featrob.run_warnings import warn
from featrob.store import key_digest

T = TypeVar("T")


def model_cache_path(key: Mapping[str, Any], prefix: str = "") -> Path:
    """``$FEATROB_HOME/models/[PREFIX-]DIGEST.pt`` for a key dict."""
    name = key_digest(dict(key))
    return featrob_home() / "models" / (f"{prefix}-{name}.pt" if prefix else f"{name}.pt")


def cached_training(
    path: Path,
    *,
    load: Callable[[Path], T],
    train: Callable[[], T],
    save: Callable[[T, Path], object],
) -> tuple[T, bool]:
    """``load(path)`` when ``path`` exists, else ``train()`` then ``save(result, path)``.

    Rank 0 of a distributed run goes first; the others then find the file and load it. A
    cache folder that cannot be written is one warning (before training) and the result is
    returned uncached, never lost.

    Returns:
        ``(result, loaded)``: what ``load`` or ``train`` returned, and whether it was loaded.
    """
    with main_first():  # under torchrun rank 0 trains, the others load its cache
        if path.exists():
            return load(path), True
        problem = folder_problem(path.parent)
        if problem is not None:  # said before training, so nobody waits for a surprise
            warn(f"{path.name} will be trained but not cached: {problem} (set FEATROB_HOME)")
            return train(), False
        path.parent.mkdir(parents=True, exist_ok=True)
        # Another run training the same model holds the lease: wait, then load its result.
        with exclusive(path.with_name(path.name + ".lease")):
            if path.exists():
                return load(path), True
            result = train()
            try:
                save(result, path)
            except OSError as exc:  # the result stands; only its reuse is lost
                warn(f"could not cache {path}: {exc.strerror or exc} (set FEATROB_HOME)")
        return result, False


def cached_module(
    path: Path, module: torch.nn.Module, train: Callable[[], object], device: torch.device
) -> bool:
    """Train ``module`` (in place) once and keep its ``state_dict`` at ``path``; later calls
    load it into ``module``. Returns True when the weights were loaded."""

    def load(p: Path) -> None:
        module.load_state_dict(torch.load(p, map_location=device, weights_only=True))

    def save(_: object, p: Path) -> None:
        tmp = p.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}.pt")
        torch.save(module.state_dict(), tmp)
        os.replace(tmp, p)

    _, loaded = cached_training(path, load=load, train=lambda: train(), save=save)
    return loaded

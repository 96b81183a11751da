"""Collision distances of every cross-class pair at one layer, batched and kept in the store.

Rows of the store entry are pairs, keyed by ``index(x) * stride + index(x')`` (source
indices of the two samples), and hold, per projection, the collision distance, the relaxed
objective, the residual, the iteration count and whether the search converged. A batch of
pairs is written as soon as it is done, so a killed run resumes from the finished batches
and a rerun with another eps grid reads everything back.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from featrob.distributed import map_batches, world
from featrob.seeding import derive_seed
from featrob_collision.search import SearchConfig, collision_search

if TYPE_CHECKING:
    from featrob.models.base import FeatrobModel
    from featrob.progress import Reporter
    from featrob.store import StoreEntry

FIELDS = ("distance", "objective", "residual", "iterations", "converged")


@dataclass
class LayerDistances:
    """Per pair and projection ``[P, N]`` results at one layer.

    Attributes:
        layer: layer name (``"input"`` for the identity extractor).
        dim: its feature dimension ``n_j``.
        values: ``{field: [P, N]}`` for :data:`FIELDS`.
        computed: pairs searched in this run (the rest came from the store).
        seconds: time spent searching.
    """

    layer: str
    dim: int
    values: dict[str, np.ndarray]
    computed: int
    seconds: float


def extractor(model: FeatrobModel, layer: str):
    """``x -> f_j(x)`` flattened (the identity for ``"input"``)."""
    if layer == "input":
        return lambda z: z.flatten(1)
    return lambda z: model.forward_to(z, layer).flatten(1)


def projections(
    seed: int, layer: str, count: int, m: int, dim: int, device: torch.device
) -> Tensor:
    """``[count, m, dim]`` i.i.d. standard Gaussian matrices, seeded by run seed and layer."""
    gen = torch.Generator().manual_seed(derive_seed(seed, f"collision.projection.{layer}"))
    return torch.randn(count, m, dim, generator=gen).to(device)


def layer_distances(
    model: FeatrobModel,
    layer: str,
    xa: Tensor,
    xb: Tensor,
    pair_keys: np.ndarray,
    *,
    m: int | None,
    count: int,
    seed: int,
    config: SearchConfig,
    batch_searches: int,
    device: torch.device,
    entry: StoreEntry | None,
    progress: Reporter,
) -> LayerDistances:
    """Collision distances of all ``len(xa) x len(xb)`` pairs (row-major) at ``layer``.

    Args:
        m: projection dimension, or None for no projection (``A = I``, one "projection").
        count: projections N (ignored without projection).
        pair_keys: ``[P]`` store keys of the pairs, row-major like the pairs.
        batch_searches: searches (pairs x projections) per batch.
        entry: the store entry for this layer and settings, or None.
    """
    f = extractor(model, layer)
    with torch.no_grad():
        dim = int(f(xa[:1].to(device)).shape[1])
    n_proj = 1 if m is None else count
    p_total = len(xa) * len(xb)
    values = {k: np.zeros((p_total, n_proj)) for k in FIELDS}
    todo = np.arange(p_total)
    if entry is not None:
        absent = np.isin(pair_keys, entry.missing(pair_keys))
        have = np.flatnonzero(~absent)
        if len(have):
            stored = entry.read(pair_keys[have])
            for k in FIELDS:
                values[k][have] = np.asarray(stored[k]).reshape(len(have), n_proj)
        todo = np.flatnonzero(absent)
    start = time.perf_counter()
    if len(todo) and layer == "input" and m is None:
        # A = I on the input: the collision is the midpoint, d = ||x - x'|| / 2 exactly.
        ia, ib = np.divmod(todo, len(xb))
        diff = (xa[ia] - xb[ib]).flatten(1).double().norm(dim=1).numpy() / 2
        values["distance"][todo, 0] = diff
        values["objective"][todo, 0] = 2 * diff**2
        values["converged"][todo, 0] = 1
        if entry is not None and world().main:  # every rank computes it; one writes it
            entry.write(pair_keys[todo], **{k: values[k][todo] for k in FIELDS})
        todo = todo[:0]
    mats = None if m is None else projections(seed, layer, n_proj, m, dim, device)
    per_batch = max(1, batch_searches // n_proj)
    batches = [todo[i : i + per_batch] for i in range(0, len(todo), per_batch)]

    def search(chunk: np.ndarray) -> dict[str, np.ndarray]:
        ia, ib = np.divmod(chunk, len(xb))
        x = xa[ia].to(device).repeat(n_proj, *([1] * (xa.dim() - 1)))
        xp = xb[ib].to(device).repeat(n_proj, *([1] * (xb.dim() - 1)))
        which = torch.arange(n_proj, device=device).repeat_interleave(len(chunk))
        res = collision_search(f, x, xp, mats, which if mats is not None else None, config)
        rows = {
            k: getattr(res, k).detach().double().cpu().numpy().reshape(n_proj, len(chunk)).T
            for k in FIELDS
        }
        if entry is not None:
            entry.write(pair_keys[chunk], **rows)
        bar.advance(1)
        return rows

    # Pair blocks are shared among the ranks of a distributed run (featrob.distributed).
    with progress.bar(len(batches), f"collision search {layer}") as bar:
        done = map_batches(batches, search)
    for chunk, rows in zip(batches, done, strict=True):
        for k in FIELDS:
            values[k][chunk] = rows[k]
    return LayerDistances(layer, dim, values, len(todo), time.perf_counter() - start)


def entry_key(
    base: dict[str, Any], layer: str, m: int | None, count: int, config: SearchConfig
) -> dict[str, Any]:
    """Store key of one layer's distances (pairs are rows, so the pair set is not in it)."""
    return {
        **base,
        "kind": "collision-distances",
        "version": 1,
        "layer": layer,
        "projection": None if m is None else {"m": m, "count": count},
        "search": dataclasses.asdict(config),
    }

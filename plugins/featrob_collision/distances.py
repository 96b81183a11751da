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

from featrob import derive_seed
from featrob_collision.search import SearchConfig, collision_search

if TYPE_CHECKING:
    from featrob import FeatrobModel, RunContext

FIELDS = ("distance", "objective", "residual", "iterations", "converged")
#: Most pairs in one stored block (searches are independent per pair: blocks change nothing
#: but how much a killed run loses).
BLOCK_PAIRS = 32


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
    ctx: RunContext,
    layer: str,
    xa: Tensor,
    xb: Tensor,
    pair_keys: np.ndarray,
    *,
    m: int | None,
    count: int,
    config: SearchConfig,
    batch_searches: int,
    params: dict[str, Any],
) -> LayerDistances:
    """Collision distances of all ``len(xa) x len(xb)`` pairs (row-major) at ``layer``.

    Args:
        ctx: the run (model, device, seed, store).
        m: projection dimension, or None for no projection (``A = I``, one "projection").
        count: projections N (ignored without projection).
        pair_keys: ``[P]`` store keys of the pairs, row-major like the pairs.
        batch_searches: searches (pairs x projections) per batch.
        params: the store key's parameters besides the layer's (:func:`entry_params`).
    """
    model, device = ctx.model, ctx.device
    f = extractor(model, layer)
    with torch.no_grad():
        dim = int(f(xa[:1].to(device)).shape[1])
    n_proj = 1 if m is None else count
    mats = None if m is None else projections(ctx.config.seed, layer, n_proj, m, dim, device)

    def closed_form(chunk: np.ndarray) -> dict[str, np.ndarray]:
        # A = I on the input: the collision is the midpoint, d = ||x - x'|| / 2 exactly.
        ia, ib = np.divmod(chunk, len(xb))
        diff = (xa[ia] - xb[ib]).flatten(1).double().norm(dim=1).numpy() / 2
        rows = {k: np.zeros((len(chunk), 1)) for k in FIELDS}
        rows["distance"][:, 0], rows["objective"][:, 0] = diff, 2 * diff**2
        rows["converged"][:, 0] = 1
        return rows

    def search(chunk: np.ndarray) -> dict[str, np.ndarray]:
        ia, ib = np.divmod(chunk, len(xb))
        x = xa[ia].to(device).repeat(n_proj, *([1] * (xa.dim() - 1)))
        xp = xb[ib].to(device).repeat(n_proj, *([1] * (xb.dim() - 1)))
        which = torch.arange(n_proj, device=device).repeat_interleave(len(chunk))
        res = collision_search(f, x, xp, mats, which if mats is not None else None, config)
        return {
            k: getattr(res, k).detach().double().cpu().numpy().reshape(n_proj, len(chunk)).T
            for k in FIELDS
        }

    exact = layer == "input" and m is None
    start = time.perf_counter()
    rows = ctx.cached_rows(
        "collision-distances",
        entry_params(params, layer, m, count, config),
        pair_keys,
        closed_form if exact else search,
        # blocks of at most BLOCK_PAIRS pairs: each is stored as it finishes, so a killed
        # search resumes at the next block, not at the start of the layer
        batch_size=None if exact else max(1, min(batch_searches // n_proj, BLOCK_PAIRS)),
        label=f"collision search {layer}",
        precision=False,  # the search runs in float32 whatever --amp says
    )
    values = {
        k: np.asarray(rows[k], dtype=np.float64).reshape(len(pair_keys), n_proj) for k in FIELDS
    }
    searched = 0 if exact else int(rows.computed.sum())
    return LayerDistances(layer, dim, values, searched, time.perf_counter() - start)


def entry_params(
    params: dict[str, Any], layer: str, m: int | None, count: int, config: SearchConfig
) -> dict[str, Any]:
    """Store-key parameters of one layer's distances (pairs are rows, so the pair set is not
    in it): ``params`` (the split and seed) and the layer, projection and search settings."""
    return {
        **params,
        "version": 1,
        "layer": layer,
        "projection": None if m is None else {"m": m, "count": count},
        "search": dataclasses.asdict(config),
    }

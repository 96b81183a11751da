"""Per (sample, feature) extremes at one eps, chunked to a memory budget and store-backed.

The work is a grid of (sample block, feature block) cells; each cell is one batched PGD run
of ``2 x features x samples`` replicas (:func:`feature_extremes`). A cell's rows go to the
feature store as soon as it finishes, keyed by ``sample_index * D + feature``, so a killed
run resumes at the next cell, and a rerun with other features, samples or reports reads what
it has and computes only the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featrob import Attack
from featrob_sensitivity.extremes import Forward, feature_extremes

FIELDS = ("clean", "high", "low")


@dataclass
class FeatureExtremes:
    """Extremes of the selected features of one layer at one eps.

    Attributes:
        eps: the Linf radius.
        features: ``[K]`` feature indices.
        clean, high, low: ``[N, K]`` ``f_j(x)`` and the largest / smallest ``f_j`` found.
        computed_cells: (sample, feature) cells computed in this call (0: all from store).
        seconds: wall time of this call.
    """

    eps: float
    features: np.ndarray
    clean: np.ndarray
    high: np.ndarray
    low: np.ndarray
    computed_cells: int
    seconds: float

    @property
    def change(self) -> np.ndarray:
        """``[N, K]`` the larger of the two changes, ``|f_j(x + delta) - f_j(x)|``."""
        return np.maximum(np.abs(self.high - self.clean), np.abs(self.low - self.clean))

    @property
    def sensitivity(self) -> np.ndarray:
        """``[K]`` Definition 2: the mean over samples of :attr:`change` (raw units)."""
        return self.change.mean(axis=0)


def block_sizes(samples: int, features: int, batch_inputs: int) -> tuple[int, int]:
    """(sample block, feature block) with ``2 x fb x sb <= batch_inputs`` (at least 1 x 1)."""
    sb = max(1, min(samples, batch_inputs // 2))
    fb = max(1, min(features, batch_inputs // (2 * sb)))
    return sb, fb


def measure_extremes(
    forward: Forward,
    x: Tensor,
    seeds: Tensor,
    sample_index: np.ndarray,
    features: np.ndarray,
    attack: Attack,
    *,
    dim: int,
    batch_inputs: int,
    cached_rows: Callable[..., Any],
    label: str,
) -> FeatureExtremes:
    """Extremes of ``features`` for every sample of ``x`` (on ``x``'s device).

    Args:
        forward: the layer's extractor (``[B, *shape] -> [B, dim]``).
        x: ``[N, *shape]`` inputs; ``seeds`` ``[N]`` their per-sample seeds.
        sample_index: ``[N]`` the samples' data set indices (store row keys).
        features: ``[K]`` feature indices in ``[0, dim)``.
        attack: the PGD attack at this eps.
        batch_inputs: most replicas in one forward/backward pass (the memory budget).
        cached_rows: ``cached_rows(row_keys, compute, batches=..., label=...)``, the run's
            store-backed loop bound to this layer's and attack's key
            (``functools.partial(ctx.cached_rows, "feature-extremes", params)``).
        label: progress-bar text.
    """
    start = time.perf_counter()
    n, k = len(x), len(features)
    keys = sample_index.astype(np.int64)[:, None] * dim + features.astype(np.int64)[None, :]
    sb, fb = block_sizes(n, k, batch_inputs)
    # Cells of the (sample, feature) grid, as positions into the flattened keys.
    grid = np.arange(n * k).reshape(n, k)
    cells = [grid[s : s + sb, f : f + fb].ravel() for f in range(0, k, fb) for s in range(0, n, sb)]

    def run_cell(positions: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.unique(positions // k)
        cols = np.unique(positions % k)
        feats = torch.as_tensor(features[cols], dtype=torch.long)
        row_sel = torch.as_tensor(rows)
        out = feature_extremes(forward, x[row_sel], feats, attack, seeds[row_sel])
        return {
            name: arr.detach().double().cpu().numpy().ravel()
            for name, arr in zip(FIELDS, out, strict=True)
        }

    found = cached_rows(keys.ravel(), run_cell, batches=cells, label=label)
    return FeatureExtremes(
        eps=attack.eps,
        features=np.asarray(features),
        computed_cells=int(found.computed.sum()),
        seconds=time.perf_counter() - start,
        **{name: np.asarray(found[name], dtype=np.float64).reshape(n, k) for name in FIELDS},
    )


def entry_params(layer: str, attack: Attack) -> dict[str, Any]:
    """Store-key parameters of one layer's extremes at one attack (eps in its spec)."""
    return {"version": 1, "layer": layer, "attack": attack.spec()}

"""Per (sample, feature) extremes at one eps, chunked to a memory budget and store-backed.

The work is a grid of (sample block, feature block) cells; each cell is one batched PGD run
of ``2 x features x samples`` replicas (:func:`feature_extremes`). A cell's rows go to the
feature store as soon as it finishes, keyed by ``sample_index * D + feature``, so a killed
run resumes at the next cell, and a rerun with other features, samples or reports reads what
it has and computes only the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featrob.attacks.base import Attack
from featrob.distributed import map_batches
from featrob.progress import Reporter
from featrob.store import StoreEntry
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
    entry: StoreEntry | None,
    progress: Reporter,
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
        entry: store entry of this layer, eps and attack, or None.
        label: progress-bar text.
    """
    start = time.perf_counter()
    n, k = len(x), len(features)
    keys = sample_index.astype(np.int64)[:, None] * dim + features.astype(np.int64)[None, :]
    values = {name: np.zeros((n, k)) for name in FIELDS}
    sb, fb = block_sizes(n, k, batch_inputs)
    cells = [(s, f) for f in range(0, k, fb) for s in range(0, n, sb)]
    if entry is not None:
        cells = [
            (s, f) for s, f in cells if len(entry.missing(keys[s : s + sb, f : f + fb].ravel()))
        ]

    def run_cell(cell: tuple[int, int]) -> dict[str, np.ndarray]:
        rows, cols = slice(cell[0], cell[0] + sb), slice(cell[1], cell[1] + fb)
        feats = torch.as_tensor(features[cols], dtype=torch.long)
        out = feature_extremes(forward, x[rows], feats, attack, seeds[rows])
        arrays = (arr.detach().double().cpu().numpy() for arr in out)
        result = dict(zip(FIELDS, arrays, strict=True))
        if entry is not None:
            entry.write(keys[rows, cols].ravel(), **{k: v.ravel() for k, v in result.items()})
        bar.advance(1)
        return result

    # Cells are shared among the ranks of a distributed run (featrob.distributed).
    with progress.bar(len(cells), label) as bar:
        done = map_batches(cells, run_cell)
    computed = 0
    for (s, f), result in zip(cells, done, strict=True):
        for name in FIELDS:
            values[name][s : s + sb, f : f + fb] = result[name]
        computed += result["clean"].size
    if entry is not None and computed < n * k:
        stored = entry.read(keys.ravel(), FIELDS)
        values = {name: np.asarray(stored[name]).reshape(n, k) for name in FIELDS}
    return FeatureExtremes(
        eps=attack.eps,
        features=np.asarray(features),
        computed_cells=computed,
        seconds=time.perf_counter() - start,
        **values,
    )


def entry_key(base: dict[str, Any], layer: str, attack: Attack, amp: str | None) -> dict[str, Any]:
    """Store key of one layer's extremes at one attack (eps included in its spec)."""
    return {
        **base,
        "kind": "feature-extremes",
        "version": 1,
        "layer": layer,
        "attack": attack.spec(),
        "amp": amp,
    }

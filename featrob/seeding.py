"""Per-sample random numbers that do not depend on batching or device.

A sample's random start must not change with the batch it falls in (robust accuracy would
then depend on the batch size) nor with the device. Each sample gets a 64-bit seed from
``(run seed, sample index)``; random numbers are a counter-based hash (SplitMix64) of
``(sample seed, stream, element index)``, computed vectorised in NumPy.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def derive_seed(seed: int, *names: object) -> int:
    """A 63-bit seed for a named purpose (``derive_seed(0, "metric", "scale")``)."""
    text = "/".join([str(seed), *map(str, names)]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def sample_seeds(seed: int, indices: Tensor | np.ndarray) -> Tensor:
    """One int64 seed per sample, from the run seed and the samples' source indices."""
    idx = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64).astype(np.uint64)
    base = np.uint64(derive_seed(seed, "sample"))
    with np.errstate(over="ignore"):
        mixed = _splitmix64(_splitmix64(idx ^ base))
    return torch.from_numpy((mixed >> np.uint64(1)).astype(np.int64))


def uniform(seeds: Tensor, shape: tuple[int, ...], stream: int = 0) -> Tensor:
    """Uniform [0, 1) floats of shape ``[len(seeds), *shape]``; row i depends only on seeds[i].

    Args:
        seeds: int64 per-sample seeds (from :func:`sample_seeds`).
        shape: shape of one sample's draw.
        stream: independent streams for the same sample (restarts, steps).
    """
    s = np.asarray(seeds.cpu(), dtype=np.int64).astype(np.uint64)
    n = int(np.prod(shape)) if shape else 1
    with np.errstate(over="ignore"):
        key = _splitmix64(s ^ _splitmix64(np.uint64(stream) + np.uint64(0x5DEECE66D)))
        counters = np.arange(n, dtype=np.uint64) * _GOLDEN
        bits = _splitmix64(key[:, None] ^ counters[None, :])
    # 53 random bits -> double in [0, 1), then float32 (strictly below 1 after rounding down)
    values = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    below_one = float(np.nextafter(np.float32(1), np.float32(0)))
    out = torch.from_numpy(values.astype(np.float32)).clamp_(max=below_one)
    return out.reshape(len(s), *shape)


def normal(seeds: Tensor, shape: tuple[int, ...], stream: int = 0) -> Tensor:
    """Standard normal floats (Box-Muller on two uniform streams), row i from seeds[i]."""
    u1 = uniform(seeds, shape, stream=2 * stream + 1).double().clamp_(min=1e-12)
    u2 = uniform(seeds, shape, stream=2 * stream + 2).double()
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).float()

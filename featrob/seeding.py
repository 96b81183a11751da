"""Per-sample random numbers that do not depend on batching or device.

A sample's random start must not change with the batch it falls in (robust accuracy would
then depend on the batch size) nor with the device. Each sample gets a 64-bit seed from
``(run seed, sample index)``; random numbers are a counter-based hash (SplitMix64) of
``(sample seed, stream, element index)``.

The hash runs in torch int64 arithmetic on the tensor's own device (no host round trip
inside attack loops): multiplication wraps modulo 2^64 and right shifts are made logical
with a mask, so CPU and GPU give bit-identical numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor


def _signed(value: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_STREAM_SALT = 0x5DEECE66D


def _shr(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(z: Tensor) -> Tensor:
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def _splitmix64_int(value: int) -> int:
    """:func:`_splitmix64` of one value in Python integers (no tensor, no device copy)."""
    mask = (1 << 64) - 1
    z = (value + _GOLDEN) & mask
    z = ((z ^ (z >> 30)) * (_M1 & mask)) & mask
    z = ((z ^ (z >> 27)) * (_M2 & mask)) & mask
    return _signed(z ^ (z >> 31))


def derive_seed(seed: int, *names: object) -> int:
    """A 63-bit seed for a named purpose (``derive_seed(0, "metric", "scale")``)."""
    text = "/".join([str(seed), *map(str, names)]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def sample_seeds(seed: int, indices: Tensor | object) -> Tensor:
    """One non-negative int64 seed per sample, from the run seed and the samples' indices."""
    idx = torch.as_tensor(indices, dtype=torch.int64)
    base = _signed(derive_seed(seed, "sample"))
    return _shr(_splitmix64(_splitmix64(idx ^ base)), 1)


#: A stream: one for every sample (``int``), one per sample (``Tensor [B]``, int64), or
#: several for every sample (a sequence of ``int``: one draw per stream).
Stream = int | Tensor | Sequence[int]


def _stream_keys(s: Tensor, stream: Stream) -> Tensor:
    """Per-sample stream keys: ``[B, 1]`` for one stream (or one per sample), ``[B, K]``
    for ``K`` streams."""
    # The stream's key in Python integers: a tensor here would be one host-to-device copy
    # per draw on a GPU (Square draws once per query). Several streams cost one copy.
    if isinstance(stream, int):
        return _splitmix64(s ^ _splitmix64_int(stream + _STREAM_SALT))[:, None]
    if isinstance(stream, Tensor):  # per-sample streams: the same bits as int streams
        salted = _splitmix64(stream.to(device=s.device, dtype=torch.int64) + _STREAM_SALT)
        return _splitmix64(s ^ salted)[:, None]
    salted = [_splitmix64_int(int(k) + _STREAM_SALT) for k in stream]
    return _splitmix64(s[:, None] ^ torch.tensor(salted, dtype=torch.int64, device=s.device))


def random_bits(seeds: Tensor, shape: tuple[int, ...], stream: int | Sequence[int] = 0) -> Tensor:
    """int64 hash values ``[len(seeds), *shape]``; row i depends only on ``seeds[i]``.

    With a sequence of ``K`` streams: ``[len(seeds), K, *shape]``, where ``[:, k]`` equals
    the draw from ``stream[k]`` alone (one call for many iterations' numbers).
    """
    s = torch.as_tensor(seeds, dtype=torch.int64)
    n = 1
    for dim in shape:
        n *= int(dim)
    keys = _stream_keys(s, stream)  # [B, K]
    counters = torch.arange(n, dtype=torch.int64, device=s.device) * _GOLDEN
    bits = _splitmix64(keys[:, :, None] ^ counters)
    if isinstance(stream, int | Tensor):
        return bits.reshape(len(s), *shape)
    return bits.reshape(len(s), len(stream), *shape)


def uniform(seeds: Tensor, shape: tuple[int, ...], stream: Stream = 0) -> Tensor:
    """Uniform [0, 1) float32 of shape ``[len(seeds), *shape]`` on the seeds' device.

    Args:
        seeds: int64 per-sample seeds (from :func:`sample_seeds`).
        shape: shape of one sample's draw.
        stream: independent streams for the same sample (restarts, iterations); an int64
            tensor ``[B]`` gives each sample its own stream; a sequence of ``K`` streams
            gives ``[len(seeds), K, *shape]``, each ``[:, k]`` equal to the draw from
            ``stream[k]`` alone.
    """
    bits = _shr(random_bits(seeds, shape, stream), 11)  # 53 random bits
    values = bits.to(torch.float64) * (1.0 / (1 << 53))
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()
    return values.to(torch.float32).clamp_(max=below_one)


def normal(seeds: Tensor, shape: tuple[int, ...], stream: int | Tensor = 0) -> Tensor:
    """Standard normal float32 (Box-Muller on two uniform streams), row i from seeds[i]."""
    u1 = uniform(seeds, shape, stream=2 * stream + 1).double().clamp_(min=1e-12)
    u2 = uniform(seeds, shape, stream=2 * stream + 2).double()
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).float()


def randint(
    seeds: Tensor, high: Tensor | int, shape: tuple[int, ...] = (), stream: int = 0
) -> Tensor:
    """Integers in ``[0, high)`` per sample (``high`` may differ per sample, ``[B]``)."""
    u = uniform(seeds, shape or (1,), stream).double()
    high_t = torch.as_tensor(high, device=u.device, dtype=torch.float64)
    if high_t.dim() == 1:
        high_t = high_t.view(-1, *([1] * (u.dim() - 1)))
    out = torch.floor(u * high_t).to(torch.int64)
    return out if shape else out.squeeze(1)


def signs(seeds: Tensor, shape: tuple[int, ...], stream: int = 0) -> Tensor:
    """Random +1/-1 float32 per sample."""
    return torch.where(uniform(seeds, shape, stream) < 0.5, -1.0, 1.0)

"""A memory budget (``--max-memory``) turned into chunk sizes.

The costly loops of featrob (attack batches, sensitivity replicas, collision searches) hold
memory linear in their chunk. This module measures the per-input cost of one forward and
backward pass on the real model and picks the largest chunk that fits the budget, so a
run's peak memory follows ``--max-memory`` instead of a hand-tuned batch size.

How a cost is measured: the loop itself (:func:`loop_footprint`, e.g. two PGD steps of the
real sensitivity cell) or one forward/backward pass of the model (:func:`footprint`), each
at two sizes, the difference giving the cost per item:

* on CUDA, the allocator's peak (``torch.cuda.max_memory_allocated``): exact;
* on Linux CPUs, the process's peak resident memory (``VmHWM`` of ``/proc/self/status``,
  reset through ``/proc/self/clear_refs``, freed heap returned with ``malloc_trim``
  first): what the kernel sees, convolution workspaces included;
* elsewhere, the bytes autograd saves for backward (:func:`saved_footprint`), times
  :data:`BACKWARD_FACTOR`: a lower estimate (kernel workspaces are not saved tensors).

On CPU a budget also fixes glibc's mmap threshold (:func:`tame_allocator`), without which
resident memory grows with the number of steps and no budget holds. The scaling table in
the README compares budgets with the peak memory measured.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

#: A backward pass holds about as much memory again as the saved activations.
BACKWARD_FACTOR = 2.0


def tame_allocator() -> bool:
    """Make freed tensor memory go back to the kernel at once (glibc; a no-op elsewhere).

    glibc raises its mmap threshold after large blocks are freed, so later tensors come
    from a heap that it rarely returns: the process's resident memory then grows with the
    number of steps, not with the chunk (measured on the sensitivity cell: 110-225 KB per
    replica with the default allocator, a steady 67-72 KB with a fixed threshold). A budget
    is only meaningful with a fixed threshold, so ``--max-memory`` sets it (128 KiB, glibc's
    default before it adapts). Returns whether it was set.
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024))
    except AttributeError:  # a C library without mallopt
        return False


def _libc():
    """The C library through ctypes, or None."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return None if name is None else ctypes.CDLL(name)
    except OSError:
        return None


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@dataclass(frozen=True)
class Footprint:
    """Memory of one forward/backward pass: ``fixed + per_input * batch`` bytes."""

    per_input: int
    fixed: int

    def bytes_for(self, batch: int) -> int:
        """Estimated bytes of a pass over ``batch`` inputs."""
        return self.fixed + self.per_input * batch


def _saved_bytes(forward: Callable[[Tensor], Tensor], x: Tensor) -> int:
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        # count each storage once (a tensor saved by two ops is kept once)
        key = t.untyped_storage().data_ptr()
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        xi = x.detach().requires_grad_(True)
        out = forward(xi)
    pack(xi), pack(out)  # the input and the output are held too (once, like any storage)
    return sum(seen.values())


def saved_footprint(forward: Callable[[Tensor], Tensor], probe: Tensor) -> Footprint:
    """The estimate from the tensors autograd saves for backward (for 1 and 2 copies of
    ``probe[:1]``), times :data:`BACKWARD_FACTOR` per input: a lower bound of a pass."""
    one = probe[:1].clone()
    b1 = _saved_bytes(forward, one)
    b2 = _saved_bytes(forward, one.repeat(2, *([1] * (one.dim() - 1))))
    per = max(b2 - b1, 1)
    return Footprint(per_input=int(per * BACKWARD_FACTOR), fixed=max(b1 - per, 0))


def _pass(forward: Callable[[Tensor], Tensor], x: Tensor) -> None:
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(forward(xi).float().sum(), xi, allow_unused=True)


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in {_STATUS}")


def _can_measure_cpu() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        _status_kib("VmHWM")
    except OSError:
        return False
    return True


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Memory ``fn()`` takes at its peak above what was in use before it.

    CUDA: the allocator's peak (exact). CPU: the process's peak resident memory
    (``VmHWM``, reset through ``/proc/self/clear_refs``; freed heap returned with
    ``malloc_trim`` first), the smaller of two runs (a stray allocation elsewhere only adds).

    Raises:
        OSError: the peak cannot be measured here (not Linux).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base

    peaks = []
    for _ in range(2):
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            _libc().malloc_trim(0)  # None (no C library) raises AttributeError
        _CLEAR_REFS.write_text("5")  # peak resident memory := current
        base = _status_kib("VmRSS")
        fn()
        peaks.append((_status_kib("VmHWM") - base) * 1024)
    return min(peaks)


def _measurable(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and _can_measure_cpu())


def loop_footprint(
    work: Callable[[int], object],
    device: torch.device,
    *,
    small: int = 8,
    large: int = 64,
    budget: int | None = None,
) -> Footprint | None:
    """The memory of ``work(n)``, a loop body over ``n`` items (e.g. two PGD steps on ``n``
    replicas), measured at two sizes; None where peaks cannot be measured.

    Measuring the loop itself counts what a pass-only estimate misses: its iterates,
    gradients, best points and index copies.

    With a ``budget`` the measurement keeps to it: ``work(1)`` is measured first and the two
    sizes shrink so that neither is expected to take more than half the budget. Without it,
    measuring 64 searches of a ResNet on 224 x 224 images would itself take gigabytes and
    minutes, the opposite of what a budget asks for.
    """
    if not _measurable(device):
        return None
    known: dict[int, int] = {}
    if budget is not None:
        known[1] = peak_bytes(lambda: work(1), device)
        small, large = _probe_sizes(known[1], budget, small, large)
    peaks = [known.get(n) or peak_bytes(lambda n=n: work(n), device) for n in (small, large)]
    per = max((peaks[1] - peaks[0]) // (large - small), 1)
    return Footprint(per_input=int(per), fixed=int(max(peaks[0] - per * small, 0)))


def _probe_sizes(one: int, budget: int, small: int, large: int) -> tuple[int, int]:
    """Sizes to measure at when one item takes ``one`` bytes at its peak (an upper bound of
    its per-item cost): at most ``large``, each within half of ``budget``, at least 1 and 2."""
    fits = max(2, budget // max(2 * one, 1))
    large = min(large, fits)
    small = max(1, min(small, large // 4))
    return small, max(large, small + 1)


def footprint(
    forward: Callable[[Tensor], Tensor],
    probe: Tensor,
    *,
    state_tensors: int = 8,
    budget: int | None = None,
) -> Footprint:
    """The memory of a forward/backward pass of ``forward``: ``fixed + per_input * batch``.

    Measured (:func:`peak_bytes`) on 8 and 40 copies of ``probe[:1]`` where possible, never
    below what autograd provably saves; else the saved-tensor estimate.

    Args:
        forward: what the loop differentiates (the model, or an extractor up to a layer).
        probe: at least one real input (its shape and dtype matter, not its values).
        state_tensors: input-sized tensors the loop keeps per input besides the pass
            (an attack's start, iterate, step, gradient, best point...).
        budget: measure within this budget (see :func:`loop_footprint`).
    """
    one = probe[:1].clone()  # its own storage (a view would count the whole probe)
    state = state_tensors * one.numel() * one.element_size()
    saved = saved_footprint(forward, one)
    measured = loop_footprint(
        lambda n: _pass(forward, one.repeat(n, *([1] * (one.dim() - 1)))),
        one.device,
        small=8,
        large=40,
        budget=budget,
    )
    if measured is None:
        return Footprint(per_input=saved.per_input + state, fixed=saved.fixed)
    return Footprint(
        per_input=max(measured.per_input, saved.per_input) + state,
        fixed=max(measured.fixed, saved.fixed),
    )


def chunk_for(
    budget: int | None, per_item: int, *, fixed: int = 0, default: int, low: int = 1
) -> int:
    """The largest chunk whose estimate ``fixed + per_item * chunk`` fits ``budget``.

    Args:
        budget: bytes, or None for no budget (then ``default``).
        per_item: bytes per chunk element.
        fixed: bytes that do not grow with the chunk.
        default: the chunk without a budget. With one, the chunk is what fits: smaller
            or larger than ``default``.
        low: the smallest useful chunk, returned even when the budget is too small.
    """
    if budget is None:
        return default
    return max(low, (budget - fixed) // max(per_item, 1))

"""Multi-process runs on ``torch.distributed``: ``torchrun --nproc-per-node N -m featrob run``.

featrob does not run its own process pool. Under ``torchrun`` every process runs the whole
command; this module lets the hot loops share their work. A loop that walks a list of
batches (attack batches, feature batches, sensitivity cells, collision pair blocks) calls
:func:`map_batches`: batch ``i`` runs on rank ``i % N``, and every rank ends with every
batch's result, in order. Nothing else changes, so:

* **Same results as one process.** A batch holds the same samples in the same order as in a
  single-process run, and randomness comes from per-sample seeds, so every batch computes
  bit for bit what one process would; the ranks then continue from identical data.
* **One store, one report.** Each rank writes the store chunks of its own batches (the store
  is safe for concurrent writers: chunks are renamed into place), and only rank 0 writes
  ``results.json`` and the reports. Ranks must share the store folder (one machine, or a
  shared file system).
* **Failures.** An error in one rank's batch is sent to every rank, so all of them fail the
  same metric with the same message instead of waiting for each other. A rank that dies
  makes ``torchrun`` stop the others; the chunks already written stay in the store and a
  re-run resumes from them.

The backend is NCCL on CUDA devices and gloo on CPU. A single process (no ``WORLD_SIZE``)
never touches ``torch.distributed``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from featrob.errors import FeatrobError

T = TypeVar("T")
R = TypeVar("R")


class DistributedError(FeatrobError):
    """A rank failed or lost contact with the others."""


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 writes results and reports."""
        return self.rank == 0

    def mine(self, n: int) -> range:
        """Positions of the batches this rank computes, out of ``n`` (round robin)."""
        return range(self.rank, n, self.size)

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` from every rank, in rank order (picklable objects; CPU data)."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        try:
            dist.all_gather_object(out, obj)
        except RuntimeError as exc:  # a peer died or timed out
            raise DistributedError(
                f"rank {self.rank}: lost contact with the other ranks ({exc}); the store keeps "
                "every finished batch, re-run to resume"
            ) from None
        return out

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.size > 1:
            self.gather(None)


def world() -> World:
    """The current :class:`World` (one process unless a process group is up)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env(device: torch.device, timeout_s: float = 1800.0) -> World:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Args:
        device: the run's device; CUDA uses NCCL (and this rank's ``LOCAL_RANK`` GPU when
            the device names no index), CPU uses gloo.
        timeout_s: how long a collective waits for a slow or dead peer before failing.

    Returns:
        The world (``World()`` when ``WORLD_SIZE`` is unset or 1).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda" and device.index is None:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return world()


def launched() -> World:
    """The world ``torchrun`` describes in the environment, process group up or not.

    For code that runs after :func:`joined` has closed the group (the CLI deciding which
    rank prints the summary).
    """
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


@contextlib.contextmanager
def joined(device: torch.device) -> Iterator[World]:
    """Join the ``torchrun`` process group for a block, and leave it cleanly afterwards.

    Leaving matters: a gloo group still alive at interpreter exit tears its worker threads
    down during finalisation, which now and then aborts a rank (``terminate called without
    an active exception``, SIGABRT) after the run has finished. On a normal exit the ranks
    first wait for each other, so no rank closes its connections while another still talks;
    after an error they just close. A group the caller set up before is left alone.

    Args:
        device: the run's device (see :func:`init_from_env`).

    Yields:
        The world.
    """
    created = not (dist.is_available() and dist.is_initialized())
    here = init_from_env(device)
    if not created or here.size == 1:
        yield here
        return
    try:
        yield here
    except BaseException:
        _leave(wait=False)
        raise
    _leave(wait=True)


def _leave(wait: bool) -> None:
    """Close the process group; with ``wait``, once every live rank has got here."""
    if wait:
        with contextlib.suppress(DistributedError):  # a lost peer: nobody left to wait for
            world().barrier()
    with contextlib.suppress(RuntimeError):  # a broken group still closes what it can
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index means this rank's GPU under torchrun."""
    if device.type == "cuda" and device.index is None and world().size > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block before the others do (one process: just runs it).

    For work that fills a cache every rank then reads (training a model, a head): rank 0
    trains and writes, the others wait and load what it wrote instead of training too.
    """
    here = world()
    if here.size == 1:
        yield
        return
    if not here.main:
        here.barrier()
    try:
        yield
    finally:
        if here.main:
            here.barrier()


def map_batches(batches: Sequence[T], fn: Callable[[T], R]) -> list[R]:
    """``[fn(b) for b in batches]``, the batches shared round robin among the ranks.

    ``fn`` must return CPU data (it is pickled to the other ranks) and may write its batch
    to the store; ``batches`` must be the same on every rank. Callers build it from the
    store before the call: a run's store writes all happen inside ``fn``, and this function
    starts and ends with a collective, so every rank reads the store while nobody writes.

    An exception in any rank's batch is raised on every rank (as
    :class:`DistributedError` with the failing rank's message), so no rank waits forever.
    """
    here = world()
    if here.size == 1:
        return [fn(b) for b in batches]
    # Every rank has read the store to build ``batches``; none may write before all have,
    # or a slow rank would see a fast rank's new chunks and build another list.
    sizes = here.gather(len(batches))
    if len(set(sizes)) > 1:
        raise DistributedError(
            f"ranks disagree on the work to share ({sizes} batches): they did not see the same "
            "store; re-run (nothing finished is lost)"
        )
    done: dict[int, R] = {}
    failure: str | None = None
    for i in here.mine(len(batches)):
        try:
            done[i] = fn(batches[i])
        except Exception as exc:  # reported to every rank below
            failure = f"rank {here.rank}, batch {i}: {type(exc).__name__}: {exc}"
            break
    parts = here.gather((done, failure))
    failures = [f for _, f in parts if f is not None]
    if failures:
        raise DistributedError(failures[0])
    merged: dict[int, R] = {}
    for part, _ in parts:
        merged.update(part)
    return [merged[i] for i in range(len(batches))]

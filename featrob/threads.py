"""How many CPU threads torch should use for this run, chosen from the work and the machine.

torch's default (one intra-op thread per physical core) is wrong twice over for featrob's
usual work: the models featrob trains by default are too small for a second thread to pay
(measured: a warm default run 23 s with two threads, 18 s with one, on a quiet 2-core CPU),
and two runs with two threads each on two cores thrash (96 s each instead of 15 s). So:

1. the user's choice wins: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in the environment, or a
   ``torch.set_num_threads`` call before the run (any count other than torch's default);
2. under ``torchrun`` the CPUs are shared among the ranks of the machine
   (``LOCAL_WORLD_SIZE``);
3. otherwise one forward/backward pass of the run's model is timed on a batch of the run's
   samples with one thread and with every available CPU, and the faster count is kept
   (extra threads must save at least 10 %). The timing happens now, so a machine already
   busy with other work (another run, a compile) makes more threads lose and the run takes
   one; the CPUs available are the process's affinity mask and its cgroup CPU quota, not the
   machine's core count.

The choice and why are recorded in results.json (``environment.threads``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

#: Environment variables through which a user sets the thread count.
USER_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: More threads must save at least this share of a pass to be chosen.
MIN_GAIN = 0.10
#: A one-thread pass this long (seconds) is work big enough for every CPU without timing.
LARGE_PASS_S = 0.25
#: Each thread count is timed for at least this long (seconds).
MIN_TIMING_S = 0.03


@dataclass
class ThreadChoice:
    """The thread count of a run and why.

    Attributes:
        threads: intra-op threads torch uses.
        source: ``"user"`` (environment or ``torch.set_num_threads``), ``"torchrun"``,
            ``"measured"`` or ``"single cpu"``.
        cpus: CPUs available to the process (affinity and cgroup quota).
        seconds: per thread count, the timed pass (``"measured"`` only).
    """

    threads: int
    source: str
    cpus: int
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The record in results.json."""
        return asdict(self)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None if none."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


_TORCH_DEFAULT = torch.get_num_threads()  # before featrob changes anything


def user_threads() -> int | None:
    """The thread count the user chose (environment, or ``torch.set_num_threads`` since
    import), None when they did not."""
    for name in USER_ENV:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    current = torch.get_num_threads()
    return current if current != _TORCH_DEFAULT and not _chosen_by_featrob(current) else None


_FEATROB_SET: set[int] = set()


def _chosen_by_featrob(count: int) -> bool:
    return count in _FEATROB_SET


def _set(count: int) -> None:
    torch.set_num_threads(count)
    _FEATROB_SET.add(count)


def time_pass(forward: Callable[[Tensor], Tensor], x: Tensor, repeats: int = 3) -> float:
    """Seconds of the fastest forward/backward pass on ``x`` after one warm-up pass: at
    least ``repeats`` passes, more until :data:`MIN_TIMING_S` has gone by (a pass of a small
    model takes a millisecond, too short to time once)."""
    best, spent, done = math.inf, 0.0, -1
    while done < repeats or spent < MIN_TIMING_S:
        inp = x.detach().requires_grad_(True)
        start = time.perf_counter()
        out = forward(inp)
        (grad,) = torch.autograd.grad(out.float().sum(), inp)
        took = time.perf_counter() - start
        del grad
        if done >= 0:
            best, spent = min(best, took), spent + took
        done += 1
        if took > LARGE_PASS_S:
            break
    return best


def choose_threads(
    forward: Callable[[Tensor], Tensor] | None,
    x: Tensor | None,
    device: torch.device,
    requested: int | None = None,
) -> ThreadChoice:
    """Choose and set torch's intra-op thread count for this run (see the module docstring).

    Args:
        forward: the run's model; ``x`` a batch of its inputs (on CPU), both for the timing.
        device: the run's device (on a GPU the CPU threads matter little: torch's choice
            stays, capped by the CPUs available).
        requested: ``--threads`` (config key ``threads``), which wins over everything.
    """
    cpus = available_cpus()
    user = requested if requested is not None else user_threads()
    if user is not None:
        torch.set_num_threads(user)
        return ThreadChoice(user, "user", cpus)
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if ranks > 1:
        share = max(1, cpus // ranks)
        _set(share)
        return ThreadChoice(share, "torchrun", cpus)
    if cpus == 1:
        _set(1)
        return ThreadChoice(1, "single cpu", cpus)
    if device.type != "cpu" or forward is None or x is None:
        _set(min(cpus, _TORCH_DEFAULT))
        return ThreadChoice(torch.get_num_threads(), "device", cpus)
    seconds: dict[str, float] = {}
    for count in (1, cpus):
        _set(count)
        with torch.enable_grad():
            seconds[str(count)] = time_pass(forward, x, repeats=1 if count == 1 else 2)
        if count == 1 and seconds["1"] > LARGE_PASS_S:  # big work: threads pay, skip timing
            _set(cpus)
            return ThreadChoice(cpus, "measured", cpus, {"1": round(seconds["1"], 5)})
    more = seconds[str(cpus)] < (1 - MIN_GAIN) * seconds["1"]
    chosen = cpus if more else 1
    _set(chosen)
    return ThreadChoice(chosen, "measured", cpus, {k: round(v, 5) for k, v in seconds.items()})

"""Claims on shared work, so two runs on one store or one model cache do not do it twice.

A run about to compute a batch of store rows (or train a model) claims it with a lease: a
small file created atomically (``O_CREAT | O_EXCL``) beside the entry, holding the owner's
host, pid and start time. Another run that finds the lease works on something else and
comes back; when the owner finishes it removes the lease and the rows are in the store.

A lease never blocks anyone for long: it is stale, and taken over, when its owner is a
process of this machine that no longer runs (a killed run), or when it is older than
:data:`LEASE_TIMEOUT_S` (an owner on another machine that died). Taking over a live but slow
owner's batch only costs duplicate work: both compute the same rows, bit for bit, and the
store keeps one copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

#: Seconds after which any lease is stale (an owner on another machine that died).
LEASE_TIMEOUT_S = float(os.environ.get("FEATROB_LEASE_TIMEOUT", 1800))
#: Seconds between looks at a lease someone else holds.
POLL_S = 0.2


class Lease:
    """A claim on one piece of work, named by ``path`` (a ``*.lease`` file).

    Args:
        path: the lease file.
        timeout_s: age after which the lease is stale whoever holds it.
    """

    def __init__(self, path: Path, timeout_s: float | None = None) -> None:
        self.path = Path(path)
        self.timeout_s = LEASE_TIMEOUT_S if timeout_s is None else timeout_s
        self.held = False

    def acquire(self) -> bool:
        """Claim the work; False when a live owner holds it (or the folder is not writable:
        then nobody can share through it and the caller just computes)."""
        for _ in range(2):  # a second try after removing a stale lease
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return False
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            except OSError:  # read-only or missing folder: no sharing, no blocking
                return True
            with os.fdopen(fd, "w") as f:
                json.dump({"host": platform.node(), "pid": os.getpid(), "time": time.time()}, f)
            self.held = True
            return True
        return False

    def release(self) -> None:
        """Give the claim up (the work is done, or failed: someone else may retry it)."""
        if self.held:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.held = False

    def _stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return False  # being written or just removed: look again later
        if age > self.timeout_s:
            return True
        if owner.get("host") == platform.node() and isinstance(owner.get("pid"), int):
            return not process_alive(owner["pid"])
        return False


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (True when it is someone else's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def exclusive(path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the lease at ``path`` for the block, waiting while a live owner holds it."""
    lease = Lease(path, timeout_s)
    while not lease.acquire():
        time.sleep(POLL_S)
    try:
        yield
    finally:
        lease.release()

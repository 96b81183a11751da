"""Progress bars for every loop a user waits for (training, extraction, attacks).

Bars go to stderr so that stdout stays parseable; ``quiet=True`` (``--quiet``) silences them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichProgress,
)

T = TypeVar("T")


class _NullTask:
    def advance(self, n: float = 1) -> None:
        """Do nothing (quiet mode)."""

    def update(self, description: str) -> None:
        """Do nothing (quiet mode)."""


class _Task:
    def __init__(self, progress: RichProgress, task_id: int) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, n: float = 1) -> None:
        """Move the bar forward by ``n``."""
        self._progress.advance(self._id, n)

    def update(self, description: str) -> None:
        """Change the bar's text (e.g. to show the current loss)."""
        self._progress.update(self._id, description=description)


class ProgressBars:
    """Creates progress bars, or nothing when quiet.

    Args:
        quiet: print nothing.
        console: where bars go (default: stderr).
    """

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True)

    @contextmanager
    def bar(self, total: float | None, description: str) -> Iterator[_Task | _NullTask]:
        """A bar for ``total`` units of work; call ``advance(n)`` on what it yields."""
        if self.quiet:
            yield _NullTask()
            return
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with RichProgress(*columns, console=self.console, transient=False) as progress:
            yield _Task(progress, progress.add_task(description, total=total))

    def track(self, iterable: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        """Iterate with a bar."""
        with self.bar(total, description) as task:
            for item in iterable:
                yield item
                task.advance(1)

    def log(self, message: str) -> None:
        """A status line on stderr (suppressed when quiet)."""
        if not self.quiet:
            print(message, file=sys.stderr)


#: Former name of :class:`ProgressBars` (kept for plugins written against it).
Reporter = ProgressBars

"""The base class of output formats (``--report json,md``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from featrob.results import atomic_write

if TYPE_CHECKING:
    from featrob.results import Results

__all__ = ["Reporter", "SingleFileReporter", "atomic_write", "table_columns"]


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys, in first-seen order (a table's header)."""
    return list(dict.fromkeys(key for row in rows for key in row))


class Reporter(ABC):
    """Writes a run's :class:`~featrob.results.Results` in one format.

    Reporters only read ``Results``: ``featrob report RUN_DIR`` re-renders any format from a
    finished run without recomputing anything.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def write(self, results: Results, out_dir: Path) -> list[Path]:
        """Write the report into ``out_dir`` and return the files written."""


class SingleFileReporter(Reporter):
    """A reporter that renders the whole run into one text file, ``filename``, in the output
    folder (written atomically: a reader never sees half a report)."""

    filename: ClassVar[str]

    @abstractmethod
    def render(self, results: Results) -> str:
        """The file's text."""

    def write(self, results: Results, out_dir: Path) -> list[Path]:
        """Write :attr:`filename` into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / self.filename
        atomic_write(path, self.render(results))
        return [path]

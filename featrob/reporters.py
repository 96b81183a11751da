"""The base class of output formats (``--report json,md``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from featrob.results import Results


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

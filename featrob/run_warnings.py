"""featrob's warnings: one plain line each, in the terminal and in results.json.

Anything a run should tell the user but that is not an error (a cache it cannot write, a
tampered store chunk, a library's numerical complaint) is raised with :func:`warn` (or any
library's :func:`warnings.warn`). During a run :func:`collected` shows each one as
``warning: MESSAGE`` (no category, no source line) and appends the message to the run's
warnings, which results.json keeps.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any


class FeatrobWarning(UserWarning):
    """A warning from featrob itself."""


def warn(message: str) -> None:
    """Warn with one line (shown as ``warning: MESSAGE`` during a run)."""
    warnings.warn(message, FeatrobWarning, stacklevel=2)


def one_line(message: Any) -> str:
    """The first line of a warning's text, stripped."""
    text = str(message).strip()
    return text.splitlines()[0] if text else ""


@contextlib.contextmanager
def collected(sink: list[str], log: Callable[[str], None]) -> Iterator[list[str]]:
    """Within the block, every warning becomes one line: ``log("warning: ...")`` once per
    distinct message, and the message appended to ``sink``."""
    seen: set[str] = set(sink)

    def show(message: Any, category: type, filename: str = "", *_: Any, **__: Any) -> None:
        line = one_line(message)
        source = _package_of(filename)
        if source and not issubclass(category, FeatrobWarning):
            line = f"{source}: {line}"  # a library's warning says whose it is
        if line and line not in seen:
            seen.add(line)
            sink.append(line)
            log(f"warning: {line}")

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.showwarning = show  # type: ignore[assignment]
        yield sink


def _package_of(filename: str) -> str | None:
    """``.../site-packages/cvxpy/problems/problem.py`` -> ``"cvxpy"`` (None for featrob's own
    files and scripts)."""
    parts = str(filename).replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            package = parts[parts.index(marker) + 1].removesuffix(".py")
            return None if package.startswith("featrob") else package
    return None

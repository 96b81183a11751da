"""User-facing errors.

Every mistake a user can make (an unknown name, a bad shape, a missing file, a NaN eps)
raises a :class:`FeatrobError` subclass whose message is one complete line. The CLI prints
that line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FeatrobError(Exception):
    """A problem the user can fix; ``str(error)`` is the whole explanation."""

    exit_code: int = 2


class UnknownNameError(FeatrobError, KeyError):
    """A name that no registry knows; the message lists close matches."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        self.kind, self.name = kind, name
        self.known = sorted(known)
        super().__init__(self._message(hint))

    def _message(self, hint: str) -> str:
        close = difflib.get_close_matches(self.name, self.known, n=3, cutoff=0.5)
        msg = f"unknown {self.kind} {self.name!r}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        elif self.known:
            msg += f"; known: {', '.join(self.known)}"
        else:
            msg += f"; no {self.kind} is registered"
        return msg + (f" ({hint})" if hint else "")

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0])


class DuplicateNameError(FeatrobError):
    """Two plugins registered the same name for one kind."""


class PluginLoadError(FeatrobError):
    """A plugin that the run needs could not be imported or registered."""


class ConfigError(FeatrobError):
    """An invalid configuration value (flag, TOML file or ``--set``)."""


class DataError(FeatrobError):
    """A data set that is missing, unreadable or malformed."""


class ModelError(FeatrobError):
    """A model that cannot be built, loaded or split into backbone and head."""


class StoreError(FeatrobError):
    """A feature store that is locked, unreadable or of another schema version."""


def check_finite_nonnegative(name: str, value: float) -> float:
    """Return ``value`` as float, or raise :class:`ConfigError` if it is NaN, inf or negative."""
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value

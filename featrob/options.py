"""Validation of plugin options against a class's declared ``defaults``.

Attacks, metrics and training methods declare every option they take, with its default, in
a ``defaults`` class attribute. A misspelt option is an error with a close match, never
silently ignored (a typo in ``steps`` would otherwise run a weaker attack).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from featrob.errors import ConfigError


def merge_options(
    kind: str, name: str, defaults: Mapping[str, Any], given: Mapping[str, Any]
) -> dict[str, Any]:
    """``defaults`` updated with ``given``; unknown keys raise :class:`ConfigError`.

    Args:
        kind: "attack", "metric", ... (for the message).
        name: the thing's registry name.
        defaults: declared options and their defaults.
        given: user-supplied options.
    """
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        parts = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        known = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(f"{kind} {name!r} has no option {', '.join(parts)}; options: {known}")
    return {**defaults, **given}


def int_param(attack: str, key: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (integral floats accepted), else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ConfigError(f"{attack}: {key} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"{attack}: {key} must be >= {minimum}, got {value!r}")
    return int(value)


def float_param(attack: str, key: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a finite float >= 0 (> 0 if ``positive``), else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{attack}: {key} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{attack}: {key} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def bool_param(attack: str, key: str, value: Any) -> bool:
    """``value`` if it is a bool, else :class:`ConfigError` (``"false"`` is not False)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{attack}: {key} must be true or false, got {value!r}")
    return value

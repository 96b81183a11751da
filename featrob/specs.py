"""Parsing of the small spec languages used on the command line.

* ``NAME`` or ``NAME:ARG`` for models and data sets (``tv:resnet50``, ``npz:/data/x.npz``);
* ``NAME(key=value, ...)`` for attacks (``pgd(steps=20, restarts=2)``);
* ``8/255``-style fractions for eps;
* threat-model names (``linf``, ``l2``) and memory sizes (``4GiB``).
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

from featrob.errors import ConfigError

_CALL = re.compile(r"^\s*(?P<name>[^()\s]+)\s*(?:\((?P<args>.*)\))?\s*$", re.S)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"npz:/x.npz"`` -> ``("npz", "/x.npz")``; ``"digits"`` -> ``("digits", None)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty spec: {spec!r}")
    name, sep, arg = spec.strip().partition(":")
    return name, (arg if sep else None)


def parse_value(text: str) -> Any:
    """A literal (number, bool, list, quoted string) or, failing that, the bare string."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if re.fullmatch(r"[-+]?\d+(\.\d*)?\s*/\s*\d+(\.\d*)?", text):
        return parse_fraction(text, "value")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_call(spec: str) -> tuple[str, dict[str, Any]]:
    """``"pgd(steps=20, rel_step=0.1)"`` -> ``("pgd", {"steps": 20, "rel_step": 0.1})``."""
    match = _CALL.match(spec or "")
    if not match:
        raise ConfigError(f"cannot parse {spec!r}; expected NAME or NAME(key=value, ...)")
    params: dict[str, Any] = {}
    args = (match.group("args") or "").strip()
    if args:
        try:
            call = ast.parse(f"f({args})", mode="eval").body
        except SyntaxError as exc:
            raise ConfigError(f"cannot parse parameters of {spec!r}: {exc.msg}") from None
        assert isinstance(call, ast.Call)
        if call.args:
            raise ConfigError(f"parameters of {spec!r} must be given as key=value")
        for kw in call.keywords:
            if kw.arg is None:
                raise ConfigError(f"parameters of {spec!r} must be given as key=value")
            segment = ast.get_source_segment(f"f({args})", kw.value) or ""
            params[kw.arg] = parse_value(segment)
    return match.group("name"), params


def parse_fraction(text: str | float | int, what: str = "eps") -> float:
    """``"8/255"`` -> 0.0313..., ``"0.1"`` -> 0.1; NaN, inf and negatives are rejected."""
    if isinstance(text, bool):
        raise ConfigError(f"{what} must be a number, got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        raw = str(text).strip()
        try:
            if "/" in raw:
                num, den = raw.split("/", 1)
                value = float(num) / float(den)
            else:
                value = float(raw)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{what} must be a number like 0.1 or 8/255, got {text!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise ConfigError(f"{what} must be a finite number, got {text!r}")
    if value < 0:
        raise ConfigError(f"{what} must be >= 0, got {text!r}")
    return value


def parse_norm(norm: str) -> str:
    """``"linf"``/``"Linf"``/``"inf"`` -> ``"linf"``; ``"l2"``/``"L2"``/``"2"`` -> ``"l2"``."""
    key = str(norm).lower().strip()
    aliases = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2", "l_2": "l2"}
    if key not in aliases:
        raise ConfigError(f"unknown norm {norm!r}; use 'linf' or 'l2'")
    return aliases[key]


_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str | int | float | None) -> int | None:
    """``"4GiB"``, ``"512MB"``, ``"2g"``, ``1e9`` -> bytes (binary units); None stays None.

    Raises:
        ConfigError: not a size, or not positive.
    """
    if text is None:
        return None
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.I)
        if match is None:
            raise ConfigError(
                f"max_memory: {text!r} is not a size; use e.g. 4GiB, 512MiB or a byte count"
            )
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not value > 0:
        raise ConfigError(f"max_memory must be positive, got {text!r}")
    return int(value)

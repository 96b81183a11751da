"""Turning an attack spec (``"pgd(steps=20)"``) into an :class:`~featrob.Attack`.

The one place that does it: the runner's config check, :meth:`featrob.RunContext.make_attack`
and :func:`featrob.evaluate` all call :func:`make_attack`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from featrob.attacks.base import Attack
from featrob.plugins import get_plugin_host
from featrob.registry import Registry
from featrob.specs import parse_call

#: AutoAttack's standard version (Croce & Hein 2020): the same four attacks for Linf and L2.
PRESETS: dict[str, list[str]] = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"]}


def expand_presets(specs: Sequence[str]) -> list[str]:
    """Replace preset names (``standard``) by their attacks."""
    out: list[str] = []
    for spec in specs:
        out += PRESETS.get(spec.strip(), [spec])
    return out


def make_attack(
    spec: str,
    *,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    registry: Registry[Any] | None = None,
    **params: Any,
) -> Attack:
    """An attack from a spec: ``make_attack("apgd-t(n_target_classes=3)", eps=8 / 255)``.

    Args:
        spec: a registered attack name with optional parameters, ``NAME(key=value, ...)``
            (not a preset: expand those with the run's attack list).
        eps, norm, seed: the threat model and the attack's seed (per-sample seeds derive
            from it).
        registry: the attack registry to look the name up in (a run passes its own);
            default every installed plugin's attacks.
        **params: parameters that override the spec's.

    Raises:
        UnknownNameError: no attack of that name (with close matches).
        ConfigError: a malformed spec or an unknown or invalid parameter.
    """
    name, spec_params = parse_call(spec)
    if registry is None:
        registry = get_plugin_host().attacks
    cls = registry.get(name)
    return cls(eps=eps, norm=norm, seed=seed, **{**spec_params, **params})

"""featrob: why is this image classifier fragile? Samples, features, layers.

The package import is cheap (no torch): heavy modules load when first used.
"""

from __future__ import annotations

from typing import Any

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@featrob.hookimpl``.
hookimpl = pluggy.HookimplMarker("featrob")

_LAZY = {
    "FeatrobError": "featrob.errors",
    "get_plugin_manager": "featrob.plugins",
    "PluginHost": "featrob.plugins",
    "Metric": "featrob.metrics",
    "MetricResult": "featrob.results",
    "Results": "featrob.results",
    "Figure": "featrob.results",
    "Attack": "featrob.attacks.base",
    "FeatrobModel": "featrob.models.base",
    "DatasetBundle": "featrob.data.base",
    "RunConfig": "featrob.config",
    "RunContext": "featrob.context",
    "run": "featrob.runner",
    "analyze": "featrob.api",
    "wrap_model": "featrob.api",
    "load_data": "featrob.api",
    "load_model": "featrob.api",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featrob' has no attribute {name!r}")

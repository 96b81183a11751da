"""featrob: why is this image classifier fragile? Samples, features, layers.

This package is featrob's public API: everything a plugin (ours included) or a script may
use is importable from here (``from featrob import Metric, MetricResult``), and test helpers
from :mod:`featrob.testing`. Every other module is internal and may change; names exported
here keep working (renamed ones stay as deprecated aliases). The API reference,
``docs/api.md``, is generated from these names' docstrings.

The package import is cheap (no torch): names load from their modules when first used.
"""

from __future__ import annotations

from typing import Any

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@featrob.hookimpl``.
hookimpl = pluggy.HookimplMarker("featrob")

#: Public name -> module that defines it (loaded on first access).
_LAZY = {
    # plugins
    "get_plugin_manager": "featrob.plugins",
    "PluginHost": "featrob.plugins",
    # metrics and results
    "Metric": "featrob.metrics",
    "MetricResult": "featrob.results",
    "Results": "featrob.results",
    "Figure": "featrob.results",
    "Finding": "featrob.results",
    "results_schema": "featrob.results",
    "Passes": "featrob.plan",
    "PlanInfo": "featrob.plan",
    "BUDGETS": "featrob.budgets",
    # the run a metric sees
    "RunContext": "featrob.context",
    "FeatureSet": "featrob.extract",
    "CachedRows": "featrob.rows",
    # models and heads
    "FeatrobModel": "featrob.models.base",
    "L2Head": "featrob.models.heads",
    "EMAPrototypes": "featrob.models.heads",
    "neg_l2_logits": "featrob.models.heads",
    "default_prototype_momentum": "featrob.models.heads",
    "check_head_sizes": "featrob.models.heads",
    "check_head_options": "featrob.models.heads",
    # data
    "DatasetBundle": "featrob.data.base",
    "DataSplit": "featrob.data.base",
    # attacks and evaluation
    "Attack": "featrob.attacks.base",
    "MinimumNormAttack": "featrob.attacks.base",
    "make_attack": "featrob.attacks.factory",
    "project": "featrob.attacks.base",
    "margin_loss": "featrob.attacks.base",
    "Plan": "featrob.attacks.protocol",
    "Ensemble": "featrob.attacks.surrogate",
    "Evaluation": "featrob.attacks.protocol",
    "evaluate": "featrob.attacks.protocol",
    # training
    "TrainingMethod": "featrob.trainer",
    "TrainConfig": "featrob.config",
    "train": "featrob.trainer",
    "kl_adversary": "featrob.adversaries",
    # output formats
    "Reporter": "featrob.reporters",
    # options, specs, seeds
    "int_param": "featrob.options",
    "float_param": "featrob.options",
    "bool_param": "featrob.options",
    "parse_call": "featrob.specs",
    "parse_fraction": "featrob.specs",
    "parse_norm": "featrob.specs",
    "parse_size": "featrob.specs",
    "derive_seed": "featrob.seeding",
    "sample_seeds": "featrob.seeding",
    # configuration and the command line
    "RunConfig": "featrob.config",
    "featrob_home": "featrob.config",
    "create_app": "featrob.cli",
    # Python API
    "run": "featrob.runner",
    "analyze": "featrob.api",
    "wrap_model": "featrob.api",
    "load_data": "featrob.api",
    "load_model": "featrob.api",
    # errors
    "FeatrobError": "featrob.errors",
    "ConfigError": "featrob.errors",
    "DataError": "featrob.errors",
    "ModelError": "featrob.errors",
    "UnknownNameError": "featrob.errors",
    "DuplicateNameError": "featrob.errors",
    "PluginLoadError": "featrob.errors",
    "StoreError": "featrob.errors",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'featrob' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

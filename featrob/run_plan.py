"""The plan of a run (``featrob run --check``): data, model, attacks and each metric's passes.

Building it loads the data and builds the model's architecture (no training, no weights
loaded beyond what a model factory loads itself, no attack): seconds for featrob's models.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from featrob.attacks.factory import expand_presets, make_attack
from featrob.budgets import budget_options
from featrob.config import RunConfig
from featrob.plan import PlanInfo, PlanRow
from featrob.plugins import PluginHost
from featrob.prepare import build, load_run_data
from featrob.registry import Entry


def plan_info(config: RunConfig, host: PluginHost) -> PlanInfo:
    """What the metrics need to count their passes: sample counts, classes, the model's
    feature width and layers, the run's attacks."""
    data = load_run_data(config, host)
    split = data.split(config.split)
    if config.n_per_class:
        split = split.balanced_subset(config.n_per_class, config.seed)
    model = build(config, data, host)
    try:
        num_features = model.num_features
    except Exception:  # a head that does not say its width: metrics needing it say "?"
        num_features = 0
    # the run's threat model; a metric's own keywords (norm="l2", steps=...) override it
    make = partial(
        make_attack, eps=config.eps, norm=config.norm, seed=config.seed, registry=host.attacks
    )
    return PlanInfo(
        config=config,
        n_samples=len(split),
        n_train=len(data.split("train")),
        n_classes=data.num_classes,
        num_features=num_features,
        layers=["input", *model.layers],
        attacks=[make(spec) for spec in expand_presets(config.attack_specs())],
        make_attack=make,
    )


def plan_rows(config: RunConfig, metrics: list[Entry[Any]], info: PlanInfo) -> list[PlanRow]:
    """One row per metric: its options under the budget and its estimated passes (a
    metric whose estimate fails gets the error, not a failed check)."""
    rows = []
    for entry in metrics:
        options = budget_options(entry.obj, config.budget, config.metrics.get(entry.name))
        try:
            metric = entry.obj(**options)
            rows.append(PlanRow(entry.name, metric.passes(info), metric.options))
        except Exception as exc:
            rows.append(PlanRow(entry.name, None, options, error=f"{type(exc).__name__}: {exc}"))
    return rows

"""The hooks a featrob plugin can implement.

A plugin is a module (or object) with functions marked ``@featrob.hookimpl`` whose names
are the hook names below. Built-in plugins and third-party plugins are found the same way:
through the ``featrob`` entry-point group.

Registration hooks receive a ``register`` callable; call it once per thing you provide::

    @featrob.hookimpl
    def featrob_register_metrics(register):
        register(MyMetric)                 # name taken from MyMetric.name
        register(other_factory, name="x")  # or given explicitly

``register(obj, name=None, *, aliases=(), description=None, **metadata)`` rejects a name
that another plugin already registered for the same kind, naming both plugins.

Keep plugin modules cheap to import (import torch inside hook bodies when you can):
``featrob --help`` and ``featrob plugins`` load every plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer

    from featrob.context import RunContext
    from featrob.results import MetricResult, Results

hookspec = pluggy.HookspecMarker("featrob")

#: Signature of the ``register`` callable handed to every ``featrob_register_*`` hook.
Register = Callable[..., Any]


@hookspec
def featrob_register_models(register: Register) -> None:
    """Register model architectures.

    ``register(factory, name="my-net")`` where
    ``factory(input_shape: tuple[int, int, int], num_classes: int, **options) -> nn.Module``.
    A factory that takes the text after ``name:`` in a spec (like ``tv:resnet50``) declares a
    parameter ``arg``. The module is wrapped in :class:`featrob.FeatrobModel`; give it
    ``backbone`` and ``head`` attributes to say where features end, otherwise its last
    ``nn.Linear`` is taken as the head.
    """


@hookspec
def featrob_register_heads(register: Register) -> None:
    """Register classification heads that map backbone features to logits.

    ``register(factory, name="l2")`` where
    ``factory(in_features: int, num_classes: int, **options) -> nn.Module``.
    """


@hookspec
def featrob_register_datasets(register: Register) -> None:
    """Register data sets.

    ``register(loader, name="digits")`` where
    ``loader(arg: str | None, *, root: Path, download: bool, **options) -> DatasetBundle``;
    ``arg`` is the text after ``name:`` in a spec such as ``npz:PATH`` (None without one).
    """


@hookspec
def featrob_register_attacks(register: Register) -> None:
    """Register perturbation methods: subclasses of :class:`featrob.Attack`."""


@hookspec
def featrob_register_metrics(register: Register) -> None:
    """Register analyses: subclasses of :class:`featrob.Metric`."""


@hookspec
def featrob_register_reporters(register: Register) -> None:
    """Register output formats: subclasses of :class:`featrob.Reporter`."""


@hookspec
def featrob_register_training_methods(register: Register) -> None:
    """Register training methods for ``featrob train --method NAME``.

    Objects are subclasses of :class:`featrob.TrainingMethod`.
    """


@hookspec
def featrob_register_commands(app: typer.Typer) -> None:
    """Add subcommands to the ``featrob`` command line (e.g. ``featrob compression ...``)."""


@hookspec
def featrob_run_start(context: RunContext) -> None:
    """Called once the model and data of a run are ready, before the first metric."""


@hookspec
def featrob_metric_result(name: str, result: MetricResult, context: RunContext) -> None:
    """Called after each metric finishes (or fails: then ``result.error`` holds the traceback)."""


@hookspec
def featrob_run_end(results: Results, context: RunContext) -> None:
    """Called after every metric ran, before reporters write the results."""

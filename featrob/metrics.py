"""The base class of every analysis (``featrob run`` runs metrics).

A metric declares its options and their defaults in ``defaults``; users override them in
the run config (``[metrics.NAME]`` in TOML or ``--set metrics.NAME.key=value``). It gets a
:class:`featrob.context.RunContext` and returns a :class:`featrob.results.MetricResult`.

Example::

    class CleanAccuracy(Metric):
        name = "clean_accuracy"
        description = "Accuracy on unperturbed inputs."

        def compute(self, ctx):
            logits = ctx.features("logits").values
            acc = (logits.argmax(1) == ctx.labels).float().mean().item()
            return MetricResult(summary={"accuracy": acc})
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from featrob.options import merge_options

if TYPE_CHECKING:
    from featrob.context import RunContext
    from featrob.results import MetricResult


class Metric(ABC):
    """An analysis of a model on a data split.

    Class attributes:
        name: registry name, also the key in results.json.
        description: one line for ``featrob plugins``.
        defaults: every option with its default ("small default budgets": the default run
            executes every installed metric on a 2-core CPU in minutes).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = merge_options("metric", self.name, self.defaults, options)

    @abstractmethod
    def compute(self, ctx: RunContext) -> MetricResult:
        """Run the analysis and return its result (raise on failure: the runner records it)."""

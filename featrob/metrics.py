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
    from featrob.plan import Passes, PlanInfo
    from featrob.results import MetricResult


class Metric(ABC):
    """An analysis of a model on a data split.

    Class attributes:
        name: registry name, also the key in results.json.
        description: one line for ``featrob plugins``.
        defaults: every option with its default: the ``standard`` budget.
        budgets: option overrides per run budget (``--budget``, :mod:`featrob.budgets`),
            ``{"quick": {...}, "paper": {...}}``: ``quick`` the smallest settings at which
            the result still means something (the default run executes every installed
            metric on a 2-core CPU in about a minute), ``paper`` the paper's own. The
            user's options override them; a budget left out runs ``defaults``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    budgets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = merge_options("metric", self.name, self.defaults, options)

    def passes(self, plan: PlanInfo) -> Passes | None:
        """At most how many forward and backward passes of one input :meth:`compute` will
        spend with these options (``featrob run --check`` prints it; stored rows cost
        nothing); None: not estimated. ``plan.attack_passes()`` counts the run's attacks."""
        return None

    @abstractmethod
    def compute(self, ctx: RunContext) -> MetricResult:
        """Run the analysis and return its result (raise on failure: the runner records it)."""

"""Run budgets: how much compute a run spends, from a first look to the papers' settings.

``--budget`` (config key ``budget``) picks one of three:

- ``quick`` (the default): every installed metric at the smallest budget at which its
  result still means something; robust accuracy from APGD-CE with 20 steps, an upper
  bound on the true robust accuracy (AutoAttack's standard version usually finds a few
  more adversarial examples);
- ``standard``: AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square 5,000) for
  robust accuracy and each metric's ``defaults``;
- ``paper``: each paper's own settings (sample, pair and projection counts, attack
  budgets, ablations), for reproducing the papers' tables; hours on a CPU.

A metric declares what changes per budget in its ``budgets`` class attribute; its
``defaults`` are the ``standard`` budget. The precedence is ``defaults`` < the budget's
options < the user's options (``[metrics.NAME]``, ``--set metrics.NAME.key=value``), and an
explicit ``--attack`` replaces the budget's attacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The budgets, cheapest first.
BUDGETS: tuple[str, ...] = ("quick", "standard", "paper")

#: The run's attacks under each budget when ``--attack`` is not given (presets allowed).
BUDGET_ATTACKS: dict[str, list[str]] = {
    "quick": ["apgd-ce(steps=20)"],
    "standard": ["standard"],
    "paper": ["standard"],
}

#: The command that runs the standard evaluation, for the upper-bound notes.
STANDARD_COMMAND = "featrob run --budget standard"


def budget_options(
    metric_cls: Any, budget: str, given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The options a metric class runs with under ``budget``: its budget's options, then
    the user's ``given`` ones on top (a metric without ``budgets`` gets ``given`` only).

    Args:
        metric_cls: a :class:`featrob.Metric` subclass.
        budget: ``quick``, ``standard`` or ``paper``.
        given: the user's options for this metric.
    """
    budgets = getattr(metric_cls, "budgets", None) or {}
    return {**budgets.get(budget, {}), **(given or {})}


def budget_attacks(budget: str) -> list[str]:
    """The run's attack specs under ``budget`` when the user names none."""
    return list(BUDGET_ATTACKS[budget])

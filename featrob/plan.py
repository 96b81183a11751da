"""What a run will spend, before it spends it: ``featrob run --check`` prints this plan.

Work is counted in forward and backward passes of one input through the model (a batch of
64 is 64 passes), the unit that does not depend on the batch size or the hardware. Each
attack says how many passes it spends per attacked sample (:meth:`featrob.Attack.passes`),
each metric how many it spends in all (:meth:`featrob.Metric.passes`); both are upper
bounds: attacks run only on the samples still robust, searches stop early, and rows already
in the feature store cost nothing. A metric that does not estimate its work shows ``?``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featrob.attacks.base import Attack
    from featrob.config import RunConfig


@dataclass(frozen=True)
class Passes:
    """Forward and backward passes of single inputs (an upper bound).

    Supports ``a + b`` and ``n * a``, so a metric writes its cost as it computes:
    ``n * attack.passes(k) + Passes(forward=n)``.
    """

    forward: int = 0
    backward: int = 0

    def __add__(self, other: Passes) -> Passes:
        return Passes(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, times: int | float) -> Passes:
        return Passes(round(self.forward * times), round(self.backward * times))

    __rmul__ = __mul__

    @property
    def total(self) -> int:
        """Forward plus backward passes (a backward pass costs about two forwards)."""
        return self.forward + self.backward


@dataclass(frozen=True)
class PlanInfo:
    """What a metric needs to count its passes without running (given to
    :meth:`featrob.Metric.passes`).

    Attributes:
        config: the run's configuration.
        n_samples: samples of the analysed split (after ``n_per_class``).
        n_train: samples of the training split.
        n_classes: classes of the data set.
        num_features: width of the model's ``features`` layer (0 when unknown).
        layers: the model's named layers, ``input`` first and ``logits`` last.
        attacks: the run's attacks (the budget's or ``--attack``), presets expanded.
        make_attack: ``make_attack(spec, **params)`` at the run's eps, norm and seed.
    """

    config: RunConfig
    n_samples: int
    n_train: int
    n_classes: int
    num_features: int
    layers: list[str]
    attacks: list[Attack]
    make_attack: Callable[..., Attack]

    def attack_passes(self, attacks: list[Attack] | None = None) -> Passes:
        """Passes of ``attacks`` (default: the run's) on every analysed sample, AutoAttack
        style (each would run only on the samples the previous ones left robust)."""
        total = Passes()
        for attack in self.attacks if attacks is None else attacks:
            total = total + self.n_samples * (attack.passes(self.n_classes) or Passes())
        return total

    def evaluation_passes(self, attacks: list[Attack] | None = None) -> Passes:
        """An AutoAttack-style evaluation (:func:`featrob.evaluate`) of every analysed
        sample: the attacks, a forward pass to check each one's result, and the clean
        checks (outputs, randomness, one input gradient)."""
        attacks = self.attacks if attacks is None else attacks
        checks = Passes(forward=self.n_samples * (3 + len(attacks)), backward=self.n_samples)
        return self.attack_passes(attacks) + checks


@dataclass
class PlanRow:
    """One metric's line of the plan."""

    metric: str
    passes: Passes | None
    options: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (results.json ``plan``)."""
        return {
            "metric": self.metric,
            "forward": None if self.passes is None else self.passes.forward,
            "backward": None if self.passes is None else self.passes.backward,
            "options": self.options,
            "error": self.error,
        }


def format_plan(info: PlanInfo, rows: list[PlanRow]) -> list[str]:
    """The plan as lines for the terminal: the data, model and attacks, then one line per
    metric with its passes (``?``: the metric does not estimate them)."""
    cfg = info.config
    attacks = ", ".join(a.name + _params(a) for a in info.attacks)
    lines = [
        f"budget {cfg.budget}: {info.n_samples} {cfg.split} samples of {cfg.dataset} "
        f"({info.n_classes} classes), model {cfg.model} ({info.num_features or '?'} features, "
        f"{len(info.layers)} layers), {cfg.norm} eps {cfg.eps:g}",
        f"attacks: {attacks}",
        "passes of one input, at most (stored rows and early exits cost less):",
    ]
    width = max([len(r.metric) for r in rows] + [6])
    lines.append(f"  {'metric':<{width}}  {'forward':>12}  {'backward':>12}")
    total = Passes()
    for row in rows:
        if row.error:
            lines.append(f"  {row.metric:<{width}}  {'?':>12}  {'?':>12}  ({row.error})")
        elif row.passes is None:
            lines.append(f"  {row.metric:<{width}}  {'?':>12}  {'?':>12}  (not estimated)")
        else:
            total = total + row.passes
            lines.append(
                f"  {row.metric:<{width}}  {row.passes.forward:>12,}  {row.passes.backward:>12,}"
            )
    lines.append(f"  {'total':<{width}}  {total.forward:>12,}  {total.backward:>12,}")
    return lines


def _params(attack: Attack) -> str:
    changed = {k: v for k, v in attack.params.items() if attack.defaults.get(k) != v}
    return "(" + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")" if changed else ""

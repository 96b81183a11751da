"""Attack base class and the conventions every perturbation method follows.

An attack perturbs a batch ``x`` (pixel space, [0, 1]) within an ``eps`` ball of a norm and
returns ``x_adv`` of the same shape. It maximises ``loss(forward(x_adv), y)`` per sample, so
the same attack maximises cross-entropy, a logit margin, one feature of a layer, or a
surrogate ensemble's loss: pass the matching ``forward`` and ``loss``. ``y`` is whatever
per-sample target data ``loss`` needs (labels, feature indices, ...), sliced with ``x``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from featrob import seeding
from featrob.errors import ConfigError, check_finite_nonnegative
from featrob.options import merge_options
from featrob.plan import Passes
from featrob.seeding import sample_seeds as make_seeds
from featrob.specs import parse_norm

#: ``x -> outputs`` (logits, features, ...); must be differentiable for gradient attacks.
Forward = Callable[[Tensor], Tensor]
#: ``(outputs, y) -> per-sample loss [B]`` that the attack maximises.
LossFn = Callable[[Tensor, Tensor], Tensor]
#: ``(outputs, y) -> bool [B]``: True where the sample is already adversarial.
SuccessFn = Callable[[Tensor, Tensor], Tensor]

NORMS = ("linf", "l2")


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Best wrong logit minus true logit (positive means misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return wrong - true


def misclassified(logits: Tensor, y: Tensor) -> Tensor:
    """True where the arg-max class differs from the label."""
    return logits.argmax(1) != y


class Attack(ABC):
    """A perturbation method. Subclass it and register the class in a plugin.

    Class attributes:
        name: registry name (``"pgd"``).
        description: one line for ``featrob plugins``.
        norms: the threat models the attack supports.
        defaults: every parameter the attack takes, with its default value. Unknown
            parameters are rejected with close matches.
        uses_gradients: False for noise and score-based attacks.
        min_classes: the fewest classes the attack works with (DLR losses need 3 or 4).
        batch_invariant: a sample's result depends only on the sample and its seed, never on
            the rest of the batch (True for every built-in attack; an adapter of a library
            that draws from a global generator sets False and says so).

    Args:
        eps: radius of the perturbation ball (pixel units, [0, 1] images).
        norm: ``"linf"`` or ``"l2"``.
        seed: attack seed; random numbers are drawn per sample, see :mod:`featrob.seeding`.
        **params: overrides of :attr:`defaults`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = NORMS
    defaults: ClassVar[dict[str, Any]] = {}
    uses_gradients: ClassVar[bool] = True
    min_classes: ClassVar[int] = 2
    batch_invariant: ClassVar[bool] = True

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        self.eps = check_finite_nonnegative("eps", eps)
        self.norm = parse_norm(norm)
        if self.norm not in self.norms:
            raise ConfigError(
                f"attack {self.name!r} supports norms {', '.join(self.norms)}, not {self.norm!r}"
            )
        if self.norm == "linf" and self.eps > 1:
            raise ConfigError(f"Linf eps must be in [0, 1] for [0, 1] images, got {self.eps}")
        self.seed = int(seed)
        self.params: dict[str, Any] = merge_options("attack", self.name, self.defaults, params)

    def spec(self) -> dict[str, Any]:
        """Everything that determines the result: the attack's identity in the store."""
        return {
            "attack": self.name,
            "eps": self.eps,
            "norm": self.norm,
            "seed": self.seed,
            "params": dict(sorted(self.params.items())),
        }

    def label(self) -> str:
        """Short human-readable name, e.g. ``pgd(linf, eps=0.1)``."""
        return f"{self.name}({self.norm}, eps={self.eps:g})"

    @abstractmethod
    def perturb(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        success: SuccessFn | None = None,
        sample_seeds: Tensor | None = None,
    ) -> Tensor:
        """Return adversarial inputs for the batch ``x``.

        Args:
            forward: the model (or any differentiable ``x -> outputs``).
            x: clean inputs in [0, 1].
            y: per-sample targets for ``loss`` (class labels by default).
            loss: per-sample objective to maximise; default cross-entropy.
            success: marks samples that are already adversarial; default "misclassified"
                when ``loss`` is None, else None (keep the highest-loss iterate).
            sample_seeds: int64 per-sample seeds (default: from ``seed`` and the position in
                the batch, which makes the result depend on batching).

        Returns:
            ``x_adv`` with ``x_adv - x`` inside the eps ball and ``x_adv`` in [0, 1].
        """

    def passes(self, n_classes: int) -> Passes | None:
        """At most how many forward and backward passes the attack spends on one sample
        with ``n_classes`` classes (for ``featrob run --check``); None: not estimated."""
        return None

    def with_params(self, **params: Any) -> Attack:
        """A copy of this attack (same eps, norm and seed) with some parameters replaced."""
        return type(self)(self.eps, self.norm, self.seed, **{**self.params, **params})

    def __call__(self, model: Forward, x: Tensor, y: Tensor, **kwargs: Any) -> Tensor:
        """Shorthand for :meth:`perturb`."""
        return self.perturb(model, x, y, **kwargs)

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm!r}, {extra})"

    # ------------------------------------------------------------------ helpers
    def _seeds(self, x: Tensor, sample_seeds: Tensor | None) -> Tensor:

        if sample_seeds is None:
            return make_seeds(self.seed, torch.arange(len(x)))
        if len(sample_seeds) != len(x):
            raise ConfigError(f"{len(sample_seeds)} sample seeds for a batch of {len(x)}")
        return sample_seeds

    def loss_and_grad(
        self, forward: Forward, x: Tensor, y: Tensor, loss_fn: LossFn
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Outputs, per-sample loss and d(loss)/dx at ``x`` (all detached).

        Works inside ``torch.no_grad()`` and never touches parameter ``.grad``. Inputs the
        loss does not use get a zero gradient.

        Raises:
            ConfigError: the loss does not depend differentiably on the input.
        """
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = forward(x_in)
            value = loss_fn(out, y)
            if not value.requires_grad:
                raise ConfigError(
                    f"{self.name}: the loss does not depend differentiably on the input; "
                    "gradient attacks need a differentiable forward"
                )
            (grad,) = torch.autograd.grad(value.sum(), x_in, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(x_in)
        return out.detach(), value.detach(), grad

    @staticmethod
    def _defaults_for(
        loss: LossFn | None, success: SuccessFn | None
    ) -> tuple[LossFn, SuccessFn | None]:
        if loss is None:
            return cross_entropy, success if success is not None else misclassified
        return loss, success


@dataclass
class MinNormResult:
    """What a minimum-norm attack found per sample.

    Attributes:
        x_adv: the smallest adversarial input found (the clean input where none was found).
        norm: its perturbation norm (``inf`` where none was found).
        success: True where an adversarial input was found.
    """

    x_adv: Tensor
    norm: Tensor
    success: Tensor


class MinimumNormAttack(Attack):
    """An attack that searches for the smallest adversarial perturbation.

    :meth:`minimize` returns the smallest perturbation found, whatever its size; ``eps``
    only decides success in :meth:`perturb` (and may size random restarts). Metrics that need
    measured minimal perturbation sizes (compression, collision) call :meth:`minimize`.
    """

    @abstractmethod
    def minimize(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None = None,
        sample_seeds: Tensor | None = None,
        pairwise: bool = False,
    ) -> MinNormResult:
        """Smallest perturbation that changes the prediction (towards ``target`` if given).

        Args:
            forward: the model returning logits.
            x: clean inputs in [0, 1].
            y: true labels.
            target: per-sample target classes ``[B]``; None for untargeted.
            sample_seeds: per-sample seeds for random restarts.
            pairwise: with ``target``: success once ``f_target > f_y`` (crossing that one
                pairwise boundary) rather than once the prediction is ``target``.
                Attacks that cannot do this raise :class:`ConfigError`.
        """

    def perturb(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        success: SuccessFn | None = None,
        sample_seeds: Tensor | None = None,
    ) -> Tensor:
        """The adversarial input :meth:`search_within_eps` found where its norm is within
        ``eps``, else ``x``."""
        if loss is not None:
            raise ConfigError(f"{self.name} is a minimum-norm attack on logits; it takes no loss")
        found = self.search_within_eps(forward, x, y, sample_seeds=sample_seeds)
        ok = found.success & (found.norm <= self.eps * (1 + 1e-6))
        return torch.where(ok.view(-1, *([1] * (x.dim() - 1))), found.x_adv, x.clamp(0, 1))

    def search_within_eps(
        self, forward: Forward, x: Tensor, y: Tensor, *, sample_seeds: Tensor | None = None
    ) -> MinNormResult:
        """The search behind :meth:`perturb`: :meth:`minimize` by default; an attack may stop
        on a sample once it has a perturbation within ``eps`` (FAB's early exit)."""
        return self.minimize(forward, x, y, sample_seeds=sample_seeds)


# ---------------------------------------------------------------------- early exit
#: How often (in steps) an attack on an accelerator looks for samples it can stop spending
#: passes on. Shrinking the active batch needs the broken flags on the host: free on a CPU,
#: one synchronisation (a stall of the launch queue) on a GPU. Checking every 4th step costs
#: at most 3 wasted steps per broken sample and one sync per 4 steps. The returned points
#: never depend on it: an attack with early exit returns each sample's first successful
#: iterate, however late it stops computing that sample.
EXIT_CHECK_EVERY_ACCELERATOR = 4


def exit_interval(device: torch.device) -> int:
    """Steps between two early-exit checks on ``device``: every step on a CPU, else
    :data:`EXIT_CHECK_EVERY_ACCELERATOR`."""
    return 1 if device.type == "cpu" else EXIT_CHECK_EVERY_ACCELERATOR


def retire(
    done: Tensor, rows: Tensor, results: Sequence[Tensor], current: Sequence[Tensor]
) -> tuple[Tensor, Tensor]:
    """Early exit's bookkeeping: the samples marked ``done`` leave the running batch.

    Writes their ``current`` values (running-batch tensors) into ``results`` (whole-batch
    tensors) at their positions ``rows``, and returns the positions still running and the
    indices into the running batch that keep them (for the caller to index its state with).
    """
    gone, keep = done.nonzero().squeeze(1), (~done).nonzero().squeeze(1)
    for result, value in zip(results, current, strict=True):
        result[rows[gone]] = value[gone]
    return rows[keep], keep


def without_early_exit(attack: Attack) -> Attack:
    """``attack`` with ``early_exit=False`` where it has that parameter (else unchanged).

    For callers that use the adversarial points, not only the flags: features at attacked
    inputs, adversarial training, attacks run on a surrogate and judged on another model.
    """
    if attack.params.get("early_exit"):
        return attack.with_params(early_exit=False)
    return attack


# ---------------------------------------------------------------------- iterate bookkeeping
def expand_batch(t: Tensor, like: Tensor) -> Tensor:
    """``[B]`` -> ``[B, 1, 1, ...]`` broadcastable against ``like``."""
    return t.view(-1, *([1] * (like.dim() - 1)))


def take_rows(take: Tensor, new: Tensor, old: Tensor, *, in_place: bool = False) -> Tensor:
    """``where(take, new, old)`` per sample (``take`` ``[B]`` bool) for finite ``new`` and
    ``old``, computed as ``lerp(old, new, take)``: with weights 0 and 1 lerp selects exactly
    (``old + 0 (new - old)``, ``new - (new - old) 0``), and on CPUs it costs a third to a half
    of a ``where`` with a broadcast mask. Attack loops select points this way every step.
    ``in_place``: write into ``old`` (a buffer the caller owns) instead of a new tensor,
    which saves an allocation per step as well."""
    weight = expand_batch(take, new).to(new.dtype)
    return old.lerp_(new, weight) if in_place else torch.lerp(old, new, weight)


def finite_score(loss: Tensor) -> Tensor:
    """Detached float64 loss with NaN mapped to -inf, so a NaN iterate is never the best."""
    loss = loss.detach().double()
    return torch.where(torch.isnan(loss), torch.full_like(loss, float("-inf")), loss)


def better_iterate(score: Tensor, ok: Tensor, best_score: Tensor, best_ok: Tensor) -> Tensor:
    """Per sample: does the new iterate beat the best so far? Success beats failure; among
    equals the higher loss wins; ties keep the earlier iterate."""
    return (ok & ~best_ok) | ((ok == best_ok) & (score > best_score))


# ---------------------------------------------------------------------- geometry helpers
def flat_norm(t: Tensor, norm: str) -> Tensor:
    """Per-sample norm of ``t`` (``[B]``)."""
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(p=2, dim=1)


def project(delta: Tensor, eps: float, norm: str) -> Tensor:
    """Project perturbations onto the eps ball of ``norm``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / flat_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale.view(-1, *([1] * (delta.dim() - 1)))


def steepest_direction(grad: Tensor, norm: str) -> Tensor:
    """Unit-norm steepest ascent direction: ``sign(g)`` for Linf, ``g / ||g||`` for L2.

    Non-finite gradient entries are treated as zero, so a NaN gradient never produces a NaN
    adversarial example.
    """
    if norm == "linf":
        return grad.sign().nan_to_num_(nan=0.0)  # sign(+-inf) = +-1 is a fine direction
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    n = flat_norm(grad, "l2").clamp_min(1e-12)
    return grad / n.view(-1, *([1] * (grad.dim() - 1)))


def random_in_ball(
    seeds: Tensor, shape: tuple[int, ...], eps: float, norm: str, stream: int = 0
) -> Tensor:
    """A random point of the eps ball per sample (uniform in the Linf cube; for L2 uniform in
    the ball: Gaussian direction, radius eps * u^(1/d)), drawn from per-sample seeds."""

    if norm == "linf":
        return (seeding.uniform(seeds, shape, stream) * 2 - 1) * eps
    direction = seeding.normal(seeds, shape, stream)
    direction = direction / flat_norm(direction, "l2").clamp_min(1e-12).view(
        -1, *([1] * len(shape))
    )
    d = math.prod(shape)
    radius = seeding.uniform(seeds, (1,), stream + 7919).squeeze(1) ** (1.0 / d) * eps
    return direction * radius.view(-1, *([1] * len(shape)))

"""Attacking a model through something else: surrogate ensembles and BPDA.

Transfer and obfuscation-aware evaluations generate adversarial examples on a surrogate
(another model, an ensemble, or the target with its non-differentiable parts replaced in the
backward pass) and evaluate them on the target. :func:`featrob.attacks.evaluate` takes a
surrogate per attack; this module builds them.

BPDA (Athalye et al., ICML 2018, "Obfuscated gradients give a false sense of security"):
a module whose forward is not usefully differentiable (input quantisation, a hard
straight-through assignment in a head) provides a differentiable stand-in by defining
``bpda_substitute(self) -> nn.Module``. :func:`with_bpda` runs the true forward and takes the
gradient of the substitute: ``out = g(x) + (f(x) - g(x)).detach()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featrob.errors import ConfigError

Forward = Callable[[Tensor], Tensor]


class Ensemble(nn.Module):
    """Several models attacked as one.

    Args:
        models: classifiers returning logits over the same classes.
        combine: ``"logits"`` averages logits; ``"log_softmax"`` averages log-probabilities
            (the usual choice when the members' logit scales differ).
        weights: member weights (default equal).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        combine: str = "logits",
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not models:
            raise ConfigError("an ensemble needs at least one model")
        if combine not in ("logits", "log_softmax"):
            raise ConfigError(
                f"unknown ensemble combination {combine!r}; use 'logits' or 'log_softmax'"
            )
        self.members = nn.ModuleList(models)
        w = torch.tensor(
            list(weights) if weights is not None else [1.0] * len(models), dtype=torch.float32
        )
        if len(w) != len(models) or (w < 0).any() or w.sum() <= 0:
            raise ConfigError("ensemble weights must be non-negative, one per model, not all zero")
        self.register_buffer("weights", w / w.sum(), persistent=False)
        self.combine = combine

    def forward(self, x: Tensor) -> Tensor:
        """Weighted mean of the members' logits (or log-probabilities)."""
        outs = [m(x) for m in self.members]
        if self.combine == "log_softmax":
            outs = [F.log_softmax(o, dim=1) for o in outs]
        stacked = torch.stack(outs)
        return (self.weights.to(stacked).view(-1, 1, 1) * stacked).sum(0)


def bpda_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules of ``model`` that provide a BPDA substitute."""
    return [
        (n, m) for n, m in model.named_modules() if callable(getattr(m, "bpda_substitute", None))
    ]


@contextmanager
def bpda_hooks(model: nn.Module) -> Iterator[int]:
    """Within the context, every module with ``bpda_substitute()`` keeps its forward value but
    takes its gradient from the substitute. Yields the number of substituted modules."""
    handles = []
    for _, module in bpda_modules(model):
        substitute = module.bpda_substitute()

        def hook(
            _m: nn.Module, inputs: tuple, output: Tensor, substitute: nn.Module = substitute
        ) -> Tensor:
            smooth = substitute(*inputs)
            return smooth + (output - smooth).detach()

        handles.append(module.register_forward_hook(hook))
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


class BPDA(nn.Module):
    """``model`` with every BPDA-capable module differentiated through its substitute.

    Raises:
        ConfigError: the model has no module providing ``bpda_substitute()``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not bpda_modules(model):
            raise ConfigError(
                "BPDA needs a module with a bpda_substitute() method (a differentiable stand-in "
                "for its forward); the model has none"
            )
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        """True forward values, substitute gradients."""
        with bpda_hooks(self.model):
            return self.model(x)


class InputQuantization(nn.Module):
    """Rounds inputs to ``levels`` grey levels: a classic gradient-masking defence (its
    gradient is zero almost everywhere). Its BPDA substitute is the identity."""

    def __init__(self, levels: int = 8) -> None:
        super().__init__()
        self.levels = int(levels)

    def forward(self, x: Tensor) -> Tensor:
        """``round(x * (levels - 1)) / (levels - 1)``."""
        scale = self.levels - 1
        return torch.round(x * scale) / scale

    def bpda_substitute(self) -> nn.Module:
        """The identity: quantisation is approximately the identity map."""
        return nn.Identity()

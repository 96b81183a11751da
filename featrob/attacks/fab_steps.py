"""FAB's per-step helpers: the success test and the logit Jacobians (two ways to get them).

FAB (:mod:`featrob.attacks.fab`) needs, at each step of the untargeted attack, the gradients
of all K logits with respect to the input: one forward pass and either K backward passes
through a retained graph, or one backward pass vectorised over the K one-hot cotangents.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featrob.attacks.base import Forward
from featrob.errors import ConfigError

JACOBIANS = ("vmap", "loop")


def _is_adversarial(
    logits: Tensor, y: Tensor, target: Tensor | None, pairwise: bool = False
) -> Tensor:
    """``[B]`` bool: prediction is ``target`` (or differs from ``y`` where ``target`` is None;
    with ``pairwise``, ``f_target > f_y`` whatever the other classes do); rows with
    non-finite logits never count."""
    finite = torch.isfinite(logits).all(1)
    if pairwise and target is not None:
        rows = torch.arange(len(logits), device=logits.device)
        return finite & (logits[rows, target] > logits[rows, y])
    pred = logits.argmax(1)
    hit = pred != y if target is None else pred == target
    return finite & hit


def _differentiable(logits: Tensor) -> Tensor:
    """``logits``, or :class:`ConfigError` when they do not depend on the input."""
    if not logits.requires_grad:
        raise ConfigError(
            "fab: the logits do not depend differentiably on the input; "
            "FAB needs a differentiable forward"
        )
    return logits


def _jacobian_vmap(forward: Forward, x: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``[B, K]`` and their Jacobian ``[B, K, *x.shape[1:]]``: one forward, and one
    backward vectorised over the K one-hot cotangents (``torch.func.vjp`` + ``vmap``)."""
    with torch.no_grad():  # the outer no_grad keeps parameters out of the graph
        logits, vjp_fn = torch.func.vjp(lambda inp: _differentiable(forward(inp)), x)
        k = logits.shape[1]
        eye = torch.eye(k, dtype=logits.dtype, device=logits.device)
        (jac,) = torch.func.vmap(vjp_fn)(eye[:, None, :].expand(k, len(x), k))
    return logits, jac.movedim(0, 1)


def _jacobian_loop(forward: Forward, x: Tensor) -> tuple[Tensor, Tensor]:
    """Same as :func:`_jacobian_vmap` with K backward passes through a retained graph."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = _differentiable(forward(x_in))
        k = logits.shape[1]
        rows = []
        for j in range(k):
            (g,) = torch.autograd.grad(
                logits[:, j].sum(), x_in, retain_graph=j < k - 1, allow_unused=True
            )
            rows.append(torch.zeros_like(x_in) if g is None else g)
    return logits.detach(), torch.stack(rows, 1)

"""Many small two-output networks trained at once: the batched model and its trainer behind
``featrob compression theory`` (paper 001, Section 6).

Every network of an experiment is one slice ``[r]`` of batched weights, so one ``bmm``
serves all of them. The trainer writes the backward pass out by hand (two outputs, one hidden
layer: a handful of batched matrix products) instead of asking autograd, which keeps one
``[R, N, h]`` activation alive instead of three; at hidden width 3,000 that is the memory and
most of the time. Optimiser: full-batch Adam (PyTorch's defaults) or plain gradient descent.

``stop_at_fit`` ends each network's training at the first step at which it classifies every
training point correctly (the paper's "valid run" criterion, read literally): a network
that fits leaves the batch (its weights and optimiser state are indexed away, as attacks
drop broken samples), so the others train on alone and no time goes to fitted networks.
Networks stop nearer their initialisation that way (the near-lazy regime of a wide layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Nets", "TrainReport", "init_nets", "train_nets"]


@dataclass
class Nets:
    """R one-hidden-layer networks ``W2 act(W1 x + b1) + b2`` with two outputs."""

    w1: Tensor  # [R, h, n]
    b1: Tensor  # [R, h]
    w2: Tensor  # [R, 2, h]
    b2: Tensor  # [R, 2]
    relu: bool

    def double(self) -> Nets:
        """The same networks in float64 (they train in float32, several times faster on a
        CPU, and are measured in float64)."""
        return self.map(lambda t: t.double())

    def map(self, fn: Callable[[Tensor], Tensor]) -> Nets:
        """The networks with ``fn`` applied to every weight tensor (indexing, dtype)."""
        return Nets(fn(self.w1), fn(self.b1), fn(self.w2), fn(self.b2), self.relu)

    def hidden(self, x: Tensor) -> Tensor:
        """Pre-activations ``[R, N, h]`` for inputs ``x`` ``[R, N, n]``."""
        return torch.baddbmm(self.b1[:, None], x, self.w1.transpose(1, 2))

    def __call__(self, x: Tensor) -> Tensor:
        z = self.hidden(x)
        if self.relu:
            z = z.relu_()
        return torch.baddbmm(self.b2[:, None], z, self.w2.transpose(1, 2))

    def class_gradients(self, x: Tensor) -> Tensor:
        """``[R, N, 2, n]``: the input gradient of each output, in closed form
        (``W1^T diag(act'(z)) W2[k]``)."""
        if self.relu:
            mask = (self.hidden(x) > 0).to(x.dtype)  # [R, N, h]
            return torch.einsum("rbh,rkh,rhn->rbkn", mask, self.w2, self.w1)
        probe = torch.einsum("rkh,rhn->rkn", self.w2, self.w1)
        return probe[:, None].expand(-1, x.shape[1], -1, -1)


def init_nets(runs: int, n: int, hidden: int, relu: bool, gen: torch.Generator) -> Nets:
    """PyTorch-default (Kaiming-uniform) initialisation, float32."""

    def uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
        bound = 1 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=gen) * 2 - 1) * bound

    return Nets(
        uniform((runs, hidden, n), n),
        uniform((runs, hidden), n),
        uniform((runs, 2, hidden), hidden),
        uniform((runs, 2), hidden),
        relu,
    )


@dataclass
class TrainReport:
    """What training did, per network ``[R]``."""

    accuracy: Tensor  # training accuracy of the returned weights
    steps: Tensor  # optimiser steps taken (int64)


def _gradients(nets: Nets, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
    """Gradients of each network's mean cross-entropy w.r.t. ``(w1, b1, w2, b2)``, and
    whether each network classifies every point correctly ``[R]`` (at these weights)."""
    z = nets.hidden(x)  # [R, N, h]
    if nets.relu:
        z.relu_()  # z is now the activation; z > 0 is the ReLU's derivative
    logits = torch.baddbmm(nets.b2[:, None], z, nets.w2.transpose(1, 2))  # [R, N, 2]
    fits = (logits.argmax(-1) == y).all(1)
    dlogits = torch.softmax(logits, -1) - F.one_hot(y, 2).to(logits.dtype)
    dlogits /= x.shape[1]  # mean over the points
    g_w2 = torch.bmm(dlogits.transpose(1, 2), z)
    g_b2 = dlogits.sum(1)
    dz = torch.bmm(dlogits, nets.w2)  # [R, N, h]
    if nets.relu:
        dz = torch.ops.aten.threshold_backward(dz, z, 0)  # zero where the unit was off
    g_w1 = torch.bmm(dz.transpose(1, 2), x)
    g_b1 = dz.sum(1)
    return [g_w1, g_b1, g_w2, g_b2], fits


def train_nets(
    nets: Nets,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float,
    optimizer: str = "adam",
    stop_at_fit: bool = False,
) -> TrainReport:
    """Train every network on its own data, full batch, in float32 (in place).

    Args:
        nets: the networks (float32); their tensors are replaced by the trained ones.
        x: inputs ``[R, N, n]``; y: labels ``[R, N]`` in {0, 1}.
        steps: optimiser steps (at most, with ``stop_at_fit``).
        lr: learning rate.
        optimizer: ``"adam"`` (betas 0.9, 0.999, eps 1e-8) or ``"sgd"`` (plain gradient
            descent).
        stop_at_fit: stop each network at the first weights that fit every training point.

    Returns:
        Training accuracy and steps taken per network.
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be adam or sgd, got {optimizer!r}")
    x, runs = x.float(), x.shape[0]
    x_all, y_all = x, y
    params = [nets.w1.float(), nets.b1.float(), nets.w2.float(), nets.b2.float()]
    done = [p.clone() for p in params]  # final weights, filled as networks leave
    taken = torch.full((runs,), steps, dtype=torch.int64)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    rows = torch.arange(runs)  # networks still training
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(steps):
        grads, fits = _gradients(Nets(*params, nets.relu), x, y)
        if stop_at_fit and bool(fits.any()):
            leave = torch.nonzero(fits).squeeze(1)
            for out, p in zip(done, params, strict=True):
                out[rows[leave]] = p[leave]
            taken[rows[leave]] = step
            keep = torch.nonzero(~fits).squeeze(1)
            rows = rows[keep]
            params, grads, m, v = ([t[keep] for t in ts] for ts in (params, grads, m, v))
            x, y = x[keep], y[keep]
            if not len(rows):
                break
        t = step + 1
        for p, g, mi, vi in zip(params, grads, m, v, strict=True):
            if optimizer == "sgd":
                p.sub_(g, alpha=lr)
                continue
            mi.mul_(beta1).add_(g, alpha=1 - beta1)
            vi.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (vi / (1 - beta2**t)).sqrt_().add_(eps)
            p.addcdiv_(mi, denom, value=-lr / (1 - beta1**t))
    for out, p in zip(done, params, strict=True):
        out[rows] = p
    nets.w1, nets.b1, nets.w2, nets.b2 = done
    return TrainReport(accuracy=_accuracy(nets, x_all, y_all), steps=taken)


def _accuracy(nets: Nets, x: Tensor, y: Tensor) -> Tensor:
    """Training accuracy per network ``[R]`` (float64)."""
    with torch.no_grad():
        return (nets(x.float()).argmax(-1) == y).double().mean(1)

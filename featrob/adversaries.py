"""How training crafts adversarial examples: shared by featrob's training methods and any
plugin's (the IKL loss of the ``hpm`` plugin uses :func:`kl_adversary`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from featrob.attacks.base import project, steepest_direction
from featrob.attacks.surrogate import bpda_hooks
from featrob.models.base import FeatrobModel


@contextlib.contextmanager
def crafting(model: FeatrobModel) -> Iterator[None]:
    """How adversarial training crafts its examples: the model in eval mode (the attack's
    iterates must not move batch-norm statistics) and every module with a BPDA substitute
    differentiated through it. An HPM head's hard assignment passes no gradient in eval
    mode; through its substitute the attack sees the straight-through gradient the head
    trains with. Callers switch back to train mode for the update."""
    model.eval()
    with bpda_hooks(model):
        yield


def kl_adversary(model: FeatrobModel, x: Tensor, eps: float, norm: str, steps: int) -> Tensor:
    """TRADES' inner maximisation: ``x'`` maximising ``KL(f(x) || f(x'))`` by ``steps``
    steepest-ascent steps of ``2.5 eps / steps`` from ``x + 0.001 N(0, I)``, in the eps ball
    and the [0, 1] box, crafted as :func:`crafting` says. The model is left in eval mode
    (callers switch back to train)."""
    with crafting(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        delta = 0.001 * torch.randn_like(x)
        step = 2.5 * eps / max(steps, 1)
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                kl = F.kl_div(F.log_softmax(model(x + delta), 1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, delta)
            delta = project(delta.detach() + step * steepest_direction(grad, norm), eps, norm)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()

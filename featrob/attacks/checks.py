"""Sanity checks that flag unreliable robustness evaluations (gradient masking and friends).

Modelled on AutoAttack's checks (Croce & Hein; see its ``flags_doc.md``): a model that
returns probabilities instead of logits, a randomised model, zero or NaN input gradients
(gradient attacks are blind there), and a black-box attack beating the white-box ones (the
signature of masked gradients). Each check returns warning lines; none of them stops the
evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from featrob.errors import ModelError

Forward = Callable[[Tensor], Tensor]

#: Square attack improving on the white-box attacks by more than this share of samples.
SQUARE_GAP = 0.002


def check_outputs(forward: Forward, x: Tensor, what: str = "model") -> tuple[Tensor, list[str]]:
    """Logits of ``forward`` on ``x``, checked: a tuple or a wrong shape is an error; outputs
    that look like probabilities are a warning (attacks need logits)."""
    with torch.no_grad():
        out = forward(x)
    if isinstance(out, (tuple, list)):
        raise ModelError(
            f"the {what} returns a {type(out).__name__}; featrob needs a tensor of logits "
            f"[batch, classes] (wrap the model so it returns only the logits)"
        )
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelError(
            f"the {what} returns {shape} for {x.shape[0]} inputs; featrob needs [batch, classes]"
        )
    warnings = []
    if (
        out.numel()
        and bool((out.min() > -1e-5) & (out.max() < 1 + 1e-5))
        and bool(((out.sum(1) - 1).abs() < 1e-5).all())
    ):
        warnings.append(
            f"the {what}'s outputs look like probabilities (in [0, 1], summing to 1); attacks "
            "need logits, and cross-entropy on probabilities masks gradients"
        )
    return out, warnings


def check_randomized(forward: Forward, x: Tensor, first: Tensor, what: str = "model") -> list[str]:
    """Warn when a second forward pass on the same inputs gives other outputs."""
    with torch.no_grad():
        second = forward(x)
    scale = first.norm(dim=1, keepdim=True).clamp_min(1e-10)
    if ((first - second) / scale).norm(dim=1).max() > 1e-4 or not torch.equal(
        first.argmax(1), second.argmax(1)
    ):
        return [
            f"the {what} is randomised (two passes on the same inputs differ); use an "
            "expectation-over-transformation attack, single-run robust accuracy is unreliable"
        ]
    return []


def gradient_flags(forward: Forward, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample masks: input gradient of the cross-entropy is all zero / has NaNs."""
    with torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(forward(x_in), y, reduction="sum")
        if not loss.requires_grad:
            return torch.ones(len(x), dtype=torch.bool), torch.zeros(len(x), dtype=torch.bool)
        (grad,) = torch.autograd.grad(loss, x_in, allow_unused=True)
    if grad is None:
        return torch.ones(len(x), dtype=torch.bool), torch.zeros(len(x), dtype=torch.bool)
    flat = grad.detach().flatten(1)
    nan = torch.isnan(flat).any(1)
    zero = (torch.nan_to_num(flat, nan=0.0).abs().sum(1) == 0) & ~nan
    return zero.cpu(), nan.cpu()


def gradient_warnings(zero: Tensor, nan: Tensor, what: str) -> list[str]:
    """Warning lines for the gradient flags of one attacked forward."""
    out = []
    if int(zero.sum()):
        out.append(
            f"{int(zero.sum())} of {len(zero)} samples have zero input gradients on the {what}: "
            "gradient attacks cannot move them (gradient masking?); try BPDA or a black-box attack"
        )
    if int(nan.sum()):
        out.append(
            f"{int(nan.sum())} of {len(nan)} samples have NaN input gradients on the {what}; "
            "their gradient steps were skipped (NaN entries count as zero)"
        )
    return out


def square_gap_warning(extra_broken: int, total: int) -> list[str]:
    """Warn when the Square attack broke more than 0.2% of the samples the white-box attacks
    left robust: gradients may be masked."""
    if total and extra_broken / total > SQUARE_GAP:
        return [
            "the Square attack (black box) lowered robust accuracy by "
            f"{100 * extra_broken / total:.2f} points after the white-box attacks: gradients may "
            "be masked; consider adaptive attacks (BPDA, more Square queries and restarts)"
        ]
    return []

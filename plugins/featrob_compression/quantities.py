"""Per-pair compression quantities of a real model, batched over pairs.

For a sample ``x`` of class ``y``, its partner ``x'`` of class ``y'`` and
``g = f_y - f_y'`` (logit difference), with ``d = x' - x``:

* ``d_opt = ||d|| / 2``: what the minimum-distance (optimal) classifier tolerates towards x'.
* ``local_ratio = ||P d|| / ||d||``, ``P`` the projection onto ``span{grad f_y(x),
  grad f_y'(x)}`` (Theorem 7), and ``abs_cos = |cos(grad g(x), d)|`` (never larger, since
  ``grad g`` lies in that span).
* Path quantities (Section 5, eq. 8): ``g(x') - g(x) = int_0^L |grad g(x_l)| cos theta_l dl``
  along the segment (``L = ||d||``). With K points ``x_t = x + t d`` at the midpoints
  ``t = (k + 1/2) / K`` (the midpoint rule for that integral):

  - ``path_cosine`` = mean of ``cos(grad g(x_t), d)`` (negative when g falls along the path,
    as it must on average to reach the other class); ``path_compression = -path_cosine``;
  - ``path_grad_norm`` = mean of ``|grad g(x_t)|``;
  - ``path_identity_error``: relative error of the quadrature of eq. 8, i.e. of
    ``mean_t(grad g(x_t) . d)`` against ``g(x') - g(x)`` (small when K is large enough);
  - ``predicted_length = (g(x) - g(x')) / path_grad_norm``: eq. 9's attacker, who moves
    along ``-grad g`` (cos = 1) with the path's mean gradient norm, needs this length to
    change g as much as the direct path does (the issue's definition, after the paper);
  - ``predicted_boundary = g(x) / path_grad_norm``: the same argument stopped at the
    decision boundary ``g = 0``, which is all a misclassification towards y' needs
    (derived here; this is the number comparable to a measured minimal perturbation);
  - ``linear_boundary = g(x) / |grad g(x)|``: the first-order distance to the boundary with
    the gradient at x only (the paper's ImageNet variant, a DeepFool step).

Gradients are taken in float32 on the model's eval-mode forward (BatchNorm frozen), so the
samples of a batch do not interact and one backward pass of the summed selected logits
gives every sample's gradient at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from featrob_compression.geometry import cosine, projection_ratio

Forward = Callable[[Tensor], Tensor]

#: Names of the per-pair quantities :func:`pair_quantities` returns (float64 ``[P]`` each).
PAIR_FIELDS = (
    "d_opt",
    "g_start",
    "g_end",
    "grad_norm",
    "local_ratio",
    "abs_cos",
    "path_cosine",
    "path_compression",
    "path_grad_norm",
    "path_identity_error",
    "predicted_length",
    "predicted_boundary",
    "linear_boundary",
)


def class_gradients(
    forward: Forward, x: Tensor, cotangents: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """Logits at ``x`` and ``sum_k c[b, k] grad f_k(x_b)`` for each cotangent ``c`` ``[B, K]``.

    One forward pass and one backward pass per cotangent (the graph is kept between them).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(x)
        grads = []
        for i, cot in enumerate(cotangents):
            (g,) = torch.autograd.grad(
                logits, x, grad_outputs=cot.to(logits.dtype), retain_graph=i < len(cotangents) - 1
            )
            grads.append(g.detach())
    return logits.detach(), grads


def path_points(x: Tensor, x2: Tensor, points: int) -> Tensor:
    """``[B * points, ...]``: ``x + t (x2 - x)`` at the midpoints ``t = (k + 1/2) / points``,
    the points of sample b contiguous."""
    t = (torch.arange(points, dtype=x.dtype, device=x.device) + 0.5) / points
    shape = (1, points) + (1,) * (x.dim() - 1)
    pts = x[:, None] + t.view(shape) * (x2 - x)[:, None]
    return pts.reshape(-1, *x.shape[1:])


def pair_quantities(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    x2: Tensor,
    y2: Tensor,
    *,
    points: int = 16,
    chunk: int = 512,
) -> dict[str, Tensor]:
    """Every per-pair quantity of the module docstring for the pairs ``(x_b, x2_b)``.

    Args:
        forward: the model (eval mode) returning logits.
        x, y: samples ``[B, ...]`` in [0, 1] and their classes.
        x2, y2: their partners and the partners' classes (``y2 != y``).
        points: K, the path points.
        chunk: rows per forward/backward pass on the path (bounds memory).

    Returns:
        ``{name: float64 tensor [B]}`` for every name in :data:`PAIR_FIELDS` (on CPU).
    """
    y, y2 = y.long(), y2.long()
    with torch.no_grad():
        logits2 = forward(x2)
    k = logits2.shape[1]
    eye = torch.eye(k, dtype=logits2.dtype, device=x.device)
    logits, (grad_y, grad_y2) = class_gradients(forward, x, [eye[y], eye[y2]])
    grad_g = grad_y - grad_y2
    d = x2 - x
    d_flat = d.reshape(len(d), -1).to(torch.float64)
    d_norm = d_flat.norm(dim=1)
    rows = torch.arange(len(x), device=x.device)
    g_start = (logits[rows, y] - logits[rows, y2]).double()
    g_end = (logits2[rows, y] - logits2[rows, y2]).double()

    cos_sum = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    norm_sum = torch.zeros_like(cos_sum)
    dot_sum = torch.zeros_like(cos_sum)
    per = max(1, chunk // max(points, 1))
    for start in range(0, len(x), per):  # chunks of pairs, each with all its path points
        sl = slice(start, start + per)
        pts = path_points(x[sl], x2[sl], points)
        rep = lambda t: t.repeat_interleave(points, 0)  # noqa: E731
        cot = rep(eye[y[sl]] - eye[y2[sl]])
        _, (grad_t,) = class_gradients(forward, pts, [cot])
        gt = grad_t.reshape(len(pts), -1).to(torch.float64)
        dt = rep(d_flat[sl])
        cos_t = cosine(gt, dt).view(-1, points)
        norm_t = gt.norm(dim=1).view(-1, points)
        dot_t = (gt * dt).sum(1).view(-1, points)
        cos_sum[sl], norm_sum[sl], dot_sum[sl] = cos_t.sum(1), norm_t.sum(1), dot_t.sum(1)
    path_cosine = cos_sum / points
    path_grad_norm = norm_sum / points
    change = g_end - g_start
    identity_error = (dot_sum / points - change).abs() / change.abs().clamp(min=1e-12)
    grad_norm = grad_g.reshape(len(x), -1).double().norm(dim=1)
    nan = torch.full_like(g_start, float("nan"))
    safe = lambda num, den: torch.where(den > 0, num / den.clamp(min=1e-300), nan)  # noqa: E731
    out = {
        "d_opt": d_norm / 2,
        "g_start": g_start,
        "g_end": g_end,
        "grad_norm": grad_norm,
        "local_ratio": projection_ratio(grad_y, grad_y2, d),
        "abs_cos": cosine(grad_g, d).abs(),
        "path_cosine": path_cosine,
        "path_compression": -path_cosine,
        "path_grad_norm": path_grad_norm,
        "path_identity_error": identity_error,
        "predicted_length": safe(g_start - g_end, path_grad_norm),
        "predicted_boundary": safe(g_start, path_grad_norm),
        "linear_boundary": safe(g_start, grad_norm),
    }
    return {name: out[name].detach().cpu() for name in PAIR_FIELDS}

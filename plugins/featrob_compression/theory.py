"""The paper's synthetic experiments (Section 6), with every network of an experiment trained
at once as one batched model (weights ``[R, ...]``, ``torch.einsum``), not in a loop.

Theorem 6 setting (``linear_experiment``): ``x = H b`` with ``b`` in ``{+1, -1}^n`` and the
label given by the last bit ``b_n``; ``H`` is Gaussian with every column but the last
multiplied by ``scale`` (the paper scales them; the factor was lost in the text, and it does
not change the prediction: the last column of Q and ``R_nn`` depend only on the span of the
other columns). With ``H = QR`` the last bit is ``b_n = r . x``, ``r`` the last row of
``R^-1 Q^T`` ``= q_n / R_nn``, so a network that decides by ``r . x`` is flipped by moving
``|b_n| / ||r|| = |R_nn|`` along ``q_n``, while the optimal (minimum-distance) classifier
tolerates ``||h_n||`` (half the distance ``2 ||h_n||`` to the point with the last bit
flipped): the predicted compression fraction is ``|R_nn| / ||h_n||``. For a trained
1-hidden-layer linear network, ``g = f_1 - f_2`` is affine, so its exact minimal
perturbation at x is ``|g(x)| / ||grad g||``; reported relative to ``||h_n||`` (the median
over the training points). ``theta_1`` is the angle between ``grad g`` and ``h_n`` (how much
of the feature ``h_n`` the network looks at), ``theta_2`` the angle between the first
probing vector (first row of ``W_2 W_1``) and ``r`` (Theorem 6 predicts ``|cos| = 1``).

Theorem 7 setting (``relu_experiment``): the same data with 1-hidden-layer ReLU networks;
at held-out points ``x = H b`` and their partner ``x' = H b'`` (``b'`` = ``b`` with the last
bit flipped), the local compression ratio ``||P (x' - x)|| / ||x' - x||`` with ``P`` onto
the span of the two logit gradients, at points ``x + lam (x' - x)`` for ten ``lam`` in
[0, 1] (our reading of Table 3's lost column variable), against the Gaussian model's
``sqrt(2/n)`` and its exact mean (:func:`~featrob_compression.geometry.gaussian_ratio_mean`).
The reproduction study of Table 3 (README, "Theorem 7: does the paper's Table 3 reproduce?")
varies the width, the stopping rule (``stop_at_fit``), the optimiser, the training points,
the activation and ``scale`` (H's other columns, as in the linear experiment: ``scale=10``
reproduces the paper's linear figures, 0.328 / 0.349 / ``|cos theta_2|`` 0.985 at n = 12).
Networks are built and trained in :mod:`featrob_compression.nets`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from featrob_compression.geometry import cosine, gaussian_ratio_mean, projection_ratio
from featrob_compression.nets import Nets, init_nets, train_nets

#: Enumerate every sign vector up to this many points, sample above it.
MAX_POINTS = 4096


# ---------------------------------------------------------------------- data and QR
def sign_vectors(n: int, count: int | None, gen: torch.Generator) -> Tensor:
    """``[N, n]`` vectors in ``{+1, -1}^n``: all ``2^n`` when ``count`` is None and
    ``2^n <= MAX_POINTS``, else ``count`` (default MAX_POINTS) random ones."""
    if count is None and 2**n <= MAX_POINTS:
        codes = torch.arange(2**n)
        bits = (codes[:, None] >> torch.arange(n)) & 1
        return (1 - 2 * bits).double()
    count = count or MAX_POINTS
    return (1 - 2 * torch.randint(0, 2, (count, n), generator=gen)).double()


def generator_matrices(runs: int, n: int, scale: float, gen: torch.Generator) -> Tensor:
    """``[R, n, n]`` Gaussian H, every column but the last times ``scale``."""
    h = torch.randn(runs, n, n, generator=gen, dtype=torch.float64)
    h[:, :, :-1] *= scale
    return h


def qr_prediction(h: Tensor) -> tuple[Tensor, Tensor]:
    """Theorem 6's prediction for ``H`` ``[..., n, n]``.

    Returns:
        ``(fraction, r)``: ``|R_nn| / ||h_n||`` ``[...]`` and the last row of
        ``R^-1 Q^T`` ``[..., n]`` (which reads the last bit: ``r . H b = b_n``).
    """
    q, r_mat = torch.linalg.qr(h)
    r_nn = r_mat[..., -1, -1]
    fraction = r_nn.abs() / h[..., :, -1].norm(dim=-1)
    return fraction, q[..., :, -1] / r_nn[..., None]


def _data(h: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs ``x = H b`` ``[R, N, n]`` and labels (0 for ``b_n = +1``, 1 for -1)."""
    x = torch.einsum("rij,bj->rbi", h, b)
    y = (b[:, -1] < 0).long().expand(h.shape[0], -1)
    return x, y


# ---------------------------------------------------------------------- Theorem 6
@dataclass
class LinearResult:
    """One valid run of the Theorem 6 experiment."""

    n: int
    predicted_fraction: float
    measured_median: float
    measured_min: float
    measured_mean: float
    abs_cos_theta1: float
    abs_cos_theta2: float
    train_accuracy: float


def linear_measurements(nets: Nets, x: Tensor, h: Tensor) -> dict[str, Tensor]:
    """Exact minimal perturbations and the two angles for linear networks ``[R]`` each."""
    probe = torch.einsum("rkh,rhn->rkn", nets.w2, nets.w1)  # rows: probing vectors
    w = probe[:, 0] - probe[:, 1]  # grad g, g = f_1 - f_2
    c = (torch.einsum("rkh,rh->rk", nets.w2, nets.b1) + nets.b2) @ torch.tensor(
        [1.0, -1.0], dtype=x.dtype
    )
    g = torch.einsum("rn,rbn->rb", w, x) + c[:, None]
    h_n = h[:, :, -1].norm(dim=1)
    rel = g.abs() / w.norm(dim=1, keepdim=True) / h_n[:, None]  # [R, N]
    fraction, r = qr_prediction(h)
    cos1 = F.cosine_similarity(w, h[:, :, -1], dim=1).abs()
    cos2 = F.cosine_similarity(probe[:, 0], r, dim=1).abs()
    return {
        "fraction": fraction,
        "median": rel.median(1).values,
        "min": rel.min(1).values,
        "mean": rel.mean(1),
        "cos1": cos1,
        "cos2": cos2,
    }


def exact_network(h: Tensor, hidden: int = 2) -> Nets:
    """Linear networks ``[R]`` satisfying Theorem 6's condition exactly: the first hidden unit
    computes ``r . x = b_n`` and the outputs are ``+-`` it, so ``g = 2 b_n``."""
    runs, n, _ = h.shape
    _, r = qr_prediction(h)
    w1 = torch.zeros(runs, hidden, n, dtype=h.dtype)
    w1[:, 0] = r
    w2 = torch.zeros(runs, 2, hidden, dtype=h.dtype)
    w2[:, 0, 0], w2[:, 1, 0] = 1.0, -1.0
    zeros = torch.zeros
    return Nets(w1, zeros(runs, hidden, dtype=h.dtype), w2, zeros(runs, 2, dtype=h.dtype), False)


def linear_experiment(
    n: int = 10,
    *,
    runs: int = 10,
    hidden: int = 32,
    scale: float = 1.0,
    steps: int = 1000,
    lr: float = 0.01,
    seed: int = 0,
    max_attempts: int = 100,
) -> dict[str, Any]:
    """Theorem 6 (Table 1): train linear networks until ``runs`` reach 100% training accuracy.

    Returns:
        ``{"runs": [LinearResult dicts], "attempts", "closed_form_max_error",
        "mean_predicted", "mean_measured", ...}``.
    """
    gen = torch.Generator().manual_seed(seed)
    b = sign_vectors(n, None, gen)
    valid: list[LinearResult] = []
    attempts = 0
    closed_error = 0.0
    while len(valid) < runs and attempts < max_attempts:
        batch = min(max(2 * (runs - len(valid)), 4), max_attempts - attempts)
        h = generator_matrices(batch, n, scale, gen)
        x, y = _data(h, b)
        exact = linear_measurements(exact_network(h), x, h)
        closed_error = max(closed_error, float((exact["median"] - exact["fraction"]).abs().max()))
        closed_error = max(closed_error, float((exact["min"] - exact["fraction"]).abs().max()))
        nets = init_nets(batch, n, hidden, relu=False, gen=gen)
        acc = train_nets(nets, x, y, steps=steps, lr=lr).accuracy
        m = linear_measurements(nets.double(), x, h)
        attempts += batch
        for i in torch.nonzero(acc == 1.0).squeeze(1).tolist():
            if len(valid) == runs:
                break
            valid.append(
                LinearResult(
                    n,
                    float(m["fraction"][i]),
                    float(m["median"][i]),
                    float(m["min"][i]),
                    float(m["mean"][i]),
                    float(m["cos1"][i]),
                    float(m["cos2"][i]),
                    float(acc[i]),
                )
            )
    rows = [asdict(v) for v in valid]
    mean = lambda key: sum(r[key] for r in rows) / len(rows) if rows else None  # noqa: E731
    rho = None
    if len(rows) >= 3:
        from scipy.stats import spearmanr

        rho = float(
            spearmanr(
                [r["predicted_fraction"] for r in rows], [r["measured_median"] for r in rows]
            )[0]
        )
    return {
        "n": n,
        "runs": rows,
        "valid_runs": len(rows),
        "attempts": attempts,
        "closed_form_max_error": closed_error,
        "mean_predicted_fraction": mean("predicted_fraction"),
        "mean_measured_median": mean("measured_median"),
        "mean_abs_cos_theta1": mean("abs_cos_theta1"),
        "mean_abs_cos_theta2": mean("abs_cos_theta2"),
        "spearman_predicted_measured": rho,
    }


# ---------------------------------------------------------------------- Theorem 7
@dataclass
class ReluResult:
    """Theorem 7's local compression ratio for one input dimension."""

    n: int
    accurate_networks: int
    attempts: int
    lambdas: list[float]
    mean_ratio: list[float]
    median_ratio: list[float]
    mean_abs_cos: list[float]
    sqrt_2_over_n: float
    gaussian_mean: float
    qr_fraction_mean: float
    mean_steps: float = math.nan
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def relu_experiment(
    n: int = 20,
    *,
    networks: int = 50,
    hidden: int = 64,
    train_points: int = 2000,
    test_points: int = 200,
    steps: int = 500,
    lr: float = 0.01,
    min_test_accuracy: float = 0.99,
    lambdas: int = 10,
    seed: int = 0,
    max_attempts: int = 500,
    optimizer: str = "adam",
    stop_at_fit: bool = False,
    activation: str = "relu",
    scale: float = 1.0,
) -> ReluResult:
    """Theorem 7 (Table 3): local compression ratio of accurate 1-hidden-layer ReLU networks.

    A network is accurate when it fits its training points (100%) and classifies at least
    ``min_test_accuracy`` of fresh points correctly. Its ratio at each ``lam`` is the mean
    over ``test_points`` held-out pairs; the result holds the mean and the median of that
    over the accurate networks, and the mean of ``|cos(grad g, x' - x)|`` (the part of
    the span that decides between the two classes).

    The hypotheses of the reproduction study are options: ``hidden`` (64 by default;
    3,000 for the paper's width), ``train_points`` (0: all ``2^n`` sign vectors, else a
    random sample), ``optimizer`` (``adam`` or ``sgd``) with ``steps`` and ``lr``,
    ``stop_at_fit`` (stop each network at the first step that fits every training point)
    and ``activation`` (``linear`` for the Theorem 6 networks measured the same way).
    """
    if activation not in ("relu", "linear"):
        raise ValueError(f"activation must be relu or linear, got {activation!r}")
    settings = {
        "hidden": hidden,
        "train_points": train_points,
        "steps": steps,
        "lr": lr,
        "optimizer": optimizer,
        "stop_at_fit": stop_at_fit,
        "activation": activation,
        "scale": scale,
        "min_test_accuracy": min_test_accuracy,
        "seed": seed,
    }
    gen = torch.Generator().manual_seed(seed)
    lam = torch.linspace(0, 1, lambdas, dtype=torch.float64)
    per_net: list[Tensor] = []
    per_net_cos: list[Tensor] = []
    fractions: list[Tensor] = []
    steps_taken: list[Tensor] = []
    attempts = 0
    while len(per_net) < networks and attempts < max_attempts:
        batch = min(max(networks - len(per_net), 4), max_attempts - attempts)
        attempts += batch
        h = generator_matrices(batch, n, scale, gen)
        x, y = _data(h, sign_vectors(n, train_points or None, gen))
        nets = init_nets(batch, n, hidden, relu=activation == "relu", gen=gen)
        report = train_nets(
            nets, x, y, steps=steps, lr=lr, optimizer=optimizer, stop_at_fit=stop_at_fit
        )
        acc = report.accuracy
        nets = nets.double()
        b_test = sign_vectors(n, test_points, gen)
        xt, yt = _data(h, b_test)
        with torch.no_grad():
            test_acc = (nets(xt).argmax(-1) == yt).double().mean(1)
        flipped = b_test.clone()
        flipped[:, -1] *= -1
        x2, _ = _data(h, flipped)
        d = x2 - xt  # [R, M, n]
        ratios, coss = [], []
        for lv in lam.tolist():  # ten interpolation points, each batched over nets and pairs
            grads = nets.class_gradients(xt + lv * d)  # [R, M, 2, n]
            g1, g2 = grads[:, :, 0].reshape(-1, n), grads[:, :, 1].reshape(-1, n)
            r = projection_ratio(g1, g2, d.reshape(-1, n))
            ratios.append(r.view(batch, -1).mean(1))
            coss.append(cosine(g1 - g2, d.reshape(-1, n)).abs().view(batch, -1).mean(1))
        ratio = torch.stack(ratios, 1)  # [R, lambdas]
        abs_cos = torch.stack(coss, 1)
        good = (acc == 1.0) & (test_acc >= min_test_accuracy)
        keep = torch.nonzero(good).squeeze(1)[: networks - len(per_net)]
        per_net.extend(ratio[keep])
        per_net_cos.extend(abs_cos[keep])
        fractions.append(qr_prediction(h[keep])[0])
        steps_taken.append(report.steps[keep].double())
    stack = torch.stack(per_net) if per_net else torch.empty(0, lambdas, dtype=torch.float64)
    frac = torch.cat(fractions) if fractions else torch.empty(0, dtype=torch.float64)
    return ReluResult(
        n=n,
        accurate_networks=len(per_net),
        attempts=attempts,
        lambdas=[round(v, 4) for v in lam.tolist()],
        mean_ratio=stack.mean(0).tolist() if len(stack) else [],
        median_ratio=stack.median(0).values.tolist() if len(stack) else [],
        mean_abs_cos=torch.stack(per_net_cos).mean(0).tolist() if per_net_cos else [],
        sqrt_2_over_n=math.sqrt(2 / n),
        gaussian_mean=gaussian_ratio_mean(n),
        qr_fraction_mean=float(frac.mean()) if len(frac) else math.nan,
        mean_steps=float(torch.cat(steps_taken).mean()) if len(frac) else math.nan,
        settings=settings,
    )

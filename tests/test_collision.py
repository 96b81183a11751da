"""Collision search (Algorithm 1) and optimal losses over conflict graphs (Algorithm 2), paper
003: exact checks against closed forms, cvxpy, the LP and the two-Gaussian analytic losses."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from featrob_collision import conflict
from featrob_collision.conflict import (
    ConflictGraph,
    cross_entropy_cvxpy,
    cross_entropy_flow,
    cross_entropy_of,
    optimal_loss,
    zero_one_lp,
    zero_one_matching,
)
from featrob_collision.search import SearchConfig, collision_search

from featrob.testing import tiny_dataset, tiny_model

F64 = torch.float64


# ----------------------------------------------------------------------- collision search
def _pairs(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    draw = lambda: torch.randn(n, dim, generator=gen, dtype=F64)  # noqa: E731
    return draw(), draw()


def test_linear_extractor_gives_half_the_row_space_distance():
    torch.manual_seed(0)
    x, xp = _pairs(40, 20)
    h = torch.randn(6, 20, dtype=F64)
    h = torch.cat([h, 2 * h[:2]])  # 8 rows of rank 6: a rank-deficient Jacobian
    k = torch.randn(8, dtype=F64)
    result = collision_search(lambda z: z @ h.T + k, x, xp)
    v = torch.linalg.svd(h).Vh[:6].T  # orthonormal basis of the row space
    exact = 0.5 * ((x - xp) @ v).norm(dim=1)
    torch.testing.assert_close(result.distance, exact, rtol=1e-4, atol=0)
    assert bool(result.converged.all())

    injective = torch.randn(30, 20, dtype=F64)
    result = collision_search(lambda z: z @ injective.T, x, xp)
    torch.testing.assert_close(result.distance, (x - xp).norm(dim=1) / 2, rtol=1e-4, atol=0)

    zero = torch.zeros(3, 20, dtype=F64)
    result = collision_search(lambda z: z @ zero.T, x, xp)
    assert float(result.distance.abs().max()) < 1e-12


def test_input_space_projection_concentrates_at_sqrt_m_over_2_sqrt_n():
    n0, m, draws = 784, 10, 300
    gen = torch.Generator().manual_seed(1)
    x, xp = torch.rand(1, n0, generator=gen, dtype=F64), torch.rand(1, n0, generator=gen, dtype=F64)
    a = torch.randn(draws, m, n0, generator=gen, dtype=F64)
    result = collision_search(
        lambda z: z, x.expand(draws, -1), xp.expand(draws, -1), a, torch.arange(draws)
    )
    predicted = math.sqrt(m) / (2 * math.sqrt(n0)) * float((x - xp).norm())
    assert abs(float(result.distance.mean()) / predicted - 1) < 0.05


@pytest.mark.parametrize("box", [None, (0.0, 1.0)])
def test_every_returned_pair_collides_at_every_layer(box):
    model, data = tiny_model(), tiny_dataset()
    images, labels = data.test.float_images(torch.arange(60)), data.test.labels[:60]
    a, b = images[labels == 0][:3], images[labels == 1][:3]
    x, xp = a.repeat_interleave(3, 0), b.repeat(3, 1, 1, 1)
    half = (x - xp).flatten(1).norm(dim=1) / 2
    config = SearchConfig(box=box, max_iter=30)
    for layer in ("conv1", "fc1", "logits"):
        f = lambda z, layer=layer: model.forward_to(z, layer).flatten(1)  # noqa: E731
        n = f(x[:1]).shape[1]
        proj = torch.randn(2, 10, n, generator=torch.Generator().manual_seed(2))
        which = torch.arange(2).repeat_interleave(len(x))
        res = collision_search(f, x.repeat(2, 1, 1, 1), xp.repeat(2, 1, 1, 1), proj, which, config)
        with torch.no_grad():
            diff = f(res.x) - f(res.x_prime)
            measured = torch.einsum("smn,sn->sm", proj[which], diff).norm(dim=1)
        assert bool((measured <= 2e-4 * res.scale).all()), layer  # collides (float32 slack)
        assert bool((res.distance <= half.repeat(2) + 1e-6).all())  # never worse than midpoint
        assert bool((res.distance < 0.95 * half.repeat(2)).any())  # and usually better
        if box is not None:
            assert float(res.x.min()) >= 0 and float(res.x.max()) <= 1
            assert float(res.x_prime.min()) >= 0 and float(res.x_prime.max()) <= 1


# ----------------------------------------------------------------------- optimal losses
def test_complete_graph_matched_pair_and_isolated_vertices():
    complete = ConflictGraph.from_distances(np.zeros((3, 5)), 1.0)
    for q in (cross_entropy_flow(complete), cross_entropy_cvxpy(complete)):
        np.testing.assert_allclose(q, [3 / 8] * 3 + [5 / 8] * 5, atol=1e-5)
    # one matched pair (0, 0); vertex 1 of each side isolated
    graph = ConflictGraph(2, 2, np.array([[0, 0]]))
    result = optimal_loss(graph)
    np.testing.assert_allclose(result.q, [0.5, 1.0, 0.5, 1.0])
    assert result.cross_entropy == pytest.approx(2 * math.log(2) / 4)
    assert result.zero_one == pytest.approx(1 / 4) and result.solver == "flow"
    assert optimal_loss(ConflictGraph(3, 2, np.zeros((0, 2), int))).cross_entropy == 0.0


def test_flow_path_agrees_with_cvxpy_and_matching_with_the_lp():
    rng = np.random.default_rng(0)
    for _ in range(12):
        n1, n2 = rng.integers(1, 25, 2)
        graph = ConflictGraph.from_distances(rng.random((n1, n2)), rng.uniform(0.03, 0.5))
        q = cross_entropy_flow(graph)
        e = graph.edges
        assert len(e) == 0 or (q[e[:, 0]] + q[n1 + e[:, 1]]).max() <= 1 + 1e-12  # feasible
        ref = cross_entropy_of(cross_entropy_cvxpy(graph))
        assert abs(cross_entropy_of(q) - ref) < 1e-4
        assert zero_one_matching(graph) == pytest.approx(zero_one_lp(graph), abs=1e-9)


MU = 2.3263478740  # Phi(-MU) = 0.01: 1 % Bayes error without an adversary
ANALYTIC = {  # eps: (optimal robust 0-1 loss, optimal robust cross-entropy), L2 adversary
    0.5: (0.0339, 0.0883),
    1.0: (0.0924, 0.2232),
    1.5: (0.2043, 0.4364),
    2.0: (0.3721, 0.6426),
}


def _gaussian_losses(n: int, seed: int) -> dict[float, tuple[float, float, int]]:
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(seed)
    mu = np.array([MU, 0.0])
    distances = cdist(rng.standard_normal((n, 2)) + mu, rng.standard_normal((n, 2)) - mu)
    out = {}
    for eps in ANALYTIC:
        result = optimal_loss(ConflictGraph.from_distances(distances, 2 * eps))
        out[eps] = (result.zero_one, result.cross_entropy, result.edges)
    return out


def test_two_gaussians_match_the_analytic_optimal_losses():
    """1,000 samples per class, mean over 5 draws: the graph's 0-1 loss within 0.01 of the
    analytic one at eps 0.5 and 1; the cross-entropy sits below the analytic value (finite
    samples make the adversary's job harder) by less than 0.03."""
    runs = [_gaussian_losses(1000, seed) for seed in range(5)]
    for eps, (zero_one, ce) in ANALYTIC.items():
        mean01 = np.mean([r[eps][0] for r in runs])
        mean_ce = np.mean([r[eps][1] for r in runs])
        if eps <= 1.0:
            assert abs(mean01 - zero_one) < 0.01, (eps, mean01)
        assert -0.03 < mean_ce - ce < 0.005, (eps, mean_ce)
    assert 150_000 < runs[0][2.0][2] < 400_000  # the ~200k-edge graph solved without trouble


def test_a_failing_solver_falls_back_and_says_so(monkeypatch):
    graph = ConflictGraph.from_distances(np.random.default_rng(3).random((30, 30)), 0.2)

    def broken(*_a, **_k):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(conflict, "cross_entropy_cvxpy", broken)
    result = optimal_loss(graph, solver="clarabel")
    assert result.solver.startswith("clarabel failed (RuntimeError: solver exploded)")
    assert result.solver.endswith("flow")
    monkeypatch.setattr(conflict, "cross_entropy_flow", broken)
    with pytest.raises(RuntimeError, match="every solver failed"):
        optimal_loss(graph)


# ----------------------------------------------------------------------- the metric
SMALL = {"per_class": 5, "projections": 2, "max_iter": 15, "eps_points": 6}


def test_metric_curves_saturate_and_distances_never_exceed_the_midpoint(tmp_path):
    from featrob_collision.metric import LayerCollisions

    from featrob.testing import check_metric, make_context

    ctx = make_context(store=tmp_path / "store")
    result = check_metric(LayerCollisions, ctx, **SMALL)
    s = result.summary
    assert s["layers"] == "input, conv1, conv2, fc1, logits" and s["pairs"] == 25
    half_max = float(result.arrays["half_input_distance"].max())
    for layer in ("input", "conv1", "conv2", "fc1", "logits"):
        assert s[f"{layer}.converged_share"] == 1.0
        assert s[f"{layer}.distance.q90"] <= half_max + 1e-6
        curve = [r for r in result.tables["curves"] if r["layer"] == layer]
        ce = [r["cross_entropy"] for r in curve]
        assert all(b >= a - 1e-9 for a, b in itertools.pairwise(ce))  # grows with eps
        assert ce[-1] == pytest.approx(math.log(2))  # every pair collides at the last eps
    assert set(result.figures) == {"optimal_cross_entropy", "optimal_zero_one", "fab_vs_collision"}

    again = LayerCollisions(**SMALL).compute(make_context(store=tmp_path / "store"))
    assert all(again.summary[f"{layer}.searched_pairs"] == 0 for layer in ("conv1", "logits"))
    assert again.tables["curves"] == result.tables["curves"]


def test_metric_resumes_after_a_failed_batch(tmp_path, monkeypatch):
    from featrob_collision import distances
    from featrob_collision.metric import LayerCollisions

    from featrob.testing import make_context

    options = {**SMALL, "layers": ["fc1"], "batch_searches": 10, "fab": False}
    real, calls = distances.collision_search, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(distances, "collision_search", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        LayerCollisions(**options).compute(make_context(store=tmp_path / "s"))
    monkeypatch.setattr(distances, "collision_search", real)
    resumed = LayerCollisions(**options).compute(make_context(store=tmp_path / "s"))
    assert resumed.summary["fc1.searched_pairs"] == 25 - 2 * 5  # two batches of 5 pairs kept
    fresh = LayerCollisions(**options).compute(make_context())
    assert fresh.tables["curves"] == resumed.tables["curves"]


def test_without_projection_the_input_layer_is_the_half_distance():
    from featrob_collision.metric import LayerCollisions

    from featrob.testing import make_context

    result = LayerCollisions(**SMALL, no_projection=True, layers=["input", "conv1"]).compute(
        make_context()
    )
    half = np.sort(result.arrays["half_input_distance"])
    s = result.summary
    assert s["input.distance.median"] == pytest.approx(float(np.median(half)))
    # conv1 has 256 > 64 input dimensions: no non-trivial collisions (paper, Figure 7)
    assert s["conv1.distance.median"] == pytest.approx(float(np.median(half)), rel=1e-3)


def test_metric_rejects_bad_options():
    from featrob_collision.metric import LayerCollisions

    from featrob.errors import ConfigError, UnknownNameError
    from featrob.testing import make_context

    with pytest.raises(ConfigError, match="unknown class 'cat'"):
        LayerCollisions(classes=[0, "cat"]).compute(make_context())
    with pytest.raises(ConfigError, match="eps"):
        LayerCollisions(eps=[-1.0])
    with pytest.raises(ConfigError, match="alpha and gamma"):
        LayerCollisions(gamma=1.5)
    with pytest.raises(UnknownNameError, match="conv1"):
        LayerCollisions(**SMALL, layers=["conv11"]).compute(make_context())


def test_a_layer_is_stored_in_blocks_as_they_finish(tmp_path):
    """Issue 20: a layer's search was one batch (a kill lost the layer); now blocks of at
    most BLOCK_PAIRS pairs are stored as they finish."""
    from featrob_collision.distances import BLOCK_PAIRS
    from featrob_collision.metric import LayerCollisions

    from featrob.testing import make_context

    options = {**SMALL, "per_class": 10, "layers": ["fc1"], "fab": False}
    LayerCollisions(**options).compute(make_context(store=tmp_path / "s"))
    (folder,) = [
        p for p in (tmp_path / "s" / "entries").glob("*/*") if "fc1" in (p / "key.json").read_text()
    ]
    assert BLOCK_PAIRS == 32
    assert len(list(folder.glob("chunk-*.h5"))) == 4  # 100 pairs: 32 + 32 + 32 + 4

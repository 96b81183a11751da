"""Optimal adversarial losses over a bipartite conflict graph (paper 003, Algorithm 2 step 13,
after Bhagoji et al. 2019 and 2021).

Vertices are the samples of two classes (``n1`` left, ``n2`` right), every sample weighted
``1 / (n1 + n2)``; an edge joins two samples that an adversary can make collide (in the input
space: ``||x - x'|| <= 2 eps``; through a feature extractor: ``d_f(x, x') <= eps``). A vector
``q`` of correct-class probabilities is achievable by some classifier against the adversary
if and only if ``0 <= q_v <= 1`` and ``q_u + q_v <= 1`` on every edge, so

* the optimal cross-entropy is ``min  mean_v -log q_v`` over that polytope, solved exactly by
  :func:`cross_entropy_flow` (the max-flow decomposition of Bhagoji et al. 2021, derived in its
  docstring) or by cvxpy's exponential-cone solvers (:func:`cross_entropy_cvxpy`);
* the optimal 0-1 loss is ``nu(G) / (n1 + n2)`` with ``nu`` the maximum matching (König: a
  minimum vertex cover, one sure error per edge), cross-checked by the linear programme
  ``max sum q`` over the same polytope (:func:`zero_one_lp`), whose optimum on a bipartite
  graph is integral and equals ``n1 + n2 - nu``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

#: Solvers tried, in order, by ``solver="auto"`` for the cross-entropy.
AUTO_ORDER = ("flow", "clarabel", "scs")


@dataclass(frozen=True)
class ConflictGraph:
    """Two classes of samples and the pairs an adversary can make collide.

    Attributes:
        n1, n2: samples of the first (left) and second (right) class.
        edges: ``[E, 2]`` int array of (left index, right index), no duplicates.
    """

    n1: int
    n2: int
    edges: np.ndarray

    @classmethod
    def from_distances(cls, distances: np.ndarray, eps: float) -> ConflictGraph:
        """The graph of ``distances[i, j] <= eps`` for an ``[n1, n2]`` matrix (NaN: no edge)."""
        d = np.asarray(distances, dtype=float)
        with np.errstate(invalid="ignore"):
            left, right = np.nonzero(d <= eps)
        return cls(d.shape[0], d.shape[1], np.stack([left, right], axis=1).astype(np.int64))

    @property
    def n(self) -> int:
        """All vertices."""
        return self.n1 + self.n2

    def adjacency(self) -> sparse.csr_matrix:
        """``[n1, n2]`` 0/1 biadjacency matrix."""
        ones = np.ones(len(self.edges), dtype=np.int32)
        shape = (self.n1, self.n2)
        return sparse.csr_matrix((ones, (self.edges[:, 0], self.edges[:, 1])), shape=shape)

    def incidence(self) -> sparse.csr_matrix:
        """``[E, n1 + n2]``: row e has a 1 at both ends of edge e (right vertices offset by n1)."""
        e = len(self.edges)
        rows = np.repeat(np.arange(e), 2)
        cols = np.stack([self.edges[:, 0], self.n1 + self.edges[:, 1]], axis=1).ravel()
        return sparse.csr_matrix((np.ones(2 * e), (rows, cols)), shape=(e, self.n))


@dataclass
class OptimalLoss:
    """Optimal losses of one conflict graph.

    Attributes:
        cross_entropy: ``min mean -log q_v``.
        zero_one: ``nu(G) / (n1 + n2)``.
        edges: edge count.
        solver: what solved the cross-entropy (``flow``, ``clarabel``, ``scs``), with the
            solvers that failed before it (``"clarabel failed (...); flow"``).
        seconds: time for both losses.
        q: the optimal correct-class probabilities (left vertices first).
    """

    cross_entropy: float
    zero_one: float
    edges: int
    solver: str
    seconds: float
    q: np.ndarray = field(repr=False)


def optimal_loss(graph: ConflictGraph, solver: str = "auto") -> OptimalLoss:
    """Both optimal losses of ``graph``.

    Args:
        solver: ``"flow"`` (exact, fast), ``"clarabel"``/``"scs"`` (cvxpy), or ``"auto"``:
            flow, falling back to the cvxpy solvers should it fail. An explicit cvxpy solver
            that fails falls back to the flow path. The result names what solved it.
    """
    start = time.perf_counter()
    order = AUTO_ORDER if solver == "auto" else (solver, *(s for s in AUTO_ORDER if s != solver))
    failures = []
    for name in order:
        try:
            q = cross_entropy_flow(graph) if name == "flow" else cross_entropy_cvxpy(graph, name)
        except Exception as exc:  # a solver's failure must not lose the computation
            failures.append(f"{name} failed ({type(exc).__name__}: {str(exc)[:80]})")
            continue
        break
    else:
        raise RuntimeError("every solver failed: " + "; ".join(failures))
    return OptimalLoss(
        cross_entropy=cross_entropy_of(q),
        zero_one=zero_one_matching(graph),
        edges=len(graph.edges),
        solver="; ".join([*failures, name]),
        seconds=time.perf_counter() - start,
        q=q,
    )


def cross_entropy_of(q: np.ndarray) -> float:
    """``mean -log q_v``."""
    return float(-np.log(np.clip(q, 1e-300, 1.0)).mean()) if len(q) else 0.0


def zero_one_matching(graph: ConflictGraph) -> float:
    """``nu(G) / (n1 + n2)`` by scipy's maximum bipartite matching."""
    if graph.n == 0 or len(graph.edges) == 0:
        return 0.0
    match = csgraph.maximum_bipartite_matching(graph.adjacency(), perm_type="column")
    return float((match >= 0).sum()) / graph.n


def zero_one_lp(graph: ConflictGraph) -> float:
    """The 0-1 loss by linear programming: ``1 - max mean q`` over the polytope (HiGHS)."""
    from scipy.optimize import linprog

    if graph.n == 0 or len(graph.edges) == 0:
        return 0.0
    res = linprog(
        c=-np.ones(graph.n),
        A_ub=graph.incidence(),
        b_ub=np.ones(len(graph.edges)),
        bounds=(0, 1),
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    return 1.0 + float(res.fun) / graph.n


def cross_entropy_cvxpy(graph: ConflictGraph, solver: str = "clarabel") -> np.ndarray:
    """Optimal ``q`` by cvxpy with an exponential-cone solver (``clarabel`` or ``scs``)."""
    import cvxpy as cp

    out = np.ones(graph.n)
    if len(graph.edges) == 0:
        return out
    # Vertices without edges keep q = 1; on the others q <= 1 follows from the edge
    # constraints and q >= 0, so only the edge rows are passed (fewer redundant rows).
    inc = graph.incidence()
    used = np.flatnonzero(np.asarray(inc.sum(axis=0)).ravel() > 0)
    q = cp.Variable(len(used))
    constraints = [inc[:, used] @ q <= 1]
    problem = cp.Problem(cp.Minimize(-cp.sum(cp.log(q)) / graph.n), constraints)
    problem.solve(solver=solver.upper())
    if problem.status not in ("optimal", "optimal_inaccurate") or q.value is None:
        raise RuntimeError(f"cvxpy/{solver} ended with status {problem.status}")
    out[used] = np.clip(np.asarray(q.value, dtype=float), 1e-12, 1.0)
    return out


def cross_entropy_flow(graph: ConflictGraph) -> np.ndarray:
    """Optimal ``q`` exactly, by recursive max-flow splits (Bhagoji et al. 2021).

    Derivation (uniform weights). KKT for ``min sum_v -log q_v`` s.t. ``q_u + q_v <= 1``:
    edge multipliers ``lambda_uv >= 0``, positive only on tight edges, with
    ``sum_v lambda_uv = 1 / q_u`` at every vertex. Suppose a block ``(S, T)`` (``a`` left and
    ``b`` right vertices) has ``q = x`` on S and ``1 - x`` on T with all its edges tight: the
    multipliers are a flow with ``1 / x`` out of every ``u`` and ``1 / (1 - x)`` into every
    ``v``; totals agree only for ``x = a / (a + b)`` (a complete bipartite block gives the same
    value directly). Scaled by ``a b / (a + b)``: source -> u capacity ``b``, v -> sink
    capacity ``a``, edges uncapacitated (``max(a, b)`` suffices). If the maximum flow
    saturates (value ``a b``), the multipliers exist and ``q_u = a/(a+b)``,
    ``q_v = b/(a+b)`` is optimal for the block. Otherwise the minimum cut (the vertices
    reachable from the source in the residual graph) splits the block into a part on the
    source side and one on the sink side, with no edge from a source-side left vertex to a
    sink-side right vertex; each part is solved the same way. Vertices without edges get
    ``q = 1``. Connected components are solved separately. The tests check the result
    against cvxpy on random graphs.
    """
    q = np.ones(graph.n)
    if len(graph.edges) == 0:
        return q
    adj = graph.adjacency()
    full = sparse.bmat([[None, adj], [adj.T, None]], format="csr")
    _, labels = csgraph.connected_components(full, directed=False)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    stack = []
    for comp in np.split(order, bounds):
        left, right = comp[comp < graph.n1], comp[comp >= graph.n1] - graph.n1
        if len(left) and len(right):
            stack.append((left, right))
    while stack:
        left, right = stack.pop()
        sub = adj[left][:, right]
        if sub.nnz == 0:
            continue  # q stays 1: no conflicts inside this part
        a, b = len(left), len(right)
        source_side = _min_cut_source_side(sub, a, b)
        if source_side is None:
            q[left] = a / (a + b)
            q[graph.n1 + right] = b / (a + b)
            continue
        in_l, in_r = source_side[:a], source_side[a:]
        stack.append((left[in_l], right[in_r]))
        stack.append((left[~in_l], right[~in_r]))
    return q


def _min_cut_source_side(sub: sparse.csr_matrix, a: int, b: int) -> np.ndarray | None:
    """For the block's flow network, None if the maximum flow saturates, else a boolean mask
    over the ``a + b`` vertices: those on the source side of the minimum cut."""
    s, t = 0, a + b + 1
    sub = sub.tocoo()
    big = max(a, b)
    rows = np.concatenate([np.zeros(a, int), 1 + sub.row, 1 + a + np.arange(b)])
    cols = np.concatenate([1 + np.arange(a), 1 + a + sub.col, np.full(b, t)])
    caps = np.concatenate([np.full(a, b), np.full(sub.nnz, big), np.full(b, a)])
    cap = sparse.csr_matrix((caps.astype(np.int32), (rows, cols)), shape=(t + 1, t + 1))
    result = csgraph.maximum_flow(cap, s, t)
    if result.flow_value >= a * b:
        return None
    residual = (cap - result.flow).tocsr()
    residual.data = np.where(residual.data > 0, 1, 0).astype(np.int32)
    residual.eliminate_zeros()
    reach = csgraph.breadth_first_order(residual, s, directed=True, return_predecessors=False)
    mask = np.zeros(t + 1, bool)
    mask[reach] = True
    return mask[1 : a + b + 1]

"""The collision plugin: the batched collision search against a per-pair loop of the same
algorithm, and the exact max-flow path against cvxpy.

Side by side in one run, on the same model, pairs and projections:

* ``batched``: :func:`collision_search` on every (pair, projection) search at once (one
  forward and one vmapped backward of ``m`` cotangents per iteration for all points);
* ``naive``: the straightforward per-pair loop of the same algorithm
  (:func:`naive_search`: one search at a time, each Jacobian row by its own backward pass,
  a dense pseudo-inverse for the projection);
* ``per_pair``: the batched function called once per search (``S = 1``): what batching
  over searches alone buys;
* ``raw``: the passes the search cannot avoid: for the mean iteration count of the batched
  run, one forward and ``m`` backward passes over all points.

Then the optimal cross-entropy of one conflict graph (``--graph-vertices``, two classes)
over 20 eps values by the max-flow path and by cvxpy (Clarabel), with their largest
difference.

Usage::

    python -m benchmarks.collision              # small CNN on the MNIST subset, 3 vs 7
    python -m benchmarks.collision --quick      # digits, few pairs (kept alive by a test)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from featrob_collision.conflict import (
    ConflictGraph,
    cross_entropy_cvxpy,
    cross_entropy_flow,
    cross_entropy_of,
)
from featrob_collision.distances import extractor
from featrob_collision.search import SearchConfig, collision_search

from benchmarks.common import (
    benchmark_parser,
    interleaved_times,
    machine,
    trained_model,
    write_json,
)


def _searches(xa, xb, projections: int):
    ia, ib = np.divmod(np.arange(len(xa) * len(xb)), len(xb))
    x, xp = xa[ia].repeat(projections, 1, 1, 1), xb[ib].repeat(projections, 1, 1, 1)
    which = torch.arange(projections).repeat_interleave(len(ia))
    return x, xp, which


def naive_search(f, x: torch.Tensor, xp: torch.Tensor, a: torch.Tensor, cfg: SearchConfig):
    """Algorithm 1 for one search, written the straightforward way: each Jacobian row by its
    own backward pass of one input, the projection by a dense pseudo-inverse of the
    ``m x 2 n0`` constraint matrix. Same schedule, tests and scoring as the batched code.
    Returns the distance of the best colliding iterate."""
    shape = x.shape
    x0, x1 = x.flatten(), xp.flatten()

    def values_and_rows(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inp = u.view(1, *shape).clone().requires_grad_(True)
        y = a @ f(inp)[0]
        rows = [
            torch.autograd.grad(y[k], inp, retain_graph=True)[0].flatten() for k in range(len(y))
        ]
        return y.detach(), torch.stack(rows)

    def project_values(u: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return a @ f(u.view(1, *shape))[0]

    def objective(u: torch.Tensor, u2: torch.Tensor) -> float:
        return float(((u - x0) ** 2).sum() + ((u2 - x1) ** 2).sum())

    scale = float((project_values(x0) - project_values(x1)).norm())
    u = u2 = (x0 + x1) / 2
    best_u, best_u2, best = u, u2, objective(u, u2)
    prev, alpha = best, 1.0
    total = cfg.max_iter + cfg.polish
    for step in range(total + 1):
        if step == total:
            res = float((project_values(u) - project_values(u2)).norm())
        else:
            fu, g = values_and_rows(u)
            fu2, g2 = values_and_rows(u2)
            res = float((fu - fu2).norm())
        if step > 0:
            obj = objective(u, u2)
            ok = res <= cfg.tol * max(scale, 1e-12)
            if ok and obj < best:
                best_u, best_u2, best = u, u2, obj
            if ok and prev - obj < cfg.tol * max(prev, 1e-12):
                break
            prev = obj
        if step == total:
            break
        target = torch.cat([(1 - alpha) * u + alpha * x0, (1 - alpha) * u2 + alpha * x1])
        m_mat = torch.cat([-g, g2], dim=1).double()
        b = (g2 @ u2 - g @ u - (fu2 - fu)).double()
        moved = target.double() - torch.linalg.pinv(m_mat) @ (m_mat @ target.double() - b)
        u, u2 = moved.float().split(len(x0))
        alpha = cfg.alpha if step == 0 else alpha * cfg.gamma
        if step + 1 >= cfg.max_iter:
            alpha = 0.0
    return float(torch.maximum((best_u - x0).norm(), (best_u2 - x1).norm()))


def flow_vs_cvxpy(vertices: int, seed: int = 0) -> dict[str, Any]:
    """Max-flow and cvxpy on one random two-class graph (Gaussian samples, 2-D) at 20 eps."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(seed)
    half = vertices // 2
    mu = np.array([1.0, 0.0])
    dist = cdist(rng.standard_normal((half, 2)) + mu, rng.standard_normal((half, 2)) - mu)
    grid = np.linspace(0.05, 2.0, 20) * 2
    graphs = [ConflictGraph.from_distances(dist, e) for e in grid]
    start = time.perf_counter()
    flow = [cross_entropy_of(cross_entropy_flow(g)) for g in graphs]
    t_flow = time.perf_counter() - start
    start = time.perf_counter()
    ref, fallbacks = [], 0
    for g in graphs:  # Clarabel, and SCS should Clarabel fail (counted)
        try:
            ref.append(cross_entropy_of(cross_entropy_cvxpy(g, "clarabel")))
        except Exception:
            fallbacks += 1
            ref.append(cross_entropy_of(cross_entropy_cvxpy(g, "scs")))
    t_cvx = time.perf_counter() - start
    return {
        "vertices": 2 * half,
        "eps_values": len(grid),
        "edges_max": len(graphs[-1].edges),
        "flow_s": t_flow,
        "cvxpy_s": t_cvx,
        "cvxpy_over_flow": t_cvx / t_flow,
        "clarabel_failures": fallbacks,
        "max_abs_difference": float(np.max(np.abs(np.array(flow) - np.array(ref)))),
    }


def layer_benchmark(net, layer: str, xa, xb, args) -> dict[str, Any]:
    """Batched, per-pair, naive and raw paths at one layer; their times and agreement."""
    f = extractor(net, layer)
    with torch.no_grad():
        dim = f(xa[:1]).shape[1]
    mats = torch.randn(args.projections, args.m, dim, generator=torch.Generator().manual_seed(0))
    x, xp, which = _searches(xa, xb, args.projections)
    cfg = SearchConfig(max_iter=args.max_iter)

    def batched():
        return collision_search(f, x, xp, mats, which, cfg)

    def per_pair():
        out = [collision_search(f, x[i : i + 1], xp[i : i + 1], mats, which[i : i + 1], cfg)
               for i in range(len(x))]  # fmt: skip
        return torch.cat([r.distance for r in out]), torch.cat([r.iterations for r in out])

    def naive():
        return torch.tensor(
            [naive_search(f, x[i], xp[i], mats[which[i]], cfg) for i in range(len(x))]
        )

    reference = batched()
    iters = int(reference.iterations.float().mean().round())

    def raw():
        pts = torch.cat([x, xp]).requires_grad_(True)
        rows = torch.cat([mats[which], mats[which]])
        for _ in range(iters):
            out = f(pts)
            for k in range(args.m):
                torch.autograd.grad((out * rows[:, k]).sum(), pts, retain_graph=k < args.m - 1)

    times, results = interleaved_times(
        {"batched": batched, "per_pair": per_pair, "naive": naive, "raw": raw}, args.repeats
    )
    looped_dist, _ = results["per_pair"]
    diff = (results["batched"].distance - looped_dist).abs() / looped_dist.clamp_min(1e-12)
    naive_diff = (results["batched"].distance - results["naive"]).abs() / results[
        "naive"
    ].clamp_min(1e-12)
    return {
        "layer": layer,
        "layer_dim": dim,
        "searches": len(x),
        "mean_iterations": iters,
        "times_s": times,
        "per_pair_over_batched": times["per_pair"] / times["batched"],
        "naive_over_batched": times["naive"] / times["batched"],
        "batched_over_raw": times["batched"] / times["raw"],
        "searches_per_second": len(x) / times["batched"],
        "max_relative_difference_vs_naive": float(naive_diff.max()),
        "median_relative_difference_vs_naive": float(naive_diff.median()),
        "max_relative_distance_difference": float(diff.max()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print the ratios."""
    parser = benchmark_parser(__doc__, "small-cnn", "mnist_subset.npz")
    parser.add_argument("--classes", default="3,7")
    parser.add_argument("--per-class", type=int, default=8, help="pairs = per_class^2")
    parser.add_argument("--projections", type=int, default=4)
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument(
        "--layers",
        default="all",
        help="comma-separated layers, or 'all' (input and the model's layers)",
    )
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--graph-vertices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="digits, 3 x 3 pairs, 2 proj.")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.per_class, args.projections, args.max_iter = "digits", 3, 2, 10
        args.graph_vertices, args.layers = 40, "logits"
    net, data = trained_model(args.model, args.dataset, torch.device("cpu"), epochs=3)
    layers = ["input", *net.layers] if args.layers == "all" else args.layers.split(",")
    ca, cb = (int(c) for c in args.classes.split(","))
    train = data.split("train").balanced_subset(args.per_class, seed=0)
    xa = train.float_images(torch.nonzero(train.labels == ca).flatten())
    xb = train.float_images(torch.nonzero(train.labels == cb).flatten())
    print(
        f"{args.model} on {args.dataset}, {len(xa) * len(xb)} pairs x {args.projections} "
        f"projections, m={args.m}, threads {torch.get_num_threads()}"
    )
    print(f"  {'layer':8} {'dim':>6} {'batched':>9} {'per-pair':>9} {'naive':>9} {'raw':>9}"
          f" {'naive/b':>8} {'b/raw':>6} {'max rel diff':>12}")  # fmt: skip
    per_layer = []
    for layer in layers:
        row = layer_benchmark(net, layer, xa, xb, args)
        per_layer.append(row)
        t = row["times_s"]
        print(
            f"  {layer:8} {row['layer_dim']:6d} {t['batched']:8.2f}s {t['per_pair']:8.2f}s "
            f"{t['naive']:8.2f}s {t['raw']:8.2f}s {row['naive_over_batched']:7.1f}x "
            f"{row['batched_over_raw']:6.2f} {row['max_relative_difference_vs_naive']:12.1e}"
        )
    totals = {k: sum(r["times_s"][k] for r in per_layer) for k in per_layer[0]["times_s"]}
    graph = flow_vs_cvxpy(args.graph_vertices)
    payload = {
        "benchmark": "collision",
        "machine": machine(),
        "model": args.model,
        "dataset": args.dataset,
        "pairs": len(xa) * len(xb),
        "projections": args.projections,
        "m": args.m,
        "layers": per_layer,
        "times_s": totals,
        "naive_over_batched": totals["naive"] / totals["batched"],
        "per_pair_over_batched": totals["per_pair"] / totals["batched"],
        "batched_over_raw": totals["batched"] / totals["raw"],
        "searches_per_second": sum(r["searches"] for r in per_layer) / totals["batched"],
        "max_relative_distance_difference": max(
            r["max_relative_distance_difference"] for r in per_layer
        ),
        "max_relative_difference_vs_naive": max(
            r["max_relative_difference_vs_naive"] for r in per_layer
        ),
        "graph": graph,
    }
    print(
        f"all {len(layers)} layers: naive / batched {payload['naive_over_batched']:.1f}x, "
        f"per-pair / batched {payload['per_pair_over_batched']:.1f}x, batched / raw "
        f"{payload['batched_over_raw']:.2f}, {payload['searches_per_second']:.1f} searches/s"
    )
    print(
        f"graph {graph['vertices']} vertices x {graph['eps_values']} eps: flow "
        f"{graph['flow_s']:.3f} s, cvxpy {graph['cvxpy_s']:.3f} s "
        f"({graph['cvxpy_over_flow']:.0f}x), max |difference| {graph['max_abs_difference']:.1e}"
    )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()

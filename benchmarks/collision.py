"""The collision plugin: the batched collision search against a per-pair loop of the same
algorithm, and the exact max-flow path against cvxpy.

Side by side in one run, on the same model, pairs and projections:

* ``batched``: :func:`collision_search` on every (pair, projection) search at once (one
  forward and one vmapped backward of ``m`` cotangents per iteration for all points);
* ``per_pair``: the same function called once per search (``S = 1``), the loop a
  researcher would write around a per-pair implementation;
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

import argparse
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

from benchmarks.common import SHARED, interleaved_times, machine, trained_model, write_json


def _searches(xa, xb, projections: int):
    ia, ib = np.divmod(np.arange(len(xa) * len(xb)), len(xb))
    x, xp = xa[ia].repeat(projections, 1, 1, 1), xb[ib].repeat(projections, 1, 1, 1)
    which = torch.arange(projections).repeat_interleave(len(ia))
    return x, xp, which


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = (
        f"npz:{SHARED / 'mnist_subset.npz'}" if (SHARED / "mnist_subset.npz").exists() else "digits"
    )
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--dataset", default=default_data)
    parser.add_argument("--classes", default="3,7")
    parser.add_argument("--per-class", type=int, default=8, help="pairs = per_class^2")
    parser.add_argument("--projections", type=int, default=4)
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--layer", default="logits")
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--graph-vertices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="digits, 3 x 3 pairs, 2 proj.")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.per_class, args.projections, args.max_iter = "digits", 3, 2, 10
        args.graph_vertices = 40
    device = torch.device("cpu")
    net, data = trained_model(args.model, args.dataset, device, epochs=3)
    ca, cb = (int(c) for c in args.classes.split(","))
    train = data.split("train").balanced_subset(args.per_class, seed=0)
    xa = train.float_images(torch.nonzero(train.labels == ca).flatten())
    xb = train.float_images(torch.nonzero(train.labels == cb).flatten())
    f = extractor(net, args.layer)
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
        {"batched": batched, "per_pair": per_pair, "raw": raw}, args.repeats
    )
    looped_dist, _ = results["per_pair"]
    diff = (results["batched"].distance - looped_dist).abs() / looped_dist.clamp_min(1e-12)
    graph = flow_vs_cvxpy(args.graph_vertices)
    payload = {
        "benchmark": "collision",
        "machine": machine(),
        "model": args.model,
        "dataset": args.dataset,
        "layer": args.layer,
        "layer_dim": dim,
        "pairs": len(xa) * len(xb),
        "projections": args.projections,
        "searches": len(x),
        "m": args.m,
        "mean_iterations": iters,
        "times_s": times,
        "per_pair_over_batched": times["per_pair"] / times["batched"],
        "batched_over_raw": times["batched"] / times["raw"],
        "searches_per_second": len(x) / times["batched"],
        "max_relative_distance_difference": float(diff.max()),
        "graph": graph,
    }
    print(
        f"{args.model} on {args.dataset}, layer {args.layer} ({dim}), {len(x)} searches "
        f"({payload['pairs']} pairs x {args.projections} projections), m={args.m}, "
        f"threads {torch.get_num_threads()}"
    )
    for name, t in times.items():
        print(f"  {name:10} {t:8.3f} s")
    print(
        f"per-pair / batched {payload['per_pair_over_batched']:.1f}x; batched / raw "
        f"{payload['batched_over_raw']:.2f}; {payload['searches_per_second']:.1f} searches/s; "
        f"max relative distance difference {payload['max_relative_distance_difference']:.1e}"
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

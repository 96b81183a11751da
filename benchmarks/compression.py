"""The compression plugin's per-pair quantities: batched vs a naive per-sample loop, and vs
the raw passes they cannot avoid.

Side by side in one run, on the same model and samples:

* ``batched``: :func:`nearest_other_class` (chunked distance matrices) and
  :func:`pair_quantities` (two backward passes at x, one on all path points);
* ``naive``: the textbook loop a researcher would write first: for each sample, distances
  to every other sample, then one forward/backward per gradient (two at x, K on the path);
* ``raw``: one forward+backward pass over the ``B (K + 2)`` inputs the quantities need
  (the floor of any implementation), plus the distance matrix.

The minimum-norm attack (FAB, the dominant cost of the metric) is timed separately, with
its Jacobian by a loop of backward passes and by ``torch.func`` (vmap), and converted to
samples per second.

Usage::

    python -m benchmarks.compression              # small CNN on the MNIST subset
    python -m benchmarks.compression --quick      # digits, 32 samples (kept alive by a test)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from featrob_compression.geometry import nearest_other_class
from featrob_compression.quantities import pair_quantities, path_points

from benchmarks.common import (
    benchmark_parser,
    interleaved_times,
    machine,
    trained_model,
    write_json,
)
from featrob.attacks.fab import FAB


def naive(model, x: torch.Tensor, y: torch.Tensor, points: int) -> torch.Tensor:
    """Per-sample loop: nearest partner, then gradients one input at a time. Returns
    ``|cos(grad g, x' - x)|`` (enough to check it computes the same thing)."""
    out = []
    flat = x.flatten(1)
    for i in range(len(x)):
        best, best_d = -1, math.inf
        for j in range(len(x)):
            if y[j] != y[i]:
                dist = float((flat[i] - flat[j]).norm())
                if dist < best_d:
                    best, best_d = j, dist
        x2, c1, c2 = x[best], int(y[i]), int(y[best])

        def grad(inp: torch.Tensor, k1: int, k2: int | None) -> torch.Tensor:
            inp = inp[None].clone().requires_grad_(True)
            logits = model(inp)[0]
            value = logits[k1] - (logits[k2] if k2 is not None else 0)
            (g,) = torch.autograd.grad(value, inp)
            return g[0]

        g1, g2 = grad(x[i], c1, None), grad(x[i], c2, None)
        d = (x2 - x[i]).flatten()
        for t in range(points):
            grad(x[i] + (t + 0.5) / points * (x2 - x[i]), c1, c2)
        gd = (g1 - g2).flatten()
        out.append(abs(float(gd @ d / (gd.norm() * d.norm()))))
    return torch.tensor(out)


def batched(model, x: torch.Tensor, y: torch.Tensor, points: int) -> torch.Tensor:
    """The plugin's path: returns ``|cos(grad g, x' - x)|``."""
    partner, _ = nearest_other_class(x, y)
    p = partner[:, 0]
    return pair_quantities(model, x, y, x[p], y[p], points=points, chunk=4096)["abs_cos"]


def raw(model, x: torch.Tensor, y: torch.Tensor, points: int) -> None:
    """One forward+backward over B (K + 2) inputs and one distance matrix."""
    torch.cdist(x.flatten(1), x.flatten(1))
    inp = torch.cat([x, x, path_points(x, x.roll(1, 0), points)]).requires_grad_(True)
    logits = model(inp)
    torch.autograd.grad(logits[:, 0].sum(), inp)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print the ratios."""
    parser = benchmark_parser(__doc__, "small-cnn", "mnist_subset.npz")
    parser.add_argument("--n", type=int, default=200, help="samples (balanced)")
    parser.add_argument("--points", type=int, default=16, help="path points")
    parser.add_argument("--fab-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="digits, 32 samples, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.n, args.repeats, args.fab_steps = "digits", 32, 1, 10
    device = torch.device("cpu")
    net, data = trained_model(args.model, args.dataset, device, epochs=3)
    test = data.test.balanced_subset(max(1, args.n // data.num_classes), seed=0)
    x, y = test.float_images(), test.labels
    times, out = interleaved_times(
        {
            "batched": lambda: batched(net, x, y, args.points),
            "naive": lambda: naive(net, x, y, args.points),
            "raw": lambda: raw(net, x, y, args.points),
        },
        args.repeats,
    )
    agree = float((out["batched"] - out["naive"]).abs().max())
    fab_times, _ = interleaved_times(
        {
            f"fab_{jac}": (
                lambda jac=jac: FAB(
                    eps=math.sqrt(x[0].numel()), norm="l2", steps=args.fab_steps, jacobian=jac
                ).minimize(net, x, y)
            )
            for jac in ("loop", "vmap")
        },
        1,
    )
    partner, _ = nearest_other_class(x, y)
    target = y[partner[:, 0]]
    pair_t, _ = interleaved_times(
        {
            "fab_pairwise": lambda: FAB(
                eps=math.sqrt(x[0].numel()), norm="l2", steps=args.fab_steps
            ).minimize(net, x, y, target=target, pairwise=True)
        },
        1,
    )
    per_sample = times["batched"] + min(fab_times.values()) + pair_t["fab_pairwise"]
    payload = {
        "benchmark": "compression",
        "machine": machine(),
        "model": args.model,
        "dataset": args.dataset,
        "samples": len(x),
        "path_points": args.points,
        "fab_steps": args.fab_steps,
        "times_s": {**times, **fab_times, **pair_t},
        "naive_over_batched": times["naive"] / times["batched"],
        "batched_over_raw": times["batched"] / times["raw"],
        "max_abs_difference_batched_vs_naive": agree,
        "samples_per_second_full": len(x) / per_sample,
    }
    print(
        f"{args.model} on {args.dataset}: {len(x)} samples, K={args.points}, "
        f"threads {torch.get_num_threads()}"
    )
    for name, t in payload["times_s"].items():
        print(f"  {name:14} {t:8.3f} s")
    print(
        f"naive / batched {payload['naive_over_batched']:.1f}x; batched / raw "
        f"{payload['batched_over_raw']:.2f}; max |cos| difference {agree:.2e}; "
        f"full metric {payload['samples_per_second_full']:.1f} samples/s"
    )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()

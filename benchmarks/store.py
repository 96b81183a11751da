"""The feature store: a cold run (computing features and a PGD evaluation) against a warm one
(reading them back), and the raw cost of the forward passes.

Side by side in one run, on the same model and samples:

* ``cold``: every named layer's features and a PGD-10 evaluation into an empty store;
* ``warm``: the same calls on the filled store (what a second metric or a rerun pays);
* ``raw``: the forward passes alone, no store.

Usage::

    python -m benchmarks.store              # small CNN on the MNIST subset, 2,000 images
    python -m benchmarks.store --quick      # digits, 200 images
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import benchmark_parser, machine, trained_model, write_json
from featrob.api import context_for


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print the ratios."""
    parser = benchmark_parser(__doc__, "small-cnn", "mnist_subset.npz")
    parser.add_argument("--n-per-class", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="digits, 20 images per class")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.n_per_class = "digits", 20
    net, data = trained_model(args.model, args.dataset, torch.device("cpu"), epochs=3)
    layers = net.layers
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        values = {}
        for phase in ("cold", "warm"):
            ctx = context_for(net, data, store=store, n_per_class=args.n_per_class, eps=0.1)
            start = time.perf_counter()
            feats = ctx.features_many(layers)
            robust = ctx.evaluate(["pgd(steps=10)"]).robust_accuracy
            times[phase] = time.perf_counter() - start
            values[phase] = (feats["logits"].values.clone(), robust)
        store_mib = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 2**20
    x = ctx.inputs()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), ctx.config.batch_size):
            net.extract(x[i : i + ctx.config.batch_size], layers)
    times["raw_forward"] = time.perf_counter() - start
    same = torch.equal(values["cold"][0], values["warm"][0]) and (
        values["cold"][1] == values["warm"][1]
    )
    payload = {
        "benchmark": "store",
        "machine": machine(),
        "model": args.model,
        "dataset": args.dataset,
        "samples": len(x),
        "layers": layers,
        "times_s": times,
        "cold_over_warm": times["cold"] / times["warm"],
        "warm_over_raw_forward": times["warm"] / times["raw_forward"],
        "store_mib": store_mib,
        "identical": same,
    }
    print(
        f"{args.model} on {args.dataset}: {len(x)} samples, layers {', '.join(layers)} and a "
        f"PGD-10 evaluation; threads {torch.get_num_threads()}"
    )
    for name, t in times.items():
        print(f"  {name:12} {t:8.3f} s")
    print(
        f"cold / warm {payload['cold_over_warm']:.0f}x, warm / raw forward "
        f"{payload['warm_over_raw_forward']:.2f}, store {store_mib:.1f} MiB, identical: {same}"
    )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()

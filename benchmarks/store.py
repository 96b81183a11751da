"""The feature store: a cold run (computing features and a PGD evaluation) against a warm one
(reading them back), the cost of verifying the chunks' checksums, and the raw cost of the
forward passes.

Side by side in one run, on the same model and samples:

* ``cold``: every named layer's features and a PGD-10 evaluation into an empty store;
* ``warm``: the same calls on the filled store (what a second metric or a rerun pays), each
  through a fresh store object, so every chunk it reads has its checksum verified;
* ``warm_unverified``: the same with ``featrob.store.VERIFY_CHECKSUMS`` off; ``warm`` and
  ``warm_unverified`` run in turns (median of ``--repeats`` each, after one untimed round),
  and ``verify_overhead`` is ``warm / warm_unverified - 1`` (the target: under 5 %);
* ``store_reads`` and ``store_reads_unverified``: the store's part of a warm run alone
  (``missing`` then ``read`` of every row of every entry through a fresh store object), with
  and without verification, in turns; their difference over ``warm_unverified`` is
  ``verify_overhead_store_reads``, the same overhead without the noise of the model's compute
  (a busy machine swings the warm runs' forward passes far more than verification costs);
* ``raw``: the forward passes alone, no store.

Usage::

    python -m benchmarks.store              # small CNN on the MNIST subset, 2,000 images
    python -m benchmarks.store --quick      # digits, 200 images
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import benchmark_parser, machine, trained_model, write_json
from featrob import store as store_module
from featrob.api import context_for
from featrob.context import RunContext
from featrob.data.base import DatasetBundle
from featrob.models.base import FeatrobModel
from featrob.store import FeatureStore


def _run(
    net: FeatrobModel,
    data: DatasetBundle,
    store: Path,
    layers: list[str],
    n_per_class: int,
    verify: bool,
) -> tuple[float, tuple[torch.Tensor, float], RunContext]:
    """One run's features and PGD evaluation through a fresh store object.

    Returns:
        The seconds it took, its logits and robust accuracy, and its context.
    """
    store_module.VERIFY_CHECKSUMS = verify
    try:
        ctx = context_for(net, data, store=store, n_per_class=n_per_class, eps=0.1)
        start = time.perf_counter()
        feats = ctx.features_many(layers)
        robust = ctx.evaluate(["pgd(steps=10)"]).robust_accuracy
        seconds = time.perf_counter() - start
    finally:
        store_module.VERIFY_CHECKSUMS = True
    return seconds, (feats["logits"].values.clone(), robust), ctx


def _store_reads(store: Path, verify: bool) -> float:
    """Seconds to look up and read every row of every entry of ``store`` the way a warm run
    does (``missing``, then ``read``), through a fresh store object."""
    keys = FeatureStore(store).entry_keys()
    try:
        store_module.VERIFY_CHECKSUMS = False  # list the rows (untimed, unverified)
        listing = FeatureStore(store)
        rows = [listing.entry(key).indices() for key in keys]
        store_module.VERIFY_CHECKSUMS = verify
        start = time.perf_counter()
        fresh = FeatureStore(store)
        for key, idx in zip(keys, rows, strict=True):
            entry = fresh.entry(key)
            entry.read(idx[~np.isin(idx, entry.missing(idx))])
        return time.perf_counter() - start
    finally:
        store_module.VERIFY_CHECKSUMS = True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print the ratios."""
    parser = benchmark_parser(__doc__, "small-cnn", "mnist_subset.npz")
    parser.add_argument("--n-per-class", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="digits, 20 images per class")
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed warm runs of each kind (median)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.n_per_class = "digits", 20
    net, data = trained_model(args.model, args.dataset, torch.device("cpu"), epochs=3)
    layers = net.layers
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        times["cold"], cold, ctx = _run(net, data, store, layers, args.n_per_class, True)
        kinds = {"warm": True, "warm_unverified": False}
        samples: dict[str, list[float]] = {name: [] for name in kinds}
        values = {}
        for round_ in range(args.repeats + 1):  # in turns; round 0 is an untimed warm-up
            for name, verify in kinds.items():
                seconds, values[name], _ = _run(net, data, store, layers, args.n_per_class, verify)
                if round_:
                    samples[name].append(seconds)
        times.update({name: statistics.median(t) for name, t in samples.items()})
        reads: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(max(args.repeats, 5)):
            for verify in reads:
                reads[verify].append(_store_reads(store, verify))
        times["store_reads"] = statistics.median(reads[True])
        times["store_reads_unverified"] = statistics.median(reads[False])
        chunks = list(store.rglob("chunk-*.h5"))
        failures = list(store.rglob("bad-chunk-*.h5"))  # none: every chunk passed
        store_mib = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 2**20
    x = ctx.inputs()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), ctx.config.batch_size):
            net.extract(x[i : i + ctx.config.batch_size], layers)
    times["raw_forward"] = time.perf_counter() - start
    same = all(
        torch.equal(cold[0], values[name][0]) and cold[1] == values[name][1] for name in kinds
    )
    payload = {
        "benchmark": "store",
        "machine": machine(),
        "model": args.model,
        "dataset": args.dataset,
        "samples": len(x),
        "layers": layers,
        "repeats": args.repeats,
        "times_s": times,
        "cold_over_warm": times["cold"] / times["warm"],
        "warm_over_raw_forward": times["warm"] / times["raw_forward"],
        "warm_over_warm_unverified": times["warm"] / times["warm_unverified"],
        "verify_overhead": times["warm"] / times["warm_unverified"] - 1,
        # the same cost measured apart from the model's compute (much less noisy)
        "verify_overhead_store_reads": (times["store_reads"] - times["store_reads_unverified"])
        / times["warm_unverified"],
        "chunks": len(chunks),
        "store_mib": store_mib,
        "checksum_failures": len(failures),
        "identical": same,
    }
    print(
        f"{args.model} on {args.dataset}: {len(x)} samples, layers {', '.join(layers)} and a "
        f"PGD-10 evaluation; threads {torch.get_num_threads()}; warm runs: median of "
        f"{args.repeats}"
    )
    for name, t in times.items():
        print(f"  {name:24} {t:8.3f} s")
    print(
        f"cold / warm {payload['cold_over_warm']:.0f}x, warm / raw forward "
        f"{payload['warm_over_raw_forward']:.2f}, store {store_mib:.1f} MiB in {len(chunks)} "
        f"chunks, identical: {same}"
    )
    print(
        f"checksum verification: warm / warm unverified "
        f"{payload['warm_over_warm_unverified']:.3f} ({payload['verify_overhead']:+.1%} of a "
        f"warm run; target < 5 %); measured on the store reads alone "
        f"{(times['store_reads'] - times['store_reads_unverified']) * 1e3:+.1f} ms "
        f"({payload['verify_overhead_store_reads']:+.1%} of a warm run); "
        f"checksum failures: {len(failures)}"
    )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()

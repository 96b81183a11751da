"""The sensitivity plugin: all features batched against a per-feature loop of the same PGD, and
against the raw passes they cannot avoid.

Side by side in one run, on the same model, samples, features and eps:

* ``batched``: :func:`measure_extremes`, the plugin's path (chunks of ``--batch-inputs``
  replicas: samples x features x 2 directions per forward/backward pass), with PGD's exact
  ``drop_stationary`` (a replica whose iterate stops moving leaves later passes);
* ``batched_all``: the same without dropping: every replica runs every step;
* ``per_feature``: :func:`per_feature_extremes`, one PGD run per feature and direction on
  the sample batch (what the paper did, "extremely time consuming");
* ``per_feature_drop``: that loop with ``drop_stationary`` too, to separate what batching
  buys from what dropping buys;
* ``raw``: ``steps + 1`` forward and ``steps`` backward passes over every replica (the
  floor of any implementation that runs every replica every step), in chunks of the same
  size.

Both contenders start every replica from its sample's seeded random point, so they compute
the same thing; the largest difference of the sensitivities is reported. With ``--amp
bf16`` the batched path also runs under bf16 autocast and the effect on the values is
reported (on a GPU; on a CPU bf16 autocast is slow and only a check).

Usage::

    python -m benchmarks.sensitivity              # small CNN on the MNIST subset, 128 images
    python -m benchmarks.sensitivity --quick      # digits, few samples and features
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
import torch
from featrob_sensitivity.extremes import largest_change, per_feature_extremes
from featrob_sensitivity.measure import block_sizes, measure_extremes

from benchmarks.common import (
    benchmark_parser,
    interleaved_times,
    machine,
    trained_model,
    write_json,
)
from featrob.attacks.pgd import PGD
from featrob.extract import autocast_context
from featrob.rows import RowCache
from featrob.seeding import sample_seeds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print the ratios."""
    parser = benchmark_parser(__doc__, "small-cnn", "mnist_subset.npz")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--features", type=int, default=0, help="0: every feature")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layer", default="features")
    parser.add_argument("--batch-inputs", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default=None, help="also time the batched path under bf16")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="digits, 16 samples, 12 features")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.samples, args.features, args.steps = "digits", 16, 12, 5
    device = torch.device(args.device)
    net, data = trained_model(args.model, args.dataset, device, epochs=3)
    net = net.to(device).eval()
    test = data.test.subset(np.arange(min(args.samples, len(data.test))))
    x = test.float_images().to(device)
    seeds = sample_seeds(0, test.indices).to(device)
    layer = net.resolve_layer(args.layer)

    def forward(z: torch.Tensor) -> torch.Tensor:
        return net.forward_to(z, layer).flatten(1).float()

    with torch.no_grad():
        dim = int(forward(x[:1]).shape[1])
    features = np.arange(dim if args.features <= 0 else min(args.features, dim))
    attack = PGD(eps=args.eps, norm="linf", steps=args.steps)
    dropping = PGD(eps=args.eps, norm="linf", steps=args.steps, drop_stationary=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def batched(amp: str | None = None, pgd: PGD = dropping) -> np.ndarray:
        def fwd(z: torch.Tensor) -> torch.Tensor:
            with autocast_context(device, amp):
                return forward(z)

        out = measure_extremes(
            fwd, x, seeds, test.indices.numpy(), features, pgd, dim=dim,
            batch_inputs=args.batch_inputs, cached_rows=partial(RowCache(None, {}).rows, {}),
            label="",
        )  # fmt: skip
        return out.sensitivity

    def per_feature(pgd: PGD = attack) -> np.ndarray:
        feats = torch.as_tensor(features)
        change = largest_change(*per_feature_extremes(forward, x, feats, pgd, seeds))
        return change.mean(0).double().cpu().numpy()

    sb, fb = block_sizes(len(x), len(features), args.batch_inputs)

    def raw() -> None:
        replicas = x.repeat(2 * fb, *([1] * (x.dim() - 1)))[: 2 * fb * sb]
        cells = -(-len(x) // sb) * -(-len(features) // fb)
        for _ in range(cells):
            for _ in range(args.steps):
                inp = replicas.detach().requires_grad_(True)
                torch.autograd.grad(forward(inp)[:, 0].sum(), inp)
            with torch.no_grad():
                forward(replicas)

    contenders = {
        "batched": batched,
        "batched_all": lambda: batched(pgd=attack),
        "per_feature": per_feature,
        "per_feature_drop": lambda: per_feature(dropping),
        "raw": raw,
    }
    times, results = interleaved_times(contenders, args.repeats, sync)
    diff = np.abs(results["batched"] - results["per_feature"])
    rel = diff / np.maximum(np.abs(results["per_feature"]), 1e-12)
    diff_all = np.abs(results["batched_all"] - results["per_feature"])
    payload: dict[str, Any] = {
        "benchmark": "sensitivity",
        "machine": machine(),
        "model": args.model,
        "dataset": args.dataset,
        "device": str(device),
        "layer": layer,
        "samples": len(x),
        "features": len(features),
        "eps": args.eps,
        "steps": args.steps,
        "batch_inputs": args.batch_inputs,
        "times_s": times,
        "per_feature_over_batched": times["per_feature"] / times["batched"],
        "per_feature_over_batched_all": times["per_feature"] / times["batched_all"],
        "per_feature_drop_over_batched": times["per_feature_drop"] / times["batched"],
        "batched_all_over_batched": times["batched_all"] / times["batched"],
        "batched_over_raw": times["batched"] / times["raw"],
        "batched_all_over_raw": times["batched_all"] / times["raw"],
        "features_per_second": len(features) / times["batched"],
        "max_abs_difference": float(diff.max()),
        "max_relative_difference": float(rel.max()),
        "max_abs_difference_without_dropping": float(diff_all.max()),
        "mean_sensitivity": float(results["batched"].mean()),
    }
    if device.type == "cuda":
        payload["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if args.amp:
        start = time.perf_counter()
        low = batched(args.amp)
        sync()
        payload["amp"] = {
            "dtype": args.amp,
            "seconds": time.perf_counter() - start,
            "mean_sensitivity": float(low.mean()),
            "max_relative_difference": float(
                (np.abs(low - results["batched"]) / np.maximum(results["batched"], 1e-12)).max()
            ),
        }
    print(
        f"{args.model} on {args.dataset} ({device}), layer {layer}: {len(features)} features x "
        f"{len(x)} samples x 2 directions, {args.steps} steps, eps {args.eps:g}, threads "
        f"{torch.get_num_threads()}, batch {args.batch_inputs} ({sb} samples x {fb} features)"
    )
    for name, t in times.items():
        print(f"  {name:12} {t:9.3f} s")
    print(
        f"per-feature / batched {payload['per_feature_over_batched']:.1f}x (batching alone "
        f"{payload['per_feature_over_batched_all']:.2f}x, dropping alone "
        f"{payload['batched_all_over_batched']:.2f}x; per-feature with dropping / batched "
        f"{payload['per_feature_drop_over_batched']:.2f}x), batched / raw "
        f"{payload['batched_over_raw']:.2f}, {payload['features_per_second']:.1f} features/s; "
        f"sensitivities agree to {payload['max_abs_difference']:.1e} "
        f"({payload['max_relative_difference']:.1e} relative)"
    )
    if "amp" in payload:
        a = payload["amp"]
        print(
            f"{a['dtype']} autocast: {a['seconds']:.3f} s, mean sensitivity "
            f"{a['mean_sensitivity']:.4g} vs {payload['mean_sensitivity']:.4g} (max relative "
            f"difference {a['max_relative_difference']:.1e})"
        )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()

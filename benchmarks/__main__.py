"""``python -m benchmarks``: every benchmark in one run, each ratio beside its reference.

Runs ``attacks`` (vs pyautoattack and the raw forward/backward cost), ``collision``
(batched vs per-pair search, max-flow vs cvxpy), ``compression`` (batched vs per-sample),
``sensitivity`` (batched vs per-feature PGD) and ``store`` (cache hit vs cold), prints one
table and writes every payload to one JSON file; ``--compare OLD.json`` prints the ratios
of an earlier run beside this one's.

Usage::

    python -m benchmarks --quick --json bench.json     # < 5 minutes on a 2-core CPU
    python -m benchmarks --only collision,store
    python -m benchmarks --quick --compare old.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine, write_json

BENCHMARKS = ("attacks", "collision", "compression", "fab_projection", "sensitivity", "store")

#: (benchmark, label, path into its payload, reference it is measured against)
HEADLINES: tuple[tuple[str, str, tuple[Any, ...], str], ...] = (
    ("attacks", "APGD-CE time", ("results", 0, "ratio_vs_reference"), "pyautoattack"),
    ("attacks", "APGD-CE time", ("results", 0, "ratio_vs_raw"), "raw fwd/bwd passes"),
    ("attacks", "Square time", ("results", 1, "ratio_vs_reference"), "pyautoattack"),
    ("collision", "naive loop time", ("naive_over_batched",), "batched search"),
    ("collision", "batched time", ("batched_over_raw",), "raw fwd/bwd passes"),
    ("collision", "cvxpy time", ("graph", "cvxpy_over_flow"), "max-flow path"),
    ("compression", "naive loop time", ("naive_over_batched",), "batched quantities"),
    ("compression", "batched time", ("batched_over_raw",), "raw fwd/bwd passes"),
    ("fab_projection", "Newton water level", ("newton_over_sort",), "sorted breakpoints"),
    ("sensitivity", "per-feature time", ("per_feature_over_batched",), "batched features"),
    ("sensitivity", "batched time, no dropping", ("batched_all_over_raw",), "raw fwd/bwd passes"),
    ("store", "cold run time", ("cold_over_warm",), "warm (store hit)"),
)


def headline(payloads: dict[str, Any], path: tuple[Any, ...], name: str) -> float | None:
    """The value at ``path`` in benchmark ``name``'s payload, or None."""
    value: Any = payloads.get(name)
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return float(value) if isinstance(value, (int, float)) else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the selected benchmarks and print their headline ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's quick mode")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--json", default=None, help="write all payloads here")
    parser.add_argument("--compare", default=None, help="an earlier --json file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    payloads: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        payloads[name] = module.main(["--quick"] if args.quick else [])
        seconds[name] = time.perf_counter() - start
    old = json.loads(Path(args.compare).read_text())["benchmarks"] if args.compare else {}
    rows = []
    for name, label, path, reference in HEADLINES:
        if name not in payloads:
            continue
        now, before = headline(payloads, path, name), headline(old, path, name)
        rows.append({"benchmark": name, "measure": label, "over": reference, "ratio": now,
                     "previous": before})  # fmt: skip
    print(f"\n{'benchmark':12} {'measure':18} {'/ reference':22} {'ratio':>8} {'previous':>9}")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        prev = "" if r["previous"] is None else f"{r['previous']:.2f}"
        print(f"{r['benchmark']:12} {r['measure']:18} {r['over']:22} {ratio:>8} {prev:>9}")
    print("wall time: " + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items()))
    result = {
        "machine": machine(),
        "quick": args.quick,
        "seconds": seconds,
        "headlines": rows,
        "benchmarks": payloads,
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

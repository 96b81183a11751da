"""Time and peak memory against samples, features, pairs, layers and ``--max-memory``.

Each row is one ``featrob run`` in its own process (so its peak resident memory is its
own, read from the kernel with ``os.wait4``), on the small CNN and the MNIST subset (the
bundled digits without ../shared/data). Each group starts with its floor: the same run at
the smallest size (one sample, one feature, one pair), which pays Python, torch, the
plugins, data, model and the metric's fixed work; the ``extra MiB`` column is a row's peak
minus its group's floor, the memory that grows with the work (and that ``--max-memory``
bounds).

Usage::

    python -m benchmarks.scaling              # the table of the README (minutes)
    python -m benchmarks.scaling --quick      # three rows
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import benchmark_parser, machine, write_json

FAST = ["--attack", "pgd(steps=5)", "--report", "json", "--quiet", "--store", "none"]
TRAIN = ["--set", "train.epochs=1"]


def _sens(samples: int, features: int, *extra: str) -> list[str]:
    return [
        "--plugin", "sensitivity", "--eps", "0.1",
        "--set", f"metrics.sensitivity.samples={samples}",
        "--set", f"metrics.sensitivity.features={features}",
        "--set", "metrics.sensitivity.accuracy_steps=0", *extra,
    ]  # fmt: skip


def _coll(per_class: int, layers: str, *extra: str) -> list[str]:
    return [
        "--plugin", "collision",
        "--set", f"metrics.collision.per_class={per_class}",
        "--set", f"metrics.collision.layers={layers}",
        "--set", "metrics.collision.fab=false", *extra,
    ]  # fmt: skip


def rows(quick: bool) -> list[tuple[str, str, list[str]]]:
    """(group, setting, featrob run arguments) of every row; a group's first row is its
    floor."""
    table = [("run", "floor: accuracy, PGD-5", ["--plugin", "accuracy"])]
    table.append(("sensitivity", "floor: 1 sample x 1 feature", _sens(1, 1)))
    if quick:
        table.append(("sensitivity", "16 samples x 25 features", _sens(16, 25)))
        return table
    for n in (16, 32, 64):
        table.append(("sensitivity", f"{n} samples x 25 features", _sens(n, 25)))
    for k in (50, 100):
        table.append(("sensitivity", f"64 samples x {k} features", _sens(64, k)))
    for b in ("32MiB", "128MiB", "512MiB"):
        args = _sens(64, 100, "--max-memory", b)
        table.append(("sensitivity", f"64 x 100, --max-memory {b}", args))
    table.append(("collision", "floor: 1x1 pair, conv1", _coll(1, '["conv1"]')))
    for n in (4, 8, 16):
        table.append(
            ("collision", f"{n}x{n} pairs, conv1, m=10, 2 projections", _coll(n, '["conv1"]'))
        )
    for layer in ("input", "conv2", "fc1", "logits"):
        table.append(("collision", f"8x8 pairs, {layer}", _coll(8, f'["{layer}"]')))
    for b in ("16MiB", "64MiB", "256MiB"):
        args = _coll(16, '["conv1"]', "--max-memory", b)
        table.append(("collision", f"16x16 pairs, conv1, --max-memory {b}", args))
    for b in ("none", "64MiB"):
        args = ["--max-memory", b] if b != "none" else []
        table.append(("run", f"every metric, --max-memory {b}", args))
    return table


def measure(args: list[str], common: list[str]) -> dict[str, Any]:
    """Run ``featrob run`` in a child process: wall time and peak resident memory."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "featrob", "run", *common, *args, "--out", out]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        output = proc.stdout.read().decode() if proc.stdout else ""
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-2000:]}")
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024}  # ru_maxrss is KiB


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every row and print the table."""
    parser = benchmark_parser(__doc__, "small-cnn", "mnist_subset.npz")
    parser.add_argument("--n-per-class", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="three rows")
    args = parser.parse_args(argv)
    common = [
        "--model", args.model, "--dataset", args.dataset,
        "--n-per-class", str(args.n_per_class), *FAST, *TRAIN,
    ]  # fmt: skip
    measure(["--plugin", "accuracy"], common)  # trains and caches the model first
    table = []
    for group, setting, extra in rows(args.quick):
        result = measure(extra, common)
        table.append({"group": group, "setting": setting, **result})
        print(f"  {group:24} {setting:46} {result['seconds']:7.1f} s {result['peak_mib']:7.0f} MiB")
    floors: dict[str, float] = {}
    for row in table:
        floors.setdefault(row["group"], row["peak_mib"])  # a group's first row
        row["extra_mib"] = row["peak_mib"] - floors[row["group"]]
    payload = {
        "benchmark": "scaling",
        "machine": machine(),
        "model": args.model,
        "dataset": args.dataset,
        "rows": table,
    }
    print(
        "\n| what | setting | time (s) | peak (MiB) | extra MiB |\n| --- | --- | --- | --- | --- |"
    )
    for row in table:
        print(
            f"| {row['group']} | {row['setting']} | {row['seconds']:.1f} | "
            f"{row['peak_mib']:.0f} | {row['extra_mib']:.0f} |"
        )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()

"""Two runs on one feature store: do they share the work?

Measured side by side in one invocation, on a fresh store each time and with the model
already cached: one ``featrob run`` alone, then two identical runs started together on one
store (each writing its own results folder). Printed: the wall time of each, the ratio of
the slower concurrent run to the run alone, and how many rows were computed twice (rows
that appear in more than one chunk of an entry; 0 when the leases work).

Usage::

    python -m benchmarks.shared_store [--n-per-class 30] [--steps 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from benchmarks.common import write_json


def _args(n_per_class: int, steps: int, batch: int) -> list[str]:
    return [
        "--plugin", "accuracy", "--n-per-class", str(n_per_class), "--batch-size", str(batch),
        "--attack", f"pgd(steps={steps})", "--quiet", "--report", "json",
    ]  # fmt: skip


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "featrob", "run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen, start: float) -> float:
    _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"featrob run failed: {err[-2000:]}")
    return time.perf_counter() - start


def duplicate_rows(store: Path) -> int:
    """Rows stored more than once within an entry."""
    dup = 0
    for folder in store.glob("entries/*/*"):
        rows = []
        for chunk in folder.glob("chunk-*.h5"):
            with h5py.File(chunk, "r") as f:
                rows.append(np.asarray(f["indices"][()]))
        if rows:
            everything = np.concatenate(rows)
            dup += len(everything) - len(np.unique(everything))
    return dup


def measure(n_per_class: int, steps: int, batch: int) -> dict[str, Any]:
    """Times of one run alone and of two concurrent runs, on fresh stores."""
    work = Path(tempfile.mkdtemp(prefix="featrob-shared-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEATROB_HOME": str(work / "home")}
    args = _args(n_per_class, steps, batch)
    _wait(_start([*args, "--store", "none", "--out", "warm"], work, env), time.perf_counter())
    start = time.perf_counter()
    alone = _wait(_start([*args, "--store", "s1", "--out", "alone"], work, env), start)
    start = time.perf_counter()
    procs = [_start([*args, "--store", "s2", "--out", f"pair{i}"], work, env) for i in (0, 1)]
    together = [_wait(p, start) for p in procs]
    results = [json.loads((work / f"pair{i}" / "results.json").read_text()) for i in (0, 1)]
    same = results[0]["metrics"] == results[1]["metrics"] or all(
        results[0]["metrics"][m]["summary"] == results[1]["metrics"][m]["summary"]
        for m in results[0]["metrics"]
    )
    return {
        "config": {"n_per_class": n_per_class, "steps": steps, "batch_size": batch},
        "alone_s": round(alone, 2),
        "together_s": [round(t, 2) for t in together],
        "slower_together_over_alone": round(max(together) / alone, 3),
        "duplicate_rows_alone_store": duplicate_rows(work / "s1"),
        "duplicate_rows_shared_store": duplicate_rows(work / "s2"),
        "identical_results": bool(same),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the measurement (and write it as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=30)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    out = measure(args.n_per_class, args.steps, args.batch_size)
    print(json.dumps(out, indent=2))
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

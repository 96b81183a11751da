"""A newcomer's first ``featrob run``: cold (fresh FEATROB_HOME, training included) and warm.

Runs the given command (default: the plain default run) twice in fresh subprocesses on a
fresh ``FEATROB_HOME``: the first trains the model and fills the store, the second finds
both. Printed per run: wall time, peak resident memory (the child's ``ru_maxrss``), the time
before the first metric (start-up, data, model) and each metric's share, read from its
results.json.

Usage::

    python -m benchmarks.first_run                       # the default run
    python -m benchmarks.first_run --args "--plugin accuracy" --json first.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_json


def _one(args: list[str], home: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, "FEATROB_HOME": str(home)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "featrob", "run", *args, "--quiet", "--out", str(out)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    results = json.loads((out / "results.json").read_text())
    metrics = {name: round(m["duration_s"], 2) for name, m in results["metrics"].items()}
    return {
        "exit_code": proc.returncode,
        "wall_s": round(wall, 2),
        # ru_maxrss of children is the largest child so far (KiB on Linux)
        "peak_rss_mib": round(max(peak, before) / 1024, 1),
        "before_metrics_s": round(wall - sum(metrics.values()), 2),
        "metrics_s": metrics,
        "share": {k: round(v / wall, 3) for k, v in metrics.items()},
        "status": results.get("status"),
        "thread_choice": results["environment"].get("thread_choice"),
    }


def measure(run_args: str) -> dict[str, Any]:
    """Cold and warm runs of ``featrob run RUN_ARGS`` on a fresh home."""
    work = Path(tempfile.mkdtemp(prefix="featrob-first-run-"))
    args = shlex.split(run_args)
    cold = _one(args, work / "home", work / "cold")
    warm = _one(args, work / "home", work / "warm")
    return {"args": run_args, "cold": cold, "warm": warm}


def main(argv: list[str] | None = None) -> int:
    """Print the measurement (and write it as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--args", default="", help="featrob run arguments (default: none)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    out = measure(args.args)
    print(json.dumps(out, indent=2))
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""featrob's thread choice against fixed thread counts, alone and under competition.

Side by side in one invocation, with the model and the store warm (the run's work is then
the metrics' passes, what the thread count governs): the run with featrob's choice
(:mod:`featrob.threads`) and with every fixed count from 1 to the CPUs available, alone;
beside one CPU-bound process (a busy loop on one core); and two runs started together.
Printed: wall times, the choice each run recorded, and the targets' ratios (alone: choice
over the best fixed count; two at once: the slower over the run alone).

Usage::

    python -m benchmarks.threads                      # the default run (about 5 minutes)
    python -m benchmarks.threads --args "--plugin accuracy --n-per-class 20" --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_json
from featrob.threads import available_cpus

DEFAULT_ARGS = ""  # the default run: every installed metric, default settings


def _run(args: list[str], env: dict[str, str], cwd: Path, out: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "featrob", "run", *args, "--quiet", "--report", "json",
         "--out", out],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _timed(procs: list[subprocess.Popen], start: float) -> list[float]:
    times = []
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"featrob run failed: {err[-2000:]}")
        times.append(round(time.perf_counter() - start, 2))
    return times


def _choice(cwd: Path, out: str) -> Any:
    env = json.loads((cwd / out / "results.json").read_text())["environment"]
    return env.get("thread_choice")


def measure(run_args: str, repeats: int) -> dict[str, Any]:
    """The table of the module docstring."""
    work = Path(tempfile.mkdtemp(prefix="featrob-threads-"))
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    base["FEATROB_HOME"] = str(work / "home")
    args = shlex.split(run_args)
    _timed([_run(args, base, work, "warmup")], time.perf_counter())  # train, fill the store
    cpus = available_cpus()
    rows: dict[str, Any] = {}

    def best_of(label: str, env: dict[str, str]) -> None:
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            times += _timed([_run(args, env, work, f"{label}-{i}")], start)
        rows[label] = {"seconds": min(times), "choice": _choice(work, f"{label}-0")}

    best_of("auto", base)
    for n in range(1, cpus + 1):
        best_of(f"fixed {n}", {**base, "OMP_NUM_THREADS": str(n)})
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        best_of("auto beside a busy process", base)
    finally:
        busy.kill()
    start = time.perf_counter()
    pair = _timed([_run(args, base, work, "pair-0"), _run(args, base, work, "pair-1")], start)
    rows["two at once (auto)"] = {"seconds": pair, "choice": _choice(work, "pair-0")}
    fixed_best = min(rows[f"fixed {n}"]["seconds"] for n in range(1, cpus + 1))
    return {
        "args": run_args,
        "cpus": cpus,
        "rows": rows,
        "auto_over_best_fixed": round(rows["auto"]["seconds"] / fixed_best, 3),
        "two_at_once_over_alone": round(max(pair) / rows["auto"]["seconds"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the measurement (and write it as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--args", default=DEFAULT_ARGS, help="featrob run arguments")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row (fastest kept)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    out = measure(args.args, args.repeats)
    print(json.dumps(out, indent=2))
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Distributed runs: ``torchrun --nproc-per-node 2 -m featrob run`` on gloo (CPU) gives the
single-process results exactly, fails every rank together, and resumes from the store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featrob.distributed import World, map_batches, world

# The metrics that share work through map_batches: attacks (robust_accuracy), feature
# extraction (scale, compression), sensitivity cells and collision pair blocks.
PLUGINS = ["accuracy", "scale", "compression", "sensitivity", "collision"]
FAST = ["--n-per-class", "4", "--quiet", "--attack", "pgd(steps=5)", "--report", "json"]
#: Summary keys that measure time or depend on caches, not on the computation.
VOLATILE = ("seconds", "duration_s", "per_second", "from_cache")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(args: list[str], ranks: int, cwd: Path) -> subprocess.CompletedProcess:
    launcher = (
        [sys.executable, "-m", "featrob"]
        if ranks == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={ranks}",
            "-m",
            "featrob",
        ]
    )
    return subprocess.run(
        [*launcher, "run", *args], cwd=cwd, env=_env(), capture_output=True, text=True
    )


def _stable(value, key: str = ""):
    """``value`` without timings and cache flags (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: _stable(v, k) for k, v in value.items() if not any(t in k for t in VOLATILE)}
    if isinstance(value, list):
        return [_stable(v, key) for v in value]
    return value


def test_map_batches_in_one_process_is_a_plain_map():
    assert world() == World(0, 1) and world().main
    assert map_batches([1, 2, 3], lambda b: b * 10) == [10, 20, 30]
    assert list(World(1, 3).mine(8)) == [1, 4, 7]


def test_two_gloo_ranks_give_the_single_process_results(tmp_path: Path):
    plugins = [arg for name in PLUGINS for arg in ("--plugin", name)]
    one = _run([*FAST, *plugins, "--out", "one", "--store", "store1"], 1, tmp_path)
    assert one.returncode == 0, one.stdout + one.stderr
    two = _run([*FAST, *plugins, "--out", "two", "--store", "store2"], 2, tmp_path)
    assert two.returncode == 0, two.stdout + two.stderr
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert b["environment"]["world_size"] == 2 and a["environment"]["world_size"] == 1
    assert set(a["metrics"]) == set(b["metrics"]) and len(a["metrics"]) >= 6
    for name in a["metrics"]:
        assert a["metrics"][name]["error"] is None, a["metrics"][name]["error"]
        assert _stable(a["metrics"][name]) == _stable(b["metrics"][name]), name
    # one results folder and one summary, written by rank 0
    listing = {p.name for p in (tmp_path / "one").iterdir()}
    assert {p.name for p in (tmp_path / "two").iterdir()} == listing
    assert two.stdout.count("report:") == 1


SHARDS_PLUGIN = '''
"""A metric that shares 10 store-backed batches among the ranks; one rank can fail."""
import os
import signal

from featrob import Metric, MetricResult, hookimpl
from featrob.distributed import map_batches, world


class Shards(Metric):
    name = "shards"
    description = "test: store-backed batches shared among ranks"

    def compute(self, ctx):
        entry = ctx.store.entry({"kind": "test-shards"})
        todo = entry.missing(ctx.indices.numpy())
        batches = [todo[i : i + 4] for i in range(0, len(todo), 4)]
        mode = os.environ.get("SHARDS_FAIL")

        def work(batch):
            if world().rank == 1 and int(batch[0]) == int(batches[3][0]):
                if mode == "raise":
                    raise ValueError("boom")
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
            entry.write(batch, value=batch * 2.0)
            return len(batch)

        done = map_batches(batches, work)
        return MetricResult(summary={"computed": sum(done), "total": len(ctx.indices)})


@hookimpl
def featrob_register_metrics(register):
    register(Shards)
'''


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_failing_rank_fails_the_run_and_a_rerun_resumes(tmp_path: Path, mode: str):
    plugin = tmp_path / "shards.py"
    plugin.write_text(textwrap.dedent(SHARDS_PLUGIN))
    args = ["--quiet", "--n-per-class", "4", "--plugin", str(plugin), "--report", "json"]
    args += ["--store", "store", "--out", "out"]
    env_fail = {"SHARDS_FAIL": mode}
    failed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "featrob", "run", *args],
        cwd=tmp_path, env={**_env(), **env_fail}, capture_output=True, text=True,
    )  # fmt: skip
    assert failed.returncode != 0
    if mode == "raise":  # both ranks fail the metric with the failing rank's message
        assert "rank 1, batch 3: ValueError: boom" in failed.stdout + failed.stderr
        error = json.loads((tmp_path / "out" / "results.json").read_text())
        assert "rank 1, batch 3" in error["metrics"]["shards"]["error"]
    from featrob.store import FeatureStore

    kept = FeatureStore(tmp_path / "store").entry({"kind": "test-shards"}).indices()
    assert 0 < len(kept) < 40  # the finished batches stayed in the store
    again = _run(args, 2, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    summary = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]["shards"]
    assert summary["summary"] == {"computed": 40 - len(kept), "total": 40}


JOINED_SCRIPT = """
import os, sys
import torch
import torch.distributed as dist
from featrob.distributed import DistributedError, joined, launched

rank = int(os.environ["RANK"])
if sys.argv[1] == "ok":
    with joined(torch.device("cpu")) as here:
        assert dist.is_initialized() and here.size == 2
        assert here.gather(here.rank) == [0, 1]
    assert not dist.is_initialized()  # left the group: nothing torn down at exit
    assert launched() == here
    print(f"rank {rank} left")
else:  # rank 1 fails inside the block; rank 0 must not wait for it for half an hour
    try:
        with joined(torch.device("cpu")) as here:
            if rank == 1:
                raise KeyError("boom")
            here.barrier()
    except DistributedError:
        print("rank 0 told")
    except KeyError:
        assert not dist.is_initialized()
        print("rank 1 left")
"""


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_joined_leaves_the_process_group(tmp_path: Path, mode: str):
    script = tmp_path / "joined.py"
    script.write_text(JOINED_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(script), mode],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    expected = ["rank 0 left", "rank 1 left"] if mode == "ok" else ["rank 0 told", "rank 1 left"]
    # the two ranks share one stdout pipe: their lines may interleave, so find the phrases
    assert sorted(re.findall(r"rank \d (?:left|told)", done.stdout)) == expected

"""Nothing lost, nothing silently wrong: unwritable paths checked before work, run status in
results.json, a killed run, warnings as plain lines, two runs sharing one store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import featrob
from featrob.cli import create_app
from featrob.results import Results
from featrob.store import FeatureStore

FAST = {"n_per_class": 4, "quiet": True, "attacks": ["pgd(steps=3)"], "plugins": ["accuracy"]}


def _deny_writes_under(monkeypatch: pytest.MonkeyPatch, *roots: Path) -> None:
    """``os.access(path, W_OK)`` is False under ``roots`` (root ignores permissions)."""
    real = os.access
    blocked = [Path(r).resolve() for r in roots]

    def access(path, mode, *args, **kwargs):
        p = Path(path).resolve()
        if mode & os.W_OK and any(p == b or b in p.parents for b in blocked):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def _cli(args: list[str]):
    return CliRunner().invoke(create_app(), args)


def test_out_that_is_a_file_is_one_line_before_any_work(tmp_path: Path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("FEATROB_HOME", str(home))
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    result = _cli(["run", "--out", str(target), "--quiet"])
    assert result.exit_code == 2
    assert f"cannot write results to {target}: {target} is a file, not a folder" in result.output
    assert "Traceback" not in result.output
    assert not (home / "models").exists()  # nothing was trained


def test_out_in_a_read_only_folder_is_one_line_before_any_work(tmp_path: Path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    _deny_writes_under(monkeypatch, locked)
    result = _cli(["run", "--out", str(locked / "run"), "--quiet", "--plugin", "accuracy"])
    assert result.exit_code == 2
    assert "is not writable" in result.output and "give another --out" in result.output
    assert "Traceback" not in result.output


def test_read_only_empty_home_trains_warns_and_keeps_the_results(tmp_path: Path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FEATROB_HOME", str(home))
    _deny_writes_under(monkeypatch, home)
    results = featrob.run({**FAST, "out": str(tmp_path / "out"), "train": {"epochs": 1}})
    assert results.status == "complete" and not results.failed
    assert any("will be trained but not cached" in w for w in results.warnings)
    assert any("cannot create a feature store" in w for w in results.warnings)
    assert not any(home.iterdir())  # nothing written there
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["status"] == "complete" and saved["pending"] == []
    assert saved["metrics"]["robust_accuracy"]["error"] is None


def test_read_only_warm_store_is_read_and_new_work_stays_in_memory(tmp_path: Path, monkeypatch):
    store = tmp_path / "store"
    cfg = {**FAST, "store": str(store)}
    first = featrob.run({**cfg, "out": str(tmp_path / "a")})
    chunks = sorted(p.name for p in store.rglob("chunk-*.h5"))
    _deny_writes_under(monkeypatch, store)
    # the same analysis plus new work (another attack): reads what it can, computes the rest
    second = featrob.run({**cfg, "out": str(tmp_path / "b"), "attacks": ["fgsm"]})
    again = featrob.run({**cfg, "out": str(tmp_path / "c")})
    assert sorted(p.name for p in store.rglob("chunk-*.h5")) == chunks  # nothing written
    assert not second.failed and second.status == "complete"
    assert [w for w in second.warnings if "is read-only" in w] == [
        f"feature store {store} is read-only: reusing what it holds, keeping new work in "
        "memory (give a writable --store, or --store none)"
    ]
    steps = again.metrics["robust_accuracy"].tables["attacks"]
    assert steps[0]["from_store"] == steps[0]["attacked"] > 0  # read back
    assert again.metrics["robust_accuracy"].summary == first.metrics["robust_accuracy"].summary


def test_a_library_warning_is_one_plain_line(tmp_path: Path):
    """A class with fewer samples than --n-per-class warns (a UserWarning in the data code):
    the terminal and results.json get one plain line, no category, no source line."""
    out = tmp_path / "out"
    result = _cli(
        ["run", "--plugin", "accuracy", "--n-per-class", "500", "--attack", "fgsm",
         "--out", str(out), "--quiet", "--store", "none"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "warning:" in line]
    assert lines and all(line.lstrip().startswith("warning:") for line in lines)
    assert "UserWarning" not in result.output and "warnings.warn" not in result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["warnings"] and not any("UserWarning" in w for w in saved["warnings"])


SLOW_PLUGIN = """
import os, time
from featrob import Metric, MetricResult, hookimpl


class Sleepy(Metric):
    name = "sleepy"
    description = "test: sleeps, so a run can be killed while it runs"

    def compute(self, ctx):
        open(os.environ["SLEEPY_MARK"], "w").close()
        time.sleep(float(os.environ.get("SLEEPY_S", "0")))
        return MetricResult(summary={"slept": True})


class Quick(Metric):
    name = "zz_quick"
    description = "test: runs after sleepy"

    def compute(self, ctx):
        return MetricResult(summary={"n": len(ctx.labels)})


@hookimpl
def featrob_register_metrics(register):
    register(Sleepy)
    register(Quick)
"""


def _featrob(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "featrob", "run", *args],
        cwd=cwd,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_run_says_so_and_a_rerun_completes_it(tmp_path: Path, how: int):
    plugin = tmp_path / "sleepy.py"
    plugin.write_text(SLOW_PLUGIN)
    mark = tmp_path / "started"
    args = ["--plugin", "accuracy", "--plugin", str(plugin), "--n-per-class", "3",
            "--attack", "fgsm", "--out", "out", "--store", "store", "--quiet"]  # fmt: skip
    proc = _featrob(args, tmp_path, SLEEPY_MARK=str(mark), SLEEPY_S="60")
    deadline = time.time() + 300
    while not mark.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert mark.exists(), proc.communicate()[0]
    proc.send_signal(how)
    proc.wait(timeout=60)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    expected = "running" if how == signal.SIGKILL else "interrupted"
    assert saved["status"] == expected
    assert saved["pending"] == ["sleepy", "zz_quick"]
    assert set(saved["metrics"]) == {"clean_accuracy", "robust_accuracy"}
    loaded = Results.load(tmp_path / "out")  # a dead writer's "running" reads as interrupted
    assert loaded.status == "interrupted" and not loaded.final
    report = _cli(["report", str(tmp_path / "out"), "--report", "md"])
    assert "this run was interrupted; 2 metric(s) did not run: sleepy, zz_quick" in report.output
    assert "this run was interrupted" in (tmp_path / "out" / "summary.md").read_text()
    done = _featrob(args, tmp_path, SLEEPY_MARK=str(mark))
    assert done.wait(timeout=300) == 0, done.communicate()[0]
    final = json.loads((tmp_path / "out" / "results.json").read_text())
    assert final["status"] == "complete" and final["pending"] == []
    assert (
        final["metrics"]["robust_accuracy"]["summary"]
        == (saved["metrics"]["robust_accuracy"]["summary"])
    )
    steps = final["metrics"]["robust_accuracy"]["tables"]["attacks"]
    assert steps[0]["from_store"] == steps[0]["attacked"]  # the finished work was reused


def test_two_runs_on_one_store_share_the_work(tmp_path: Path):
    """Two processes start together on one store: every batch is computed once (no entry
    holds a row twice), both finish with identical results."""
    args = ["--plugin", "accuracy", "--n-per-class", "20", "--batch-size", "10", "--attack",
            "pgd(steps=40)", "--store", "store", "--quiet", "--report", "json"]  # fmt: skip
    first = _featrob([*args, "--out", "a"], tmp_path)
    second = _featrob([*args, "--out", "b"], tmp_path)
    assert first.wait(timeout=600) == 0, first.communicate()[0]
    assert second.wait(timeout=600) == 0, second.communicate()[0]
    a = json.loads((tmp_path / "a" / "results.json").read_text())["metrics"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["metrics"]
    assert a["robust_accuracy"]["summary"] == b["robust_accuracy"]["summary"]
    assert a["clean_accuracy"]["summary"] == b["clean_accuracy"]["summary"]
    store = FeatureStore(tmp_path / "store")
    for key in store.entry_keys():
        folder = store.entry(key).path
        rows = [_chunk_rows(chunk) for chunk in sorted(folder.glob("chunk-*.h5"))]
        everything = np.concatenate(rows)
        assert len(everything) == len(np.unique(everything)), key["kind"]  # computed once
    assert not list((tmp_path / "store").rglob("*.lease"))  # every claim released
    steps = [
        a["robust_accuracy"]["tables"]["attacks"][0],
        b["robust_accuracy"]["tables"]["attacks"][0],
    ]
    assert steps[0]["attacked"] == steps[1]["attacked"] > 150


def _chunk_rows(chunk: Path) -> np.ndarray:
    import h5py

    with h5py.File(chunk, "r") as f:
        return np.asarray(f["indices"][()])


def test_train_checks_its_output_before_training(tmp_path: Path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    _deny_writes_under(monkeypatch, locked)
    result = _cli(["train", "--out", str(locked / "m.pt"), "--quiet"])
    assert result.exit_code == 2
    assert f"cannot write the checkpoint {locked / 'm.pt'}" in result.output
    assert "Traceback" not in result.output

"""featrob's CPU thread choice (featrob.threads): the user's wins, torchrun shares the CPUs,
otherwise a timed pass decides; the choice is recorded and the caller's count restored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import featrob
from featrob import threads
from featrob.testing import tiny_dataset, tiny_model


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _probe():
    return tiny_model(), tiny_dataset().test.float_images(torch.arange(16))


def test_the_users_count_wins(monkeypatch):
    model, x = _probe()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    choice = threads.choose_threads(model, x, torch.device("cpu"))
    assert (choice.threads, choice.source) == (1, "user") and torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    choice = threads.choose_threads(model, x, torch.device("cpu"), requested=2)
    assert (choice.threads, choice.source) == (2, "user")


def test_torchrun_ranks_share_the_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    choice = threads.choose_threads(None, None, torch.device("cpu"))
    assert (choice.threads, choice.source) == (2, "torchrun")


def test_a_timed_pass_decides(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    model, x = _probe()
    # a second thread that saves nothing is not taken
    monkeypatch.setattr(threads, "time_pass", lambda f, x, repeats=3: 0.01)
    assert threads.choose_threads(model, x, torch.device("cpu")).threads == 1
    # one that halves the pass is
    fake = {1: 0.02, 2: 0.01}
    monkeypatch.setattr(threads, "time_pass", lambda f, x, repeats=3: fake[torch.get_num_threads()])
    choice = threads.choose_threads(model, x, torch.device("cpu"))
    assert (choice.threads, choice.source, choice.seconds) == (
        2,
        "measured",
        {"1": 0.02, "2": 0.01},
    )
    # big work takes every CPU without a second timing
    monkeypatch.setattr(threads, "time_pass", lambda f, x, repeats=3: 1.0)
    assert threads.choose_threads(model, x, torch.device("cpu")).threads == 2


def test_cgroup_quota_caps_the_cpus(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1.5)
    assert threads.available_cpus() == 1


def test_a_run_records_its_choice_and_restores_the_callers(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    results = featrob.run(
        {"n_per_class": 3, "quiet": True, "attacks": ["fgsm"], "plugins": ["accuracy"],
         "out": str(tmp_path / "o"), "store": "none", "threads": 1}
    )  # fmt: skip
    choice = results.environment["thread_choice"]
    assert choice["threads"] == 1 and choice["source"] == "user"
    assert results.environment["threads"] == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(featrob.ConfigError, match="threads must be a positive integer"):
        featrob.run({"threads": 0, "out": str(tmp_path / "p")})

"""``--max-memory``: sizes, the measured per-input cost, and the chunks the run picks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from featrob.errors import ConfigError
from featrob.memory import (
    BACKWARD_FACTOR,
    chunk_for,
    footprint,
    loop_footprint,
    peak_bytes,
    saved_footprint,
)
from featrob.specs import parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [("4GiB", 4 * 2**30), ("512MB", 512 * 2**20), ("2g", 2 * 2**30), ("1e9", 10**9), (1024, 1024)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "4 GB of RAM", "0", "-1GiB"])
def test_bad_sizes_are_one_line(text):
    with pytest.raises(ConfigError, match="max_memory") as info:
        parse_size(text)
    assert "\n" not in str(info.value)


def test_saved_footprint_of_an_mlp_is_its_saved_activations():
    # Linear saves its input, ReLU its output (Linear 2's input, the same storage); the
    # output is held too: 64 + 32 + 10 floats per input. Both weights are saved (fixed).
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fp = saved_footprint(mlp, torch.rand(5, 1, 8, 8))
    assert fp.per_input == (64 + 32 + 10) * 4 * BACKWARD_FACTOR
    assert fp.fixed == (32 * 64 + 10 * 32) * 4
    assert fp.bytes_for(10) == fp.fixed + 10 * fp.per_input


def test_measured_footprint_is_at_least_the_saved_one_and_grows_with_activations():
    x = torch.rand(2, 3, 32, 32)
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten())
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Flatten())

    # a measured peak can only err upwards (an unrelated allocation inside the window: seen
    # on a loaded machine, and on the first convolution of a process, which sets up its
    # kernels' workspaces): warm both models up, and take the smallest of three measurements
    def measured(model: nn.Module):
        model(x).sum().backward()
        return min((footprint(model, x, state_tensors=0) for _ in range(3)), key=_per_input)

    a, b = measured(small), measured(wide)
    assert a.per_input >= saved_footprint(small, x).per_input
    assert b.per_input >= saved_footprint(wide, x).per_input
    # 64 channels save 8 times the activations of 8: the measurement grows with them
    assert b.per_input > 2 * a.per_input


def _per_input(fp):
    return fp.per_input


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="peak memory is measured on Linux"
)
def test_peak_bytes_sees_an_allocation_and_loop_footprint_its_size():
    mib = 2**20
    assert peak_bytes(lambda: torch.ones(64 * mib // 4).sum(), torch.device("cpu")) >= 60 * mib
    fp = loop_footprint(lambda n: torch.ones(n, mib // 4).sum(), torch.device("cpu"))
    assert fp is not None and 0.9 * mib <= fp.per_input <= 1.2 * mib


def test_chunk_for():
    assert chunk_for(None, 100, default=7) == 7
    assert chunk_for(10_000, 100, fixed=1_000, default=7) == 90
    assert chunk_for(50, 100, default=7) == 1  # never below one item


def test_run_picks_its_batch_from_the_budget(tmp_path: Path):
    from featrob.runner import run

    common = {
        "model": "mlp",
        "n_per_class": 3,
        "attacks": ["pgd(steps=2)"],
        "plugins": ["accuracy"],
        "quiet": True,
        "store": "none",
        "reports": ["json"],
    }
    small = run({**common, "out": str(tmp_path / "a"), "max_memory": "100KiB"})
    big = run({**common, "out": str(tmp_path / "b")})
    memory = small.environment["memory"]
    assert memory["budget_bytes"] == 100 * 2**10
    assert memory["fixed_bytes"] + memory["batch_size"] * memory["per_input_bytes"] <= 100 * 2**10
    assert small.config["batch_size"] == memory["batch_size"] < 30  # 30 samples, several batches
    assert big.environment["memory"] is None and big.config["batch_size"] == 256
    a = small.metrics["robust_accuracy"].summary["accuracy"]
    assert a == big.metrics["robust_accuracy"].summary["accuracy"]  # per-sample seeds
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["config"]["max_memory"] == "100KiB"


def test_sensitivity_and_collision_chunks_follow_the_budget():
    from featrob_collision.metric import LayerCollisions

    from featrob.testing import make_context

    free = make_context()
    tight = make_context(max_memory="1MiB")
    roomy = make_context(max_memory="1GiB")
    f = free.model.backbone
    assert free.chunk_size(f, 123) == 123
    assert tight.chunk_size(f, 123) < roomy.chunk_size(f, 123)
    layer = free.model.layers[0]
    assert LayerCollisions.searches_per_batch(free, layer, 10) == 512
    few = LayerCollisions.searches_per_batch(tight, layer, 10)
    many = LayerCollisions.searches_per_batch(roomy, layer, 10)
    assert 1 <= few < many


def test_sensitivity_under_a_tight_budget_gives_the_same_values():
    import featrob
    from featrob.testing import tiny_dataset, tiny_model

    data = tiny_dataset()
    args = (tiny_model(), data.test.float_images(), data.test.labels)
    options = {"samples": 8, "features": 6, "steps": 5, "accuracy_steps": 0}
    free = featrob.analyze("sensitivity", *args, eps=0.1, options=options)
    tight = featrob.analyze("sensitivity", *args, eps=0.1, options=options, max_memory="256KiB")
    assert tight.summary["eps=0.1.mean"] == pytest.approx(free.summary["eps=0.1.mean"], rel=1e-5)

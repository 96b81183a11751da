"""The one store-backed loop (featrob.rows, ``ctx.cached_rows``) and model cache
(``ctx.cached_model``), and the mixed-precision key of evaluations of other models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featrob.attacks.protocol import evaluate
from featrob.extract import AutocastForward
from featrob.rows import MemoryStore, RowCache
from featrob.store import FeatureStore
from featrob.testing import make_context, tiny_model


class Squares:
    """``compute`` that counts the rows it computes and can fail on one call."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls = 0
        self.rows = 0
        self.fail_on = fail_on
        self.row_keys: np.ndarray | None = None

    def __call__(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("this batch dies")
        self.rows += len(positions)
        assert self.row_keys is not None
        keys = self.row_keys[positions]
        return {"square": keys.astype(np.float64) ** 2, "pair": np.stack([keys, -keys], 1)}


def _rows(cache: RowCache, keys: np.ndarray, compute: Squares, **kwargs):
    compute.row_keys = keys
    return cache.rows(cache.key("squares", {"version": 1}), keys, compute, **kwargs)


@pytest.mark.parametrize("on_disk", [True, False])
def test_rows_are_computed_once_in_key_order(tmp_path: Path, on_disk: bool):
    store = FeatureStore(tmp_path) if on_disk else MemoryStore()
    cache = RowCache(store, {"model": "m", "dataset": "d"})
    keys = np.array([7, 3, 11, 5, 2], dtype=np.int64)
    first = Squares()
    got = _rows(cache, keys, first, batch_size=2)
    np.testing.assert_array_equal(got["square"], keys**2)
    np.testing.assert_array_equal(got["pair"][:, 1], -keys)
    assert first.calls == 3 and got.computed.all() and got.from_store == 0
    # more rows: only the new ones are computed, the rest read back
    more = np.array([2, 13, 7, 17], dtype=np.int64)
    second = Squares()
    again = _rows(cache, more, second, batch_size=2)
    np.testing.assert_array_equal(again["square"], more**2)
    assert second.rows == 2
    np.testing.assert_array_equal(again.computed, [False, True, False, True])


def test_a_failing_batch_keeps_the_finished_ones(tmp_path: Path):
    cache = RowCache(FeatureStore(tmp_path), {"model": "m"})
    keys = np.arange(10, dtype=np.int64)
    with pytest.raises(RuntimeError, match="this batch dies"):
        _rows(cache, keys, Squares(fail_on=3), batch_size=3)
    resumed = Squares()
    got = _rows(RowCache(FeatureStore(tmp_path), {"model": "m"}), keys, resumed, batch_size=3)
    assert resumed.rows == 4  # batches 1 and 2 (6 rows) were in the store
    np.testing.assert_array_equal(got["square"], keys**2)


def test_caller_batches_are_computed_whole_and_accept_rejects_rows(tmp_path: Path):
    cache = RowCache(FeatureStore(tmp_path), {"model": "m"})
    keys = np.arange(6, dtype=np.int64)
    _rows(cache, keys[:4], Squares())
    cells = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    gridded = Squares()
    got = _rows(cache, keys, gridded, batches=cells)
    assert gridded.calls == 1 and gridded.rows == 3  # the first cell is complete: skipped
    np.testing.assert_array_equal(got.computed, [False] * 3 + [True] * 3)  # row 3 recomputed
    redo = Squares()
    got = _rows(cache, keys, redo, accept=lambda stored, pos: stored["square"] != 16)
    assert redo.rows == 1  # row key 4 rejected and recomputed
    assert got.from_store == 5


def test_keys_record_amp_only_for_computations_under_it():
    cache = RowCache(None, {"model": "m", "split": "test"}, amp="bf16")
    assert cache.key("layer", {"layer": "x"})["amp"] == "bf16"
    assert "amp" not in cache.key("pairs", {"v": 1}, precision=False)
    assert cache.key("pairs", {"split": "train"})["split"] == "train"  # params override
    assert cache.with_model("other").key("layer")["model"] == "other"


def test_context_cached_rows_without_store_computes_once_per_run():
    ctx = make_context(store="memory")
    keys = ctx.indices.numpy().astype(np.int64)
    compute = Squares()
    compute.row_keys = keys
    first = ctx.cached_rows("squares", {"version": 1}, keys, compute, batch_size=16)
    second = ctx.restricted(np.arange(5)).cached_rows(
        "squares", {"version": 1}, keys[:5], compute, batch_size=16
    )
    assert compute.rows == len(keys)  # the subset's rows came from the run's memory
    np.testing.assert_array_equal(second["square"], first["square"][:5])


def test_cached_model_trains_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FEATROB_HOME", str(tmp_path))
    ctx = make_context(store="memory")
    trained = []

    def train(module: torch.nn.Module) -> None:
        trained.append(1)
        with torch.no_grad():
            module.weight.fill_(0.5)

    first = torch.nn.Linear(3, 2)
    assert not ctx.cached_model("demo-head", {"version": 1}, first, lambda: train(first))
    second = torch.nn.Linear(3, 2)
    assert ctx.cached_model("demo-head", {"version": 1}, second, lambda: train(second))
    assert trained == [1]
    torch.testing.assert_close(second.weight, torch.full((2, 3), 0.5))
    assert list((tmp_path / "models").glob("demo-head-*.pt"))


def test_evaluating_another_model_under_amp_matches_its_key(tmp_path: Path):
    """Regression (issue 19): the MSA metric evaluated its models in float32 under a store
    key that says ``amp``. ``ctx.evaluate(model=...)`` runs the model under --amp, so the
    stored records are what an autocast evaluation computes, and the keys of float32 and
    bf16 records differ."""
    other = tiny_model(epochs=2)
    ctx = make_context(store=tmp_path, eps=0.3, amp="bf16", attacks=["fgsm"])
    fgsm = ctx.make_attack("fgsm")
    stored = ctx.evaluate([fgsm], model=other)
    reference = evaluate(
        AutocastForward(other, ctx.device, "bf16"),
        ctx.inputs(),
        ctx.labels,
        [fgsm],
        indices=ctx.indices,
        seed=ctx.config.seed,
    )
    torch.testing.assert_close(stored.margin, reference.margin)
    torch.testing.assert_close(stored.robust, reference.robust)
    fp32 = make_context(store=tmp_path, eps=0.3, attacks=["fgsm"])
    plain = fp32.evaluate([fgsm], model=other)
    assert plain.steps[0].from_store == 0  # another key: nothing shared with bf16 records
    keys = FeatureStore(tmp_path).entry_keys()
    records = [k for k in keys if k["kind"] == "attack-record"]
    assert {k["amp"] for k in records} == {"bf16", None}
    assert {k["model"] for k in records} == {other.fingerprint()}


def test_the_readme_cached_rows_example_is_a_working_metric(tmp_path: Path):
    """A metric written from the README's cached_rows example alone: it runs, its rows go to
    the store once, and a second run reads them back."""
    import re

    import featrob
    from featrob.testing import check_metric

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "ctx.cached_rows(" in b
    )
    source = "class ReadmeMetric(featrob.Metric):\n    name = 'readme_norms'\n\n"
    source += "\n".join("    " + line if line else "" for line in block.splitlines())
    namespace = {"featrob": featrob, "torch": torch, "np": np, "MetricResult": featrob.MetricResult}
    exec(compile(source, "README.md", "exec"), namespace)
    metric = namespace["ReadmeMetric"]
    first = check_metric(metric, make_context(store=tmp_path))
    assert first.summary["median_norm"] > 0
    keys = [k for k in FeatureStore(tmp_path).entry_keys() if k["kind"] == "my-metric.norms"]
    assert len(keys) == 1 and keys[0]["version"] == 1 and "model" in keys[0]
    again = check_metric(metric, make_context(store=tmp_path))
    assert again.summary == first.summary

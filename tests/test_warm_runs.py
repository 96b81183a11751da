"""A warm run (model and feature store filled) recomputes nothing the store holds."""

from __future__ import annotations

from pathlib import Path

import featrob
from featrob.attacks.fab import FAB
from featrob.models.base import FeatrobModel


def _config(tmp_path: Path, out: str, plugin: str) -> dict:
    return {
        "plugins": [plugin],
        "n_per_class": 3,
        "out": str(tmp_path / out),
        "store": str(tmp_path / "store"),
        "reports": ["json"],
        "quiet": True,
        "train": {"epochs": 1},
        "metrics": {
            "collision": {"per_class": 3, "eps_points": 4, "layers": ["logits"]},
            "msa": {"steps": 2, "square_queries": 5, "figure1_scales": [], "batch_sizes": [1]},
        },
    }


def test_collision_reads_its_fab_curve_back(tmp_path: Path, monkeypatch) -> None:
    cold = featrob.run(_config(tmp_path, "cold", "collision"))
    assert cold.metrics["collision"].error is None

    def refuse(*_args, **_kwargs):
        raise AssertionError("FAB ran on a warm store")

    monkeypatch.setattr(FAB, "minimize", refuse)
    warm = featrob.run(_config(tmp_path, "warm", "collision"))
    assert warm.metrics["collision"].error is None
    for key in ("fab.clean_error", "fab.median_norm"):
        assert warm.metrics["collision"].summary[key] == cold.metrics["collision"].summary[key]


def test_msa_batch_study_reads_back(tmp_path: Path, monkeypatch) -> None:
    from featrob_hpm.metric_msa import MixedSurrogateAttack

    cold = featrob.run(_config(tmp_path, "cold", "hpm"))
    assert cold.metrics["msa"].error is None
    inside, calls = [], []
    forward, study = FeatrobModel.forward, MixedSurrogateAttack._batch_study

    def counted(self, x):
        if inside:
            calls.append(len(x))
        return forward(self, x)

    def watched(self, *args, **kwargs):
        inside.append(True)
        try:
            return study(self, *args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(FeatrobModel, "forward", counted)
    monkeypatch.setattr(MixedSurrogateAttack, "_batch_study", watched)
    warm = featrob.run(_config(tmp_path, "warm", "hpm"))
    assert warm.metrics["msa"].error is None
    batch = {k: v for k, v in warm.metrics["msa"].summary.items() if k.startswith("batch.")}
    assert batch and batch == {k: cold.metrics["msa"].summary[k] for k in batch}
    assert not calls, f"the batch study ran {sum(calls)} inputs through the model again"

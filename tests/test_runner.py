"""``featrob.run`` through the Python API: lifecycle hooks, the run context, broken plugins."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import featrob
from featrob.errors import PluginLoadError
from featrob.metrics import Metric
from featrob.plugins import PluginHost
from featrob.results import MetricResult, Results

FAST = {"n_per_class": 4, "quiet": True, "attacks": ["pgd(steps=3)"]}


class LayerProbe(Metric):
    """Reads several layers clean and under the run's attack (what paper plugins do)."""

    name = "layer_probe"

    def compute(self, ctx):
        clean = ctx.features_many(["conv1", "features", "logits"])
        adv = ctx.features("features", ctx.config.attacks[0])
        x_adv = ctx.inputs(ctx.config.attacks[0])
        delta = (x_adv - ctx.inputs()).flatten(1).abs().amax(1)
        cos = torch.nn.functional.cosine_similarity(clean["features"].values, adv.values)
        return MetricResult(
            summary={
                "conv1_dims": clean["conv1"].values.dim(),
                "max_linf": float(delta.max()),
                "mean_cos": float(cos.mean()),
                "same_logits": bool(torch.equal(clean["logits"].values, clean["features"].logits)),
            }
        )


class Recorder:
    def __init__(self):
        self.events = []

    @featrob.hookimpl
    def featrob_register_metrics(self, register):
        register(LayerProbe)

    @featrob.hookimpl
    def featrob_run_start(self, context):
        self.events.append(("start", len(context.labels)))

    @featrob.hookimpl
    def featrob_metric_result(self, name, result):
        self.events.append(("metric", name, result.error is None))

    @featrob.hookimpl
    def featrob_run_end(self, results):
        self.events.append(("end", sorted(results.metrics)))


def test_python_api_run_with_lifecycle_hooks(tmp_path: Path):
    host = PluginHost()
    recorder = Recorder()
    host.add(recorder, "recorder")
    results = featrob.run(
        {**FAST, "plugins": ["recorder"], "out": str(tmp_path / "o"), "store": str(tmp_path / "s")},
        host=host,
    )
    assert isinstance(results, Results) and not results.failed
    summary = results.metrics["layer_probe"].summary
    assert summary["conv1_dims"] == 4 and summary["same_logits"]
    assert summary["max_linf"] <= 0.1 + 1e-6
    assert -1 <= summary["mean_cos"] < 1
    assert recorder.events == [
        ("start", 40),
        ("metric", "layer_probe", True),
        ("end", ["layer_probe"]),
    ]
    loaded = Results.load(tmp_path / "o")
    assert loaded.metrics["layer_probe"].summary == summary


def test_default_run_records_broken_plugins_but_runs_the_rest(tmp_path: Path):
    host = PluginHost()
    host.add_path(str(_broken_file(tmp_path)))
    # a default run (no plugin selected); the costly analysis plugins are left out with
    # --no-plugin, which keeps the default-run semantics this test is about
    heavy = ["collision", "compression", "hpm", "scale", "sensitivity"]
    config = {**FAST, "out": str(tmp_path / "o"), "store": "none", "no_plugins": heavy}
    results = featrob.run(config, host=host)
    assert results.failed
    assert any("broken_plugin" in e and "on purpose" in e for e in results.errors)
    assert results.metrics["clean_accuracy"].error is None
    with pytest.raises(PluginLoadError, match="broken_plugin"):
        featrob.run({**FAST, "plugins": ["broken_plugin"], "out": str(tmp_path / "o2")}, host=host)


def _broken_file(tmp_path: Path) -> Path:
    path = tmp_path / "broken_plugin.py"
    path.write_text("raise RuntimeError('broken on purpose')\n")
    return path


def test_metrics_share_the_store_between_runs(tmp_path: Path):
    cfg = {**FAST, "plugins": ["accuracy"], "store": str(tmp_path / "s")}
    first = featrob.run({**cfg, "out": str(tmp_path / "a")})
    entries = len(list((tmp_path / "s" / "entries").glob("*/*")))
    second = featrob.run({**cfg, "out": str(tmp_path / "b")})
    assert len(list((tmp_path / "s" / "entries").glob("*/*"))) == entries  # nothing new
    assert first.metrics["robust_accuracy"].summary == second.metrics["robust_accuracy"].summary
    # clean logits (one entry) and the attack's per-sample records (one entry)
    assert entries == 2
    (step,) = second.metrics["robust_accuracy"].tables["attacks"]
    assert step["from_store"] == step["attacked"] > 0


def test_channels_last_gives_the_default_results(tmp_path):
    """``channels_last`` changes the memory format of the convolutions, not the results
    (the documented tolerance: logits to 1e-5; accuracies equal here)."""
    import torch

    from featrob.prepare import prepare_model
    from featrob.runner import run
    from featrob.transfer import to_device

    common = {
        "n_per_class": 5,
        "attacks": ["pgd(steps=5)"],
        "plugins": ["accuracy"],
        "quiet": True,
        "store": "none",
        "reports": ["json"],
    }
    plain = run({**common, "out": str(tmp_path / "a")})
    fast = run({**common, "out": str(tmp_path / "b"), "channels_last": True})
    for name in ("clean_accuracy", "robust_accuracy"):
        assert plain.metrics[name].summary == fast.metrics[name].summary
    assert plain.environment["model_fingerprint"] == fast.environment["model_fingerprint"]

    from featrob.config import RunConfig
    from featrob.plugins import PluginHost
    from featrob.prepare import load_run_data
    from featrob.progress import Reporter

    host, cpu = PluginHost(), torch.device("cpu")
    cfg = RunConfig.from_dict({"channels_last": True, "quiet": True})
    data = load_run_data(cfg, host)
    model, _ = prepare_model(cfg, data, host, cpu, Reporter(quiet=True))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = to_device(data.test.float_images(torch.arange(20)), cpu)
    default = RunConfig.from_dict({"quiet": True})
    reference, _ = prepare_model(default, data, host, cpu, Reporter(quiet=True))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_the_run_level_progress_line(tmp_path: Path):
    from featrob.runner import run_progress_line

    results = Results(featrob="x", config={}, plugins={})
    first = run_progress_line(0, 4, "collision", results, started=time.perf_counter())
    assert first == "metric 1/4 collision · 0:00 elapsed"
    results.metrics["collision"] = MetricResult(duration_s=30.0)
    results.metrics["compression"] = MetricResult(duration_s=90.0)
    line = run_progress_line(2, 4, "msa", results, started=time.perf_counter() - 125)
    assert line == "metric 3/4 msa · 2:05 elapsed · about 2:00 left"  # 60 s mean x 2 left


def test_quiet_runs_print_no_progress(tmp_path: Path, capsys):
    featrob.run({**FAST, "plugins": ["accuracy"], "out": str(tmp_path / "o"), "store": "none"})
    assert "metric 1/2" not in capsys.readouterr().err
    featrob.run(
        {
            **FAST,
            "quiet": False,
            "plugins": ["accuracy"],
            "out": str(tmp_path / "p"),
            "store": "none",
        }
    )
    err = capsys.readouterr().err
    assert "metric 1/2 clean_accuracy" in err and "metric 2/2 robust_accuracy" in err

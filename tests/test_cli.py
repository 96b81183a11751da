"""The command line, in-process (CliRunner on a fresh app) and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

import featrob
from featrob.cli import create_app
from featrob.metrics import Metric
from featrob.plugins import PluginHost
from featrob.results import MetricResult, results_schema

runner = CliRunner()

# Small and quick: 5 samples per class of the digits test split, short PGD.
FAST = ["--n-per-class", "5", "--quiet", "--attack", "pgd(steps=5)"]


def invoke(args: list[str], host: PluginHost | None = None):
    app = create_app(lambda: host) if host is not None else create_app(lambda: PluginHost())
    return runner.invoke(app, args)


def test_help_and_version():
    result = invoke(["--help"])
    assert result.exit_code == 0 and "run" in result.stdout and "plugins" in result.stdout
    result = invoke(["--version"])
    assert result.stdout.strip() == f"featrob {featrob.__version__}"


def test_run_writes_results_layout(tmp_path: Path):
    out = tmp_path / "out"
    result = invoke(
        ["run", *FAST, "--eps", "8/255", "--store", str(tmp_path / "store"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert set(data) >= {"featrob", "config", "plugins", "metrics"}
    assert data["featrob"] == featrob.__version__
    # every installed metric's output (a default run runs them all) fits the shipped schema
    jsonschema.validate(data, results_schema())
    assert {"clean_accuracy", "sensitivity", "collision", "scale"} <= set(data["metrics"])
    # findings: ranked, the headline first, every named figure exists
    scores = [f["score"] for f in data["findings"]]
    assert scores == sorted(scores, reverse=True) and data["findings"][0]["score"] == 1.0
    for finding in data["findings"]:
        figures = data["metrics"][finding["metric"]]["figures"]
        assert finding["figure"] is None or finding["figure"] in figures, finding
    assert data["config"]["eps"] == pytest.approx(8 / 255)
    assert len(data["config"]["sample_indices"]) == 50
    assert data["plugins"]["accuracy"] == featrob.__version__
    for name in ("clean_accuracy", "robust_accuracy"):
        metric = data["metrics"][name]
        assert set(metric) >= {"summary", "tables", "error"} and metric["error"] is None
    clean = data["metrics"]["clean_accuracy"]["summary"]["accuracy"]
    robust = data["metrics"]["robust_accuracy"]["summary"]["accuracy"]
    assert clean > 0.9 and robust <= clean
    assert (out / "summary.md").read_text().startswith("# featrob run")
    report = (out / "report.html").read_text()  # the default reports include html
    assert all(f">{name}</h2>" in report for name in data["metrics"])
    assert report.count('<img alt="') >= 3
    assert (out / "config.toml").exists()
    # the saved config repeats the run exactly
    again = invoke(["run", "--config", str(out / "config.toml"), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    data2 = json.loads((tmp_path / "again" / "results.json").read_text())
    assert (
        data2["metrics"]["robust_accuracy"]["summary"]
        == data["metrics"]["robust_accuracy"]["summary"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eps", "-0.1"], "eps must be >= 0"),
        (["--eps", "nan"], "finite"),
        (["--model", "smal-cnn"], "did you mean 'small-cnn'"),
        (["--dataset", "cifar"], "did you mean"),
        (["--dataset", "npz:/nonexistent/file.npz"], "/nonexistent/file.npz"),
        (["--dataset", "mnist", "--data-root", "/nonexistent"], "--download"),
        (["--attack", "pgdd"], "did you mean 'pgd'"),
        (["--attack", "pgd(stepz=3)"], "did you mean 'steps'"),
        (["--norm", "l7"], "unknown norm"),
        (["--set", "modle=x"], "did you mean 'model'"),
        (["--plugin", "nosuchplugin"], "unknown plugin"),
        (["--weights", "/nonexistent/w.pt"], "/nonexistent/w.pt"),
        (
            ["--device", "cuda:0"]
            if not __import__("torch").cuda.is_available()
            else ["--device", "tpu"],
            "device",
        ),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path: Path, args, message):
    result = invoke(["run", *FAST, "--store", "none", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code != 0
    err = result.stderr
    assert message in err, err
    assert "Traceback" not in result.output and len(err.strip().splitlines()) == 1, err


def test_failing_metric_is_reported_and_others_finish(tmp_path: Path):
    class Exploding(Metric):
        name = "exploding"

        def compute(self, ctx):
            raise ValueError("kaboom [/gloo/pair.cc:545]")  # not rich markup

    class Fine(Metric):
        name = "fine"

        def compute(self, ctx):
            return MetricResult(summary={"n": len(ctx.labels), "tag": "[bold]x"})

    class Plugin:
        @featrob.hookimpl
        def featrob_register_metrics(self, register):
            register(Exploding)
            register(Fine)

    host = PluginHost()
    host.add(Plugin(), "mixed")
    out = tmp_path / "out"
    result = invoke(["run", *FAST, "--plugin", "mixed", "--store", "none", "--out", str(out)], host)
    assert result.exit_code == 1
    data = json.loads((out / "results.json").read_text())
    assert "ValueError: kaboom" in data["metrics"]["exploding"]["error"]
    assert "Traceback" in data["metrics"]["exploding"]["error"]
    assert data["metrics"]["fine"]["summary"] == {"n": 50, "tag": "[bold]x"}
    assert "failed" in result.stdout
    assert "[/gloo/pair.cc:545]" in result.stdout and "[bold]x" in result.stdout


def test_plugins_command_lists_sources(tmp_path: Path):
    result = invoke(["plugins", "--json"])
    assert result.exit_code == 0
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["attacks"]["source"] == "built-in"
    assert {"fgsm", "gabor", "pgd", "apgd-ce", "apgd-t"} <= set(
        plugins["attacks"]["registers"]["attacks"]
    )
    table = invoke(["plugins"])
    assert "built-in" in table.stdout and "training methods" in table.stdout


def test_train_command_writes_checkpoint_and_card(tmp_path: Path):
    ckpt = tmp_path / "m.pt"
    result = invoke(
        ["train", "--epochs", "3", "--out", str(ckpt), "--quiet", "--set", "train.n_per_class=40"]
    )
    assert result.exit_code == 0, result.output
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert card["method"] == "standard" and card["architecture"]["spec"] == "small-cnn"
    assert 0 <= card["pgd_accuracy"] <= card["clean_accuracy"] <= 1
    assert set(card["versions"]) >= {"torch", "python"}
    # the checkpoint loads into `run --weights` (one plugin: the default run is tested elsewhere)
    out = tmp_path / "out"
    weights = ["--weights", str(ckpt), "--plugin", "accuracy"]
    ran = invoke(["run", *FAST, *weights, "--store", "none", "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    data = json.loads((out / "results.json").read_text())
    assert (
        data["environment"]["model_card"]["fingerprint"] == data["environment"]["model_fingerprint"]
    )


def test_train_unknown_method_has_close_match(tmp_path: Path):
    result = invoke(["train", "--method", "tradez", "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2 and "did you mean 'trades'" in result.stderr


def test_subprocess_run(tmp_path: Path):
    # `python -m featrob` end to end; one plugin (every metric runs in the in-process tests)
    env = {**os.environ, "FEATROB_HOME": os.environ["FEATROB_HOME"]}
    cmd = [
        sys.executable,
        "-m",
        "featrob",
        "run",
        *FAST,
        "--plugin",
        "accuracy",
        "--store",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "featrob results" in proc.stdout and "robust_accuracy" in proc.stdout
    bad = subprocess.run(
        [*cmd[:4], "--eps", "-1"], capture_output=True, text=True, env=env, timeout=300
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr

"""The repository itself: CI runs the README's commands, examples run, the code is ruff-clean."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import featrob

ROOT = Path(__file__).resolve().parents[1]
INSTALL_AND_RUN = "pip install . && featrob run"
TEST = 'pip install ".[test]" && pytest'


def test_readme_names_the_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert INSTALL_AND_RUN in readme and TEST in readme
    assert TEST in ci


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff is not installed (it comes with the [test] extra)",
)
def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    proc = subprocess.run(
        [ruff, "check", "featrob", "plugins", "contrib", "tests", "examples", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_examples_run(tmp_path: Path):
    """examples/run.toml with examples/margin_plugin.py, as the README shows."""
    results = featrob.run(
        featrob.RunConfig.load(
            ROOT / "examples" / "run.toml",
            {
                "out": str(tmp_path / "out"),
                "store": "none",
                "quiet": True,
                "n_per_class": 5,
                "plugins": [str(ROOT / "examples" / "margin_plugin.py"), "accuracy"],
            },
            ["metrics.logit_margin.threshold=2", "train.epochs=5"],
        )
    )
    assert not results.failed, results.errors
    summary = results.metrics["logit_margin"].summary
    assert summary["threshold"] == 2 and 0 <= summary["share_below_threshold"] <= 1
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(data["metrics"]) == {"logit_margin", "clean_accuracy", "robust_accuracy"}


def test_example_plugin_passes_featrob_testing_checks():
    from featrob.plugins import PluginHost
    from featrob.testing import check_metric

    host = PluginHost(load_entry_points=False)
    host.add_path(str(ROOT / "examples" / "margin_plugin.py"))
    result = check_metric(host.metrics.get("logit_margin"))
    assert result.figures["margins"].kind == "hist"


def test_benchmark_suite_quick_mode_runs(tmp_path: Path):
    """`python -m benchmarks --quick` stays runnable and every benchmark's contenders agree
    (no timing assertions: timings are for notes)."""
    from benchmarks.__main__ import main

    result = main(["--quick", "--json", str(tmp_path / "bench.json")])
    assert json.loads((tmp_path / "bench.json").read_text())["quick"] is True
    bench = result["benchmarks"]
    assert set(bench) == {
        "attacks",
        "collision",
        "compression",
        "fab_projection",
        "sensitivity",
        "store",
    }
    for row in bench["attacks"]["results"]:
        assert row["featrob_s"] > 0 and row["raw_s"] > 0
        assert abs(row["featrob_robust_acc"] - row["reference_robust_acc"]) <= 0.05
    assert bench["compression"]["max_abs_difference_batched_vs_naive"] < 1e-4
    assert bench["collision"]["max_relative_distance_difference"] < 1e-3
    assert bench["collision"]["graph"]["max_abs_difference"] < 1e-4
    assert bench["sensitivity"]["max_relative_difference"] < 1e-4
    fab = bench["fab_projection"]
    assert fab["max_relative_difference"] < 1e-5 and fab["unreachable_rows_agree"]
    assert bench["store"]["identical"] and bench["store"]["cold_over_warm"] > 1
    assert all(r["ratio"] is not None for r in result["headlines"])


def test_standard_preset_benchmark_quick_mode_runs(tmp_path: Path):
    """`python -m benchmarks.attacks --preset standard --quick` stays runnable, and on both of
    its models early exit leaves every robust flag as the full budget sets it."""
    from benchmarks.attacks import main

    payload = main(["--preset", "standard", "--quick", "--json", str(tmp_path / "s.json")])
    assert set(payload["models"]) == {"normal", "pgd"}
    for kind, model in payload["models"].items():
        assert model["identical_robust_flags"], kind
        assert abs(model["robust_accuracy"] - model["reference_robust_accuracy"]) <= 0.1, kind


def test_readme_python_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every Python block of the README's "Python API" section runs as written."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # featrob-out/ lands here
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def _readme_commands(prefix: str) -> list[list[str]]:
    """Every command in the README's bash blocks that starts with ``prefix``, as argv
    (continuation lines joined, comments dropped)."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            synopsis = any(a.startswith("[") for a in argv)  # the usage lines
            if argv[: len(prefix.split())] == prefix.split() and not synopsis:
                commands.append(argv)
    return commands


def test_every_readme_run_command_is_a_valid_config(monkeypatch: pytest.MonkeyPatch):
    """Each `featrob run ...` line of the README passes `--check`: its plugins, metrics,
    options, attacks, reporters, model and data set names all exist (no compute)."""
    from typer.testing import CliRunner

    from featrob.cli import create_app
    from featrob.plugins import PluginHost
    from featrob.testing import plugin_host

    commands = _readme_commands("featrob run")
    launched = _readme_commands("torchrun")  # torchrun [launcher options] -m featrob run ...
    assert launched, "the README shows a distributed run"
    for argv in launched:
        at = argv.index("-m")
        assert argv[at + 1 : at + 3] == ["featrob", "run"], argv
        commands.append(argv[at + 1 :])
    assert len(commands) >= 10
    monkeypatch.chdir(ROOT)  # the examples' relative paths
    app = create_app(lambda: PluginHost())
    # the model zoos' contrib plugins, from their folders (tests/test_zoo_models.py installs
    # them with pip and runs them)
    zoos = {"rb:": ("featrob-robustbench", "featrob_robustbench", "robustbench"),
            "timm:": ("featrob-timm", "featrob_timm", "timm")}  # fmt: skip
    for argv in commands:
        if "example_metric" in argv or any("torchattacks:" in a for a in argv):
            continue  # contrib plugins, installed and run by their own tests
        if any(a.startswith("examples/margin_plugin.py") for a in argv):
            argv = [str(ROOT / a) if a.startswith("examples/") else a for a in argv]
        zoo = next(
            (z for prefix, z in zoos.items() if any(a.startswith(prefix) for a in argv)), None
        )
        if zoo is not None:
            import importlib

            monkeypatch.syspath_prepend(str(ROOT / "contrib" / zoo[0]))
            zoo_host = plugin_host(importlib.import_module(zoo[1]), zoo[2])
            result = CliRunner().invoke(create_app(lambda h=zoo_host: h), [*argv[1:], "--check"])
            assert result.exit_code == 0, f"{' '.join(argv)}\n{result.output}"
            continue
        result = CliRunner().invoke(app, [*argv[1:], "--check"])
        assert result.exit_code == 0, f"{' '.join(argv)}\n{result.output}"


def test_every_readme_train_command_is_a_valid_config(tmp_path: Path, monkeypatch):
    """Each `featrob train ...` line of the README passes `--check` (names, files)."""
    from typer.testing import CliRunner

    from featrob.cli import create_app
    from featrob.plugins import PluginHost

    commands = [c for c in _readme_commands("featrob train") if "SPEC" not in c]  # synopsis
    assert len(commands) >= 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fc.pt").write_bytes(b"")  # the README's --init example names a checkpoint
    app = create_app(lambda: PluginHost())
    for argv in commands:
        if "--out" not in argv:
            argv = [*argv, "--out", "model.pt"]
        result = CliRunner().invoke(app, [*argv[1:], "--check"])
        assert result.exit_code == 0, f"{' '.join(argv)}\n{result.output}"
        assert "config ok" in result.output
    bad = CliRunner().invoke(app, ["train", "--method", "tradez", "--out", "m.pt", "--check"])
    assert bad.exit_code != 0 and "did you mean 'trades'" in bad.output


def test_every_readme_python_module_line_has_a_working_help():
    """Each `python -m MODULE ...` line of the README names a module with a working --help
    (the benchmarks themselves run in test_benchmark_suite_quick_mode_runs)."""
    modules = {argv[2] for argv in _readme_commands("python -m")}
    assert {"benchmarks", "benchmarks.collision", "benchmarks.sensitivity"} <= modules
    for module in sorted(modules):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), module + proc.stderr

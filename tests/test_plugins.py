"""Plugin discovery, isolation of broken plugins, registries and duplicate names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import featrob
from featrob.errors import DuplicateNameError, PluginLoadError, UnknownNameError
from featrob.metrics import Metric
from featrob.plugins import PluginHost
from featrob.registry import Registry
from featrob.results import MetricResult

from .distributions import (
    BROKEN_PLUGIN,
    ECHO_PLUGIN,
    build_wheel,
    install_fake_distribution,
    pip_install,
)


class Constant(Metric):
    name = "constant"
    defaults = {"value": 1.0}

    def compute(self, ctx):
        return MetricResult(summary={"value": self.options["value"]})


class ConstantPlugin:
    @featrob.hookimpl
    def featrob_register_metrics(self, register):
        register(Constant)


# ---------------------------------------------------------------------- registry
def test_registry_lookup_aliases_and_close_matches():
    reg: Registry[object] = Registry("attack")
    reg.add(object(), "pgd", plugin="core", aliases=("madry",))
    assert "pgd" in reg and "madry" in reg
    assert reg.entry("madry").name == "pgd"
    with pytest.raises(UnknownNameError, match="did you mean 'pgd'"):
        reg.get("pdg")


def test_registry_duplicate_names_both_plugins():
    reg: Registry[object] = Registry("attack")
    reg.add(object(), "pgd", plugin="core")
    with pytest.raises(DuplicateNameError) as err:
        reg.add(object(), "pgd", plugin="other")
    assert "'core'" in str(err.value) and "'other'" in str(err.value)


def test_registry_needs_a_name():
    with pytest.raises(TypeError):
        Registry("metric").add(object(), plugin="x")


# ---------------------------------------------------------------------- in-memory plugins
def test_in_memory_plugin_registers(bare_host: PluginHost):
    bare_host.add(ConstantPlugin(), "const")
    assert bare_host.metrics.get("constant") is Constant
    assert bare_host.metrics.entry("constant").plugin == "const"
    bare_host.build_all()
    assert bare_host.plugins["const"].registers == {"metrics": ["constant"]}


def test_duplicate_metric_names_from_two_plugins(bare_host: PluginHost):
    bare_host.add(ConstantPlugin(), "first")
    bare_host.add(ConstantPlugin(), "second")
    # pluggy calls the later-registered plugin first: the message names it as the owner.
    with pytest.raises(DuplicateNameError, match=r"by plugin 'second' and by plugin 'first'"):
        bare_host.metrics  # noqa: B018


def test_hook_that_raises_marks_only_that_plugin_broken(bare_host: PluginHost):
    class Broken:
        @featrob.hookimpl
        def featrob_register_metrics(self, register):
            register(Constant, name="half")
            raise RuntimeError("boom")

    bare_host.add(ConstantPlugin(), "good")
    bare_host.add(Broken(), "bad")
    names = bare_host.metrics.names()
    assert names == ["constant"]  # the broken plugin's half registration is rolled back
    assert "RuntimeError: boom" in bare_host.plugins["bad"].error
    with pytest.raises(PluginLoadError, match="'bad'"):
        bare_host.require("bad")
    with pytest.raises(UnknownNameError, match="failed to load"):
        bare_host.metrics.get("nope")


def test_builtins_load_through_entry_points(host: PluginHost):
    host.build_all()
    builtin = {n: p for n, p in host.plugins.items() if p.source == "built-in"}
    assert {"models", "attacks", "datasets", "heads", "accuracy", "reporters", "training"} <= set(
        builtin
    )
    assert all(p.distribution == "featrob" and p.ok for p in builtin.values())
    assert {"pgd", "fgsm", "gabor"} <= set(host.attacks.names())
    assert {"fgsm", "gabor", "pgd", "apgd-ce", "apgd-dlr", "apgd-t"} <= set(
        host.plugins["attacks"].registers["attacks"]
    )


def test_plugin_from_file(tmp_path: Path, bare_host: PluginHost):
    path = tmp_path / "echo_file.py"
    path.write_text(ECHO_PLUGIN)
    info = bare_host.require(str(path))
    assert info.source == "file" and info.ok
    assert "echo" in bare_host.metrics


# ---------------------------------------------------------------------- entry points
def _install_echo_and_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution with two entry points: ``echo`` and ``broken``."""
    site = install_fake_distribution(
        tmp_path / "site",
        "featrob-broken",
        {"featrob_broken_mod": BROKEN_PLUGIN, "featrob_echo_mod": ECHO_PLUGIN},
        {"broken": "featrob_broken_mod", "echo": "featrob_echo_mod"},
    )
    monkeypatch.syspath_prepend(str(site))


def test_broken_entry_point_is_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _install_echo_and_broken(tmp_path, monkeypatch)
    host = PluginHost()
    assert host.plugins["echo"].ok and host.plugins["echo"].source == "entry point"
    assert host.plugins["echo"].distribution == "featrob-broken"
    broken = host.plugins["broken"]
    assert not broken.ok and "broken on purpose" in broken.error
    assert "Traceback" in broken.traceback
    assert "echo" in host.metrics and "pgd" in host.attacks
    with pytest.raises(PluginLoadError, match=r"'broken'.*broken on purpose"):
        host.require("broken")


def test_environment_allow_list_loads_only_named_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """$FEATROB_PLUGINS: only the listed entry points load (the core's built-ins always do),
    so a broken or unwanted plugin can be switched off without uninstalling it."""
    _install_echo_and_broken(tmp_path, monkeypatch)
    monkeypatch.setenv("FEATROB_PLUGINS", "echo, scale")
    host = PluginHost()
    assert {"echo", "scale", "attacks", "models"} <= set(host.plugins)
    assert not {"broken", "collision", "sensitivity"} & set(host.plugins)
    assert host.broken() == [] and "echo" in host.metrics and "pgd" in host.attacks


def test_no_plugin_excludes_its_metrics(bare_host: PluginHost):
    from featrob.config import RunConfig
    from featrob.runner import select_metrics

    bare_host.add(ConstantPlugin(), "constant-plugin")
    bare_host.add(EchoLike(), "echo-like")
    chosen, _ = select_metrics(RunConfig(no_plugins=["constant-plugin"]), bare_host)
    assert [e.name for e in chosen] == ["echo_like"]
    with pytest.raises(UnknownNameError, match="constant-plugin"):
        select_metrics(RunConfig(no_plugins=["constant-plugn"]), bare_host)
    with pytest.raises(featrob.errors.ConfigError, match="both selected and excluded"):
        select_metrics(RunConfig(plugins=["echo-like"], no_plugins=["echo-like"]), bare_host)


class EchoLikeMetric(Metric):
    name = "echo_like"

    def compute(self, ctx):
        return MetricResult()


class EchoLike:
    @featrob.hookimpl
    def featrob_register_metrics(self, register):
        register(EchoLikeMetric)


def _featrob(*args: str, env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    cmd = [sys.executable, "-m", "featrob", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_real_wheel_installed_with_pip_is_discovered(tmp_path: Path):
    wheel = build_wheel(
        tmp_path / "dist", "featrob-echo", {"featrob_echo": ECHO_PLUGIN}, {"echo": "featrob_echo"}
    )
    target = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": str(target)}
    listed = _featrob("plugins", "--json", env_extra=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["echo"]["source"] == "entry point"
    assert plugins["echo"]["distribution"] == "featrob-echo"
    assert plugins["echo"]["version"] == "0.1"
    assert plugins["echo"]["registers"] == {"metrics": ["echo"]}
    ran = _featrob(
        "run",
        "--plugin",
        "echo",
        "--n-per-class",
        "2",
        "--store",
        "none",
        "--quiet",
        "--set",
        "metrics.echo.message=hi",
        "--out",
        str(tmp_path / "out"),
        env_extra=env,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["metrics"]["echo"]["summary"] == {"n": 20, "message": "hi"}
    assert results["plugins"]["echo"] == "0.1"


def test_contrib_example_metric_installs_runs_and_passes_its_own_tests(tmp_path: Path):
    """contrib/featrob-example-metric, installed with pip like any third-party plugin: found
    through its entry point, run through `featrob run`, and its own test file passes."""
    source = Path(__file__).resolve().parents[1] / "contrib" / "featrob-example-metric"
    target = tmp_path / "site"
    pip = pip_install(source, target)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": str(target)}
    listed = _featrob("plugins", "--json", env_extra=env, cwd=tmp_path)
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["example_metric"]["distribution"] == "featrob-example-metric"
    assert plugins["example_metric"]["registers"] == {"metrics": ["noise_flips"]}
    out = tmp_path / "out"
    ran = _featrob(
        "run", "--plugin", "example_metric", "--n-per-class", "3", "--attack", "pgd(steps=5)",
        "--store", "none", "--quiet", "--out", str(out), env_extra=env, cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((out / "results.json").read_text())["metrics"]["noise_flips"]["summary"]
    assert 0 <= summary["noise_flip_rate"] <= summary["attack_flip_rate"] <= 1
    own = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, **env},
    )  # fmt: skip
    assert own.returncode == 0, own.stdout + own.stderr

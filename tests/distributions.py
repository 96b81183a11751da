"""Build tiny plugin distributions for tests: an installed-style folder or a real wheel."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path


def _metadata(name: str, version: str) -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"


def _entry_points(entry_points: dict[str, str]) -> str:
    lines = ["[featrob]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    return "\n".join(lines) + "\n"


def install_fake_distribution(
    site: Path,
    name: str,
    modules: dict[str, str],
    entry_points: dict[str, str],
    version: str = "0.1",
) -> Path:
    """Lay out modules and a ``*.dist-info`` in ``site`` as pip would (no pip involved)."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(_metadata(name, version))
    (info / "entry_points.txt").write_text(_entry_points(entry_points))
    return site


def pip_install(source: Path, target: Path) -> subprocess.CompletedProcess:
    """``pip install`` a local distribution into the folder ``target`` offline (no
    dependencies, no build isolation: hatchling comes from the test environment)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def build_wheel(
    out_dir: Path,
    name: str,
    modules: dict[str, str],
    entry_points: dict[str, str],
    version: str = "0.1",
) -> Path:
    """Write a real (pure-Python) wheel that ``pip install`` accepts offline."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {f"{m}.py": src.encode() for m, src in modules.items()}
    files[f"{info}/METADATA"] = _metadata(name, version).encode()
    files[f"{info}/entry_points.txt"] = _entry_points(entry_points).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: featrob-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record_lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record_lines.append(f"{path},sha256={digest},{len(data)}")
    record_lines.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


ECHO_PLUGIN = '''
"""featrob-echo: the smallest metric plugin (reports the number of analysed samples)."""
import featrob
from featrob.metrics import Metric
from featrob.results import MetricResult


class Echo(Metric):
    name = "echo"
    description = "echoes the number of samples"
    defaults = {"message": "hello"}

    def compute(self, ctx):
        return MetricResult(summary={"n": len(ctx.labels), "message": self.options["message"]})


@featrob.hookimpl
def featrob_register_metrics(register):
    register(Echo)
'''

BROKEN_PLUGIN = """
raise ImportError("this plugin is broken on purpose")
"""

"""The public plugin API: plugins and contrib use only ``featrob`` (and ``featrob.testing``),
every public name resolves and is documented, and docs/api.md is current."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import featrob

ROOT = Path(__file__).resolve().parents[1]
#: Modules a plugin may import: the public namespace and the test helpers.
PUBLIC = {"featrob", "featrob.testing"}


def _featrob_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a featrob module in ``path`` (at any depth,
    TYPE_CHECKING blocks and function bodies included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, m) for m in modules if m == "featrob" or m.startswith("featrob.")]
    return found


def test_plugins_and_contrib_import_only_the_public_api():
    files = [
        p
        for folder in ("plugins", "contrib", "examples")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if "build" not in p.parts
    ]
    assert len(files) > 40
    offending = [
        f"{path.relative_to(ROOT)}:{line}: import of {module}"
        for path in files
        for line, module in _featrob_imports(path)
        if module not in PUBLIC
    ]
    assert not offending, "use `from featrob import ...`:\n" + "\n".join(offending)


def test_the_rule_catches_an_internal_import(tmp_path: Path):
    plugin = tmp_path / "p.py"
    plugin.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from featrob.context import RunContext\n"
        "def f():\n    import featrob.store\n    from featrob import Metric\n"
    )
    assert [m for _, m in _featrob_imports(plugin)] == [
        "featrob.context",
        "featrob.store",
        "featrob",
    ]


def test_every_public_name_resolves_and_has_a_docstring():
    for name in featrob.__all__:
        obj = getattr(featrob, name)
        if name not in ("__version__", "hookimpl"):
            assert obj.__doc__, f"featrob.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        featrob.nope  # noqa: B018


def test_importing_featrob_stays_cheap():
    code = "import sys, featrob; featrob.hookimpl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_api_reference_is_built_without_warnings_and_current():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    assert spec is not None and spec.loader is not None
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    text, problems = gen_api.build()
    assert not problems, "undocumented public API: " + "; ".join(problems)
    assert (ROOT / "docs" / "api.md").read_text() == text, "run python docs/gen_api.py"

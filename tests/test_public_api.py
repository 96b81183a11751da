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


def _import_graph() -> dict[str, set[str]]:
    """featrob module -> featrob modules it imports at run time (function bodies included,
    TYPE_CHECKING blocks not; ``from featrob import X`` resolves X's defining module)."""
    modules = {}
    for path in (ROOT / "featrob").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    lazy = featrob._LAZY
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        guarded = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "featrob":
                    targets = [lazy[a.name] for a in node.names if a.name in lazy]
                else:
                    targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                for i in range(2, len(parts) + 1):  # importing a.b.c imports a.b first
                    dep = ".".join(parts[:i])
                    if dep in modules and dep != name and not name.startswith(dep + "."):
                        graph[name].add(dep)
    return graph


def test_featrob_has_no_import_cycle():
    graph = _import_graph()
    assert len(graph) > 60 and graph["featrob.context"]
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_readme_lists_every_public_name():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The public API") : readme.index("### Write a plugin")]
    import re

    listed = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", section.split("| for | names |")[1]))
    assert listed == set(featrob.__all__) - {"__version__"}

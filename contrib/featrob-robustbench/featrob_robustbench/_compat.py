"""Make RobustBench 1.1 from PyPI importable as published.

``robustbench`` 1.1.1 imports two modules its wheel does not bring:

* ``autoattack``: AutoAttack is published on PyPI as ``pyautoattack`` (a dependency of
  robustbench), whose package is named ``pyautoattack``; robustbench imports it under its
  GitHub name ``autoattack`` (``autoattack`` and ``autoattack.state``);
* ``pkg_resources``: gone from setuptools 81 on; robustbench only calls
  ``pkg_resources.resource_filename(package, path)`` (for its ImageNet index files).

:func:`bridge` aliases the first and supplies the one function of the second, each only
when the real module is missing, before robustbench is imported. Nothing else changes.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path


def bridge() -> None:
    """Install the two aliases robustbench needs, where the real modules are missing
    (idempotent: a second call finds them in ``sys.modules``)."""
    if not _available("autoattack") and _available("pyautoattack"):
        sys.modules.setdefault("autoattack", importlib.import_module("pyautoattack"))
        sys.modules.setdefault("autoattack.state", importlib.import_module("pyautoattack.state"))
    if not _available("pkg_resources"):
        shim = types.ModuleType("pkg_resources")
        shim.__spec__ = importlib.machinery.ModuleSpec("pkg_resources", None)
        shim.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules.setdefault("pkg_resources", shim)


def _available(name: str) -> bool:
    """True when ``import name`` would find a module (already imported or on the path)."""
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _resource_filename(package: str, resource: str) -> str:
    """``pkg_resources.resource_filename`` for a package installed as plain files."""
    module = importlib.import_module(package)
    base = Path(module.__file__).parent if module.__file__ else Path.cwd()
    return str(base / resource)

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
import importlib.util
import sys
import types
from pathlib import Path


def bridge() -> None:
    """Install the two aliases robustbench needs, where the real modules are missing."""
    if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack"):
        package = importlib.import_module("pyautoattack")
        sys.modules.setdefault("autoattack", package)
        for sub in ("autoattack", "state", "autopgd_base", "fab_pt", "square", "other_utils"):
            try:
                module = importlib.import_module(f"pyautoattack.{sub}")
            except ImportError:
                continue
            sys.modules.setdefault(f"autoattack.{sub}", module)
    if importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules.setdefault("pkg_resources", shim)


def _resource_filename(package: str, resource: str) -> str:
    """``pkg_resources.resource_filename`` for a package installed as plain files."""
    module = importlib.import_module(package)
    base = Path(module.__file__).parent if module.__file__ else Path.cwd()
    return str(base / resource)

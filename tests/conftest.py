"""Shared fixtures: every test runs with its own FEATROB_HOME (no user cache is touched)."""

from __future__ import annotations

from pathlib import Path

import pytest

from featrob.plugins import PluginHost

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def featrob_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A session-wide FEATROB_HOME (trained default models are cached across tests)."""
    home = tmp_path_factory.getbasetemp() / "featrob-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("FEATROB_HOME", str(home))
    return home


@pytest.fixture
def host() -> PluginHost:
    """A fresh plugin host with every installed plugin (entry points)."""
    return PluginHost()


@pytest.fixture
def bare_host() -> PluginHost:
    """A fresh plugin host without entry-point plugins (add in-memory ones)."""
    return PluginHost(load_entry_points=False)

"""Built-in reporters: ``json`` (results.json + arrays.npz) and ``md`` (summary.md)."""

from __future__ import annotations

from featrob import hookimpl


@hookimpl
def featrob_register_reporters(register):
    """Register the ``json`` and ``md`` reporters."""
    from featrob.builtins.report_formats import JsonReporter, MarkdownReporter

    register(JsonReporter)
    register(MarkdownReporter)

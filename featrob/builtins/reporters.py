"""Built-in reporters: ``json`` (results.json + arrays.npz), ``md`` (summary.md), ``html``
(report.html), ``csv`` (one file per table) and ``hdf5`` (results.h5)."""

from __future__ import annotations

from featrob import hookimpl


@hookimpl
def featrob_register_reporters(register):
    """Register the ``json``, ``md``, ``html``, ``csv`` and ``hdf5`` reporters."""
    from featrob.builtins.report_data import CsvReporter, Hdf5Reporter
    from featrob.builtins.report_formats import JsonReporter, MarkdownReporter
    from featrob.builtins.report_html import HtmlReporter

    register(JsonReporter)
    register(MarkdownReporter)
    register(HtmlReporter)
    register(CsvReporter)
    register(Hdf5Reporter)

"""The ``html`` reporter: one self-contained file people would rather look at.

``report.html`` opens with the findings of every metric, ranked (each linked to its metric's
section and figure), then holds a section per metric (status, warnings, summary, tables,
figures as embedded PNGs), the resolved config, the versions of featrob, its plugins and the
environment, and the traceback of every failed metric. Nothing is fetched from the network
(inline CSS, ``data:`` images, no scripts), and every string that comes from a model, data
set, config or plugin is HTML-escaped: a class named ``<script>`` renders as text.
"""

from __future__ import annotations

import base64
import json
from html import escape
from typing import Any, ClassVar

from featrob.builtins.figures import render_png
from featrob.reporters import SingleFileReporter, table_columns
from featrob.results import Figure, MetricResult, Results

#: Rows shown per table (the rest are in results.json and the csv report).
MAX_ROWS = 200
#: Tables longer than this, and summaries with more keys, are folded (``<details>``).
FOLD_ROWS = 12
#: Summary keys shown unfolded: the metric's headline numbers.
HEADLINE_KEYS = 8
#: Findings shown unfolded at the top (the rest are folded under them).
TOP_FINDINGS = 8

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warning { background: #fff6d6; border-left: 4px solid #e0b000; padding: .4em .8em; }
.failed { background: #fde8e8; border-left: 4px solid #c00; padding: .4em .8em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .8em; }
figure { display: inline-block; margin: .5em; } figcaption { font-size: .8em; color: #555; }
.ok { color: #080; } .err { color: #c00; }
nav.toc { position: sticky; top: 0; z-index: 1; background: #fff; padding: .4em 0;
  border-bottom: 1px solid #ddd; overflow-x: auto; white-space: nowrap; }
nav.toc a { margin-right: 1em; }
.scroll { max-width: 100%; max-height: 32em; overflow: auto; margin: .5em 0 1em; }
.scroll table { margin: 0; }
img { max-width: 100%; height: auto; }
details > summary { cursor: pointer; color: #444; margin: .3em 0; }
a.top { font-size: .8em; }
[id] { scroll-margin-top: 3em; }
ol.findings li { margin: .3em 0; } ol.findings .where { font-size: .8em; color: #555; }
"""


class HtmlReporter(SingleFileReporter):
    """``report.html``: summaries, tables and figures of every metric in one file."""

    name: ClassVar[str] = "html"
    description: ClassVar[str] = "report.html (self-contained: tables, embedded figures)"
    filename: ClassVar[str] = "report.html"

    def render(self, results: Results) -> str:
        """The HTML text (:func:`render_html`)."""
        return render_html(results)


def render_html(results: Results) -> str:
    """The HTML text of a run's report."""
    cfg = results.config
    threat = f"{cfg.get('norm')} eps={cfg.get('eps')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>featrob report: {escape(str(cfg.get('model')))}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{CSS}</style></head><body>",
        '<h1 id="top">featrob report</h1>',
        "<p>model <code>"
        + escape(str(cfg.get("model")))
        + "</code>, data <code>"
        + escape(str(cfg.get("dataset")))
        + f"</code> (split {escape(str(cfg.get('split')))}), threat model "
        + escape(threat)
        + "</p>",
        f"<p>{escape(results.normalization_line)}</p>" if results.normalization_line else "",
        '<nav class="toc">'
        + ('<a href="#findings">findings</a>' if results.findings else "")
        + "".join(
            f'<a href="#metric-{i}">{escape(name)}</a>' for i, name in enumerate(results.metrics)
        )
        + '<a href="#run">run</a></nav>',
    ]
    if results.status_line:
        parts.append(f'<p class="failed">{escape(results.status_line)}</p>')
    for line in results.warnings:
        parts.append(f'<p class="warning">warning: {escape(line)}</p>')
    for err in results.errors:
        parts.append(f'<p class="failed">error: {escape(err)}</p>')
    parts.append(_findings_section(results))
    for i, (name, metric) in enumerate(results.metrics.items()):
        parts.append(_metric_section(i, name, metric))
    parts += [
        '<h2 id="run">Run</h2>',
        _key_values({"featrob": results.featrob, **results.plugins}, "versions"),
        "<h3>Environment</h3>",
        f"<pre>{escape(json.dumps(results.to_json()['environment'], indent=1))}</pre>",
        "<h3>Resolved config</h3>",
        f"<pre>{escape(json.dumps(results.to_json()['config'], indent=1))}</pre>",
        '<p><a class="top" href="#top">back to the top</a></p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _metric_section(i: int, name: str, metric: MetricResult) -> str:
    status = '<span class="err">failed</span>' if metric.error else '<span class="ok">ok</span>'
    out = [
        f'<h2 id="metric-{i}">{escape(name)}</h2>',
        f"<p>{status}, {metric.duration_s:.1f} s</p>",
    ]
    if metric.error:
        out.append(f'<div class="failed"><pre>{escape(metric.error)}</pre></div>')
        return "\n".join(out)
    for warning in metric.warnings:
        out.append(f'<p class="warning">{escape(warning)}</p>')
    if metric.summary:  # the headline numbers, the rest folded
        keys = list(metric.summary)
        out.append(_key_values({k: metric.summary[k] for k in keys[:HEADLINE_KEYS]}, "summary"))
        if len(keys) > HEADLINE_KEYS:
            rest = {k: metric.summary[k] for k in keys[HEADLINE_KEYS:]}
            out.append(_folded(f"{len(rest)} more summary values", _key_values(rest, "summary")))
    for j, (fig_name, fig) in enumerate(metric.figures.items()):
        out.append(_figure(fig_name, fig, f"metric-{i}-figure-{j}"))
    for table, rows in metric.tables.items():
        out.append(f"<h3>{escape(table)}</h3>")
        body = _table(rows)
        out.append(_folded(f"{len(rows)} rows", body) if len(rows) > FOLD_ROWS else body)
    out.append('<p><a class="top" href="#top">back to the top</a></p>')
    return "\n".join(out)


def _findings_section(results: Results) -> str:
    """The ranked findings, each linked to its metric's section and, when it names one of
    the metric's figures, to that figure ("" when no metric has findings)."""
    found = results.findings
    if not found:
        return ""
    index = {name: i for i, name in enumerate(results.metrics)}
    items = []
    for name, finding in found:
        i = index[name]
        links = [f'<a href="#metric-{i}">{escape(name)}</a>']
        figures = list(results.metrics[name].figures)
        if finding.figure in figures:
            j = figures.index(finding.figure)
            links.append(f'<a href="#metric-{i}-figure-{j}">figure</a>')
        items.append(
            f'<li>{escape(finding.text)} <span class="where">({" · ".join(links)})</span></li>'
        )
    top = f'<ol class="findings">{"".join(items[:TOP_FINDINGS])}</ol>'
    if len(items) > TOP_FINDINGS:
        rest = (
            f'<ol class="findings" start="{TOP_FINDINGS + 1}">{"".join(items[TOP_FINDINGS:])}</ol>'
        )
        top += _folded(f"{len(items) - TOP_FINDINGS} more findings", rest)
    return f'<section id="findings"><h2>Findings</h2>{top}</section>'


def _folded(label: str, html: str) -> str:
    """``html`` folded under a one-line ``<summary>``."""
    return f"<details><summary>{escape(label)}</summary>{html}</details>"


def _key_values(values: dict[str, Any], caption: str) -> str:
    rows = "".join(f"<tr><th>{escape(str(k))}</th>{_cell(v)}</tr>" for k, v in values.items())
    return f'<div class="scroll"><table aria-label="{escape(caption)}">{rows}</table></div>'


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    cols = table_columns(rows)
    head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(_cell(row.get(c)) for c in cols) + "</tr>" for row in rows[:MAX_ROWS]
    )
    more = (
        f"<p>({len(rows) - MAX_ROWS} more rows in results.json)</p>" if len(rows) > MAX_ROWS else ""
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>{more}'


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{'–' if value is None else str(value).lower()}</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    if isinstance(value, (dict, list, tuple)):
        return f"<td>{escape(json.dumps(value, default=str))}</td>"
    return f"<td>{escape(str(value))}</td>"


def _figure(name: str, fig: Figure, anchor: str) -> str:
    """The figure as an embedded PNG, or a line saying why it could not be drawn (either
    with the id ``anchor``, which findings link to)."""

    caption = escape(fig.title or name)
    try:
        png = base64.b64encode(render_png(fig)).decode("ascii")
    except Exception as exc:  # one bad figure must not cost the report
        why = escape(f"{type(exc).__name__}: {exc}")
        return (
            f'<p class="warning" id="{anchor}">figure {escape(name)} could not be drawn: {why}</p>'
        )
    return (
        f'<figure id="{anchor}"><img alt="{caption}" src="data:image/png;base64,{png}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )

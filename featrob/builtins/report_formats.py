"""results.json / arrays.npz and a Markdown summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from featrob.reporters import Reporter, SingleFileReporter, table_columns
from featrob.results import Results

MAX_MD_ROWS = 50


class JsonReporter(Reporter):
    """``results.json`` (the machine-readable record of a run) and ``arrays.npz``."""

    name: ClassVar[str] = "json"
    description: ClassVar[str] = "results.json (+ arrays.npz with per-sample arrays)"

    def write(self, results: Results, out_dir: Path) -> list[Path]:
        """Write results.json and, when any metric returned arrays, arrays.npz
        (:meth:`Results.save`; a run writes them itself, this reporter serves ``featrob
        report --report json``)."""
        return results.save(out_dir)


class MarkdownReporter(SingleFileReporter):
    """``summary.md``: the ranked findings, then each metric's summary and tables, errors
    and warnings."""

    name: ClassVar[str] = "md"
    description: ClassVar[str] = "summary.md (Markdown tables, for notebooks and PRs)"
    filename: ClassVar[str] = "summary.md"

    def render(self, results: Results) -> str:
        """The Markdown text (:func:`render_markdown`)."""
        return render_markdown(results)


def render_markdown(results: Results) -> str:
    """The Markdown text of a run."""
    cfg = results.config
    lines = [
        "# featrob run",
        "",
        f"- model: `{_md(cfg.get('model'))}`, data: `{_md(cfg.get('dataset'))}` "
        f"(split {cfg.get('split')}), threat model: {cfg.get('norm')} eps={cfg.get('eps')}",
        *([f"- {_md(results.normalization_line)}"] if results.normalization_line else []),
        f"- featrob {results.featrob}; plugins: "
        + ", ".join(f"{_md(k)} {_md(v)}".strip() for k, v in sorted(results.plugins.items())),
        "",
    ]
    if results.status_line:
        lines.append(f"> **{_md(results.status_line)}**")
    for line in results.warnings:
        lines.append(f"> **warning:** {_md(line)}")
    for err in results.errors:
        lines.append(f"> **error:** {_md(err)}")
    if results.findings:
        lines += ["", "## Findings", ""]
        lines += [
            f"{k}. {_md(f.text)} _({_md(name)})_" for k, (name, f) in enumerate(results.findings, 1)
        ]
    for name, metric in results.metrics.items():
        lines += ["", f"## {_md(name)}", ""]
        if metric.error:
            lines += ["**failed:**", "", "```", metric.error.rstrip(), "```"]
            continue
        for warning in metric.warnings:
            lines.append(f"> **warning:** {_md(warning)}")
        if metric.summary:
            lines += ["| key | value |", "| --- | --- |"]
            lines += [f"| {_md(k)} | {_fmt(v)} |" for k, v in metric.summary.items()]
        for table, rows in metric.tables.items():
            lines += ["", f"### {_md(table)}", ""]
            lines += _table(rows)
        lines.append(f"\n_{metric.duration_s:.1f} s_")
    return "\n".join(lines) + "\n"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(empty)"]
    cols = table_columns(rows)
    out = ["| " + " | ".join(_md(c) for c in cols) + " |", "|" + " --- |" * len(cols)]
    for row in rows[:MAX_MD_ROWS]:
        out.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    if len(rows) > MAX_MD_ROWS:
        out.append(f"\n({len(rows) - MAX_MD_ROWS} more rows in results.json)")
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "–"
    if isinstance(value, (dict, list)):
        return _md(json.dumps(value, default=str))
    return _md(value)


def _md(value: Any) -> str:
    """Escape text for a Markdown table cell (pipes, newlines, HTML brackets)."""
    text = str(value) if value is not None else ""
    return (
        text.replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\n", " ")
    )

"""What a metric returns and what a run writes.

A :class:`MetricResult` is renderer-agnostic: a flat ``summary`` of numbers, named
``tables`` (lists of row dicts), ``arrays`` (NumPy, for further analysis), ``figures``
(data plus labels, not pixels) and ``findings`` (plain-language sentences with the numbers
behind them, ranked across metrics), so any reporter can render any metric.
"""

from __future__ import annotations

import json
import math
import os
import platform
import uuid
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from featrob.errors import ConfigError
from featrob.leases import process_alive

SUMMARY_TYPES = (int, float, str, bool, type(None))

#: Version of the results.json layout; ``featrob/schemas/results.schema.json`` describes it.
SCHEMA_VERSION = 1


def results_schema() -> dict[str, Any]:
    """The JSON Schema of results.json shipped with the package (draft 2020-12)."""

    return json.loads(files("featrob").joinpath("schemas/results.schema.json").read_text())


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


@dataclass
class Figure:
    """A plot described by its data, rendered by reporters.

    Attributes:
        kind: ``"line"``, ``"scatter"``, ``"hist"``, ``"box"``, ``"bar"`` or ``"image"``.
        series: one dict per series, e.g. ``{"label": "pgd", "x": [...], "y": [...]}``; for
            ``"box"`` ``{"label": ..., "values": [[...], [...]]}`` or, precomputed,
            ``{"label": ..., "x": [...], "stats": [{"med", "q1", "q3", "whislo", "whishi"}]}``
            (matplotlib ``bxp`` keys); for ``"hist"``
            ``{"label": ..., "values": [...], "bins": 20}``.
        title, xlabel, ylabel: text.
        options: extra rendering hints (``{"logy": True}``, a second axis, ...).
    """

    kind: str
    series: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Finding:
    """One plain-language answer a metric gives, with the numbers behind it.

    Reports put the findings of every metric first, ranked by ``score`` (the terminal
    summary, summary.md, report.html and results.json's top-level ``findings``). Build them
    from the metric's own numbers, and give none when a number is missing::

        Finding(
            text=f"Robust accuracy is at most {robust:.1%} (clean {clean:.1%})",
            score=1.0,
            values={"robust_accuracy": robust, "clean_accuracy": clean},
            figure="after_each_attack",
        )

    Attributes:
        text: one sentence with the numbers in it; claims no more than the numbers say.
        score: importance in [0, 1] for the ranking across metrics (clamped; NaN is 0):
            about 1 for the run's headline answer (robust accuracy), 0.5-0.8 for a clear
            fragility signal (a fragile class, layer or share of features), below 0.4 for
            context.
        values: the numbers the sentence quotes (``{name: number, string or None}``).
        figure: the key of the metric's figure that shows it (in ``MetricResult.figures``),
            or None; report.html links to it.
    """

    text: str
    score: float = 0.5
    values: dict[str, float | int | str | None] = field(default_factory=dict)
    figure: str | None = None

    def __post_init__(self) -> None:
        score = float(self.score)
        self.score = min(1.0, max(0.0, score)) if score == score else 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (``text``, ``score``, ``values``, ``figure``; NaN is null)."""
        return {
            "text": str(self.text),
            "score": round(self.score, 4),
            "values": {str(k): _jsonable(v) for k, v in self.values.items()},
            "figure": self.figure,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_json`."""
        return cls(
            text=str(data.get("text", "")),
            score=float(data.get("score") or 0.0),
            values=dict(data.get("values") or {}),
            figure=data.get("figure"),
        )


@dataclass
class MetricResult:
    """The outcome of one metric.

    Attributes:
        summary: flat ``{key: number|str|bool|None}``; keys may be dotted (``fgsm.error_rate``).
        tables: ``{table name: [row dict, ...]}``.
        arrays: ``{name: ndarray}`` (saved beside results.json, not inside it).
        figures: ``{name: Figure}``.
        warnings: things the reader should know (e.g. gradient masking suspected).
        error: the traceback when the metric raised, else None.
        duration_s: wall time of the metric.
        findings: a few plain-language findings (:class:`Finding`) built from the numbers
            above, shown first in every report (ranked by score across metrics).
    """

    summary: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    @property
    def error_line(self) -> str:
        """The last line of the error (the exception and its message), "" when none."""
        lines = (self.error or "").strip().splitlines()
        return lines[-1] if lines else ""

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (arrays are listed by shape only)."""
        return {
            "summary": {k: _jsonable(v) for k, v in self.summary.items()},
            "tables": {k: [_jsonable(r) for r in rows] for k, rows in self.tables.items()},
            "figures": {k: _jsonable(asdict(f)) for k, f in self.figures.items()},
            "arrays": {k: list(np.shape(v)) for k, v in self.arrays.items()},
            "warnings": list(self.warnings),
            "error": self.error,
            "duration_s": round(self.duration_s, 4),
            "findings": [f.to_json() for f in self.findings],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetricResult:
        """Inverse of :meth:`to_json` (arrays are not restored here)."""
        return cls(
            summary=dict(data.get("summary", {})),
            tables={k: list(v) for k, v in data.get("tables", {}).items()},
            figures={k: Figure(**v) for k, v in data.get("figures", {}).items()},
            warnings=list(data.get("warnings", [])),
            error=data.get("error"),
            duration_s=float(data.get("duration_s", 0.0)),
            findings=[Finding.from_json(f) for f in data.get("findings", [])],
        )


@dataclass
class Results:
    """Everything a run produced; ``results.json`` is :meth:`to_json`.

    ``warnings`` are run-level things the reader must know (a loaded model near chance);
    a metric's own warnings live in its :class:`MetricResult`. :attr:`findings` ranks every
    metric's findings; results.json holds that list as its top-level ``findings``.

    ``status`` says whether the file is final: ``"running"`` while metrics are still
    running (``pending`` names them), ``"complete"`` once every metric ran (some may have
    failed: see ``errors`` and each metric's ``error``), ``"interrupted"`` when the run was
    stopped (Ctrl-C, a signal, a killed process: a ``"running"`` file whose process is gone
    reads back as interrupted), ``"failed"`` when the run itself stopped on an error.
    Rerunning the same command completes an interrupted run from the feature store.
    """

    featrob: str
    config: dict[str, Any]
    plugins: dict[str, str]
    metrics: dict[str, MetricResult] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    status: str = "complete"
    pending: list[str] = field(default_factory=list)

    @property
    def final(self) -> bool:
        """True when the run finished (every metric ran; some may have failed)."""
        return self.status == "complete"

    @property
    def status_line(self) -> str | None:
        """One line for reports about a run that is not complete (None when complete)."""
        if self.final:
            return None
        left = f"{len(self.pending)} metric(s) did not run: {', '.join(self.pending)}"
        what = {
            "running": "this run is still running (or was killed)",
            "interrupted": "this run was interrupted",
            "failed": "this run stopped on an error",
        }.get(self.status, f"run status {self.status!r}")
        return f"{what}; {left}; rerun the same command to complete it from the store"

    @property
    def findings(self) -> list[tuple[str, Finding]]:
        """Every metric's findings as ``(metric name, finding)``, ranked: highest score first
        (ties keep the metrics' order, then each metric's own). Failed metrics have none."""
        found = [
            (name, finding)
            for name, metric in self.metrics.items()
            if not metric.error
            for finding in metric.findings
        ]
        return sorted(found, key=lambda item: -item[1].score)

    @property
    def failed(self) -> bool:
        """True when a metric or a plugin failed."""
        return bool(self.errors) or any(m.error for m in self.metrics.values())

    def failure_lines(self) -> list[str]:
        """One line per failure: the run's errors, then each failed metric's last line."""
        lines = list(self.errors)
        for name, metric in self.metrics.items():
            if metric.error:
                lines.append(f"metric {name!r} failed: {metric.error_line}")
        return lines

    @property
    def normalization_line(self) -> str | None:
        """``input normalisation: WHAT (WHY)`` from the environment, None for runs written
        before it was recorded."""
        record = self.environment.get("normalization")
        if not isinstance(record, dict):
            return None
        from featrob.models.normalization import Normalization

        try:
            norm = Normalization.from_json(record, str(record.get("source", "")))
        except (ConfigError, TypeError):  # a hand-edited results.json: say nothing
            return None
        return f"input normalisation: {norm.describe()} ({norm.source})"

    def to_json(self) -> dict[str, Any]:
        """The documented results.json layout."""
        return {
            "schema_version": SCHEMA_VERSION,
            "featrob": self.featrob,
            "config": _jsonable(self.config),
            "plugins": dict(self.plugins),
            "findings": [{"metric": name, **f.to_json()} for name, f in self.findings],
            "metrics": {name: m.to_json() for name, m in self.metrics.items()},
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "status": self.status,
            "pending": list(self.pending),
            "environment": _jsonable(self.environment),
        }

    def save(self, run_dir: str | Path) -> list[Path]:
        """Write ``results.json`` and, when any metric returned arrays, ``arrays.npz`` (each
        atomically: a reader never sees half a file). The run writes them after every
        metric, whatever reporters are selected; :meth:`load` reads them back."""
        out = Path(run_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "results.json"
        atomic_write(path, json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")
        written = [path]
        arrays = {
            f"{metric}/{name}": np.asarray(value)
            for metric, result in self.metrics.items()
            for name, value in result.arrays.items()
        }
        if arrays:
            npz = out / "arrays.npz"
            tmp = out / f".arrays.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz"
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, npz)
            written.append(npz)
        return written

    @classmethod
    def load(cls, run_dir: str | Path) -> Results:
        """Read a finished run's results.json (and arrays.npz when present)."""
        path = Path(run_dir) / "results.json"
        data = json.loads(path.read_text())
        results = cls(
            featrob=data["featrob"],
            config=data["config"],
            plugins=data.get("plugins", {}),
            metrics={k: MetricResult.from_json(v) for k, v in data.get("metrics", {}).items()},
            errors=list(data.get("errors", [])),
            environment=data.get("environment", {}),
            warnings=list(data.get("warnings", [])),
            status=data.get("status", "complete"),  # files from before status were final
            pending=list(data.get("pending", [])),
        )
        if results.status == "running" and not _process_alive(results.environment):
            results.status = "interrupted"
        arrays_path = Path(run_dir) / "arrays.npz"
        if arrays_path.exists():
            with np.load(arrays_path, allow_pickle=False) as npz:
                for key in npz.files:
                    metric, _, name = key.partition("/")
                    if metric in results.metrics:
                        results.metrics[metric].arrays[name] = npz[key]
        return results


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and inf become None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _process_alive(environment: dict[str, Any]) -> bool:
    """Whether the process that wrote a ``"running"`` results.json still runs (True when
    that cannot be told: another machine, or no pid recorded)."""
    pid, host = environment.get("pid"), environment.get("hostname")
    if not isinstance(pid, int) or host != platform.node():
        return True
    return process_alive(pid)

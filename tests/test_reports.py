"""Reporters (csv, hdf5) and ``featrob report RUN_DIR``, on hand-made results: rendering
reads Results only, so no model is needed."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

from featrob.builtins.report_data import CsvReporter, Hdf5Reporter, safe_name
from featrob.builtins.report_formats import JsonReporter
from featrob.cli import create_app
from featrob.plugins import PluginHost
from featrob.results import (
    SCHEMA_VERSION,
    Figure,
    Finding,
    MetricResult,
    Results,
    results_schema,
)


def _results() -> Results:
    metric = MetricResult(
        summary={"accuracy": 0.5, "note": "<script>", "nan": float("nan")},
        tables={
            "per class": [
                {"class": "cat", "n": 3, "acc": 0.25, "ok": True},
                {"class": "dog|x", "n": 4, "acc": None, "ok": False, "extra": [1, 2]},
            ]
        },
        arrays={"margin": np.arange(5.0)},
        figures={"h": Figure("hist", [{"label": "a", "values": [1, 2], "bins": 2}])},
        duration_s=1.5,
    )
    failed = MetricResult(error="Traceback ...\nValueError: boom")
    return Results(
        featrob="0.0",
        config={"model": "m", "dataset": "d", "eps": 0.1, "reports": ["json", "md"]},
        plugins={"x": "1"},
        metrics={"mine": metric, "broken": failed},
    )


def test_csv_writes_one_file_per_table_and_summary(tmp_path: Path):
    written = CsvReporter().write(_results(), tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["mine.per_class.csv", "mine.summary.csv"]
    rows = list(csv.DictReader((tmp_path / "tables" / "mine.per_class.csv").open()))
    assert [r["class"] for r in rows] == ["cat", "dog|x"]
    assert rows[1]["acc"] == "" and rows[1]["extra"] == "[1, 2]" and rows[0]["extra"] == ""
    summary = list(csv.DictReader((tmp_path / "tables" / "mine.summary.csv").open()))
    assert summary[0] == {"key": "accuracy", "value": "0.5"}


def test_hdf5_holds_arrays_columns_and_summary(tmp_path: Path):
    (path,) = Hdf5Reporter().write(_results(), tmp_path)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["mine/arrays/margin"][()], np.arange(5.0))
        acc = f["mine/tables/per_class/acc"][()]
        assert acc[0] == 0.25 and np.isnan(acc[1])
        assert f["mine/tables/per_class/ok"][()].tolist() == [True, False]
        assert [s.decode() for s in f["mine/tables/per_class/class"][()]] == ["cat", "dog|x"]
        assert json.loads(f["mine"].attrs["summary"])["nan"] is None
        assert "boom" in f["broken"].attrs["error"]


def test_report_command_rerenders_a_finished_run(tmp_path: Path):
    run_dir = tmp_path / "run"
    JsonReporter().write(_results(), run_dir)
    app = create_app(lambda: PluginHost())
    result = CliRunner().invoke(app, ["report", str(run_dir), "--report", "md,csv,hdf5"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "summary.md").read_text().startswith("# featrob run")
    assert "&lt;script&gt;" in (run_dir / "summary.md").read_text()
    assert (run_dir / "tables" / "mine.per_class.csv").exists()
    with h5py.File(run_dir / "results.h5", "r") as f:  # arrays come back from arrays.npz
        np.testing.assert_array_equal(f["mine/arrays/margin"][()], np.arange(5.0))
    # default: the run's own reporters, into another folder
    other = tmp_path / "other"
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(other)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in other.iterdir()) == ["arrays.npz", "results.json", "summary.md"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["report", "nowhere"], "has no results.json"),
        (["report", "RUN", "--report", "htm"], "unknown reporter"),
    ],
)
def test_report_command_bad_input_is_one_line(tmp_path: Path, args, message):
    run_dir = tmp_path / "run"
    JsonReporter().write(_results(), run_dir)
    paths = {"RUN": str(run_dir), "nowhere": str(tmp_path / "nowhere")}
    args = [paths.get(a, a) for a in args]
    result = CliRunner().invoke(create_app(lambda: PluginHost()), args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_safe_name():
    assert safe_name("per class") == "per_class"
    assert safe_name("../x/y") == "x_y"
    assert safe_name("eps=0.1.mean") == "eps_0.1.mean"


def test_results_json_schema_accepts_results_and_rejects_malformed_ones():
    data = json.loads(json.dumps(_results().to_json()))
    assert data["schema_version"] == SCHEMA_VERSION
    jsonschema.validate(data, results_schema())
    bad = json.loads(json.dumps(data))
    bad["metrics"]["mine"]["summary"]["nested"] = [1, 2]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, results_schema())
    bad = json.loads(json.dumps(data))
    bad["metrics"]["mine"]["figures"]["h"]["kind"] = "pie"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, results_schema())


# ---------------------------------------------------------------------- html
def _figure_zoo() -> dict[str, Figure]:
    stats = [{"med": 0.5, "q1": 0.4, "q3": 0.6, "whislo": 0.2, "whishi": 0.8, "ci": [0.4, 0.6]}]
    return {
        "line": Figure("line", [{"label": "<b>a</b>", "x": [0, 1, 2], "y": [1, None, 3]}],
                       title="<script>alert(1)</script>", options={"hline": 0.69, "logy": True}),
        "scatter": Figure("scatter", [{"label": "s", "x": [1, 2], "y": [2, 1]}],
                          options={"diagonal": True}),
        "hist": Figure("hist", [{"label": "h", "values": [1, 2, 2, 3], "bins": 3}]),
        "box_values": Figure("box", [{"label": "v", "values": [[1, 2, 3], [2, 3, 4]]}]),
        "box_stats": Figure("box", [{"label": "c", "x": [1], "stats": stats}],
                            options={"secondary": {"label": "error", "x": [1], "y": [0.3]}}),
        "bar": Figure("bar", [{"label": "b", "x": ["cat", "dog"], "y": [1, 2]}]),
        "image": Figure("image", [{"values": [[0, 1], [1, 0]]}]),
    }  # fmt: skip


def _html_results() -> Results:
    results = _results()
    results.metrics["mine"].figures = {**_figure_zoo(), "broken": Figure("pie", [{"x": [1]}])}
    results.metrics["mine"].tables["per class"][0]["class"] = "<script>alert('x')</script>"
    results.metrics["mine"].warnings = ["<img src=x onerror=alert(1)>"]
    # what made the default run's page 2,944 px wide and 57 screens tall
    wide = {f"column {j}": "a long cell value " * 3 for j in range(40)}
    results.metrics["mine"].tables["wide"] = [dict(wide) for _ in range(3)]
    results.metrics["mine"].tables["long"] = [{"i": i, "v": i / 2} for i in range(100)]
    results.metrics["mine"].summary.update({f"layer.key{k}": k / 3 for k in range(60)})
    results.metrics["mine"].findings = [  # linked to the section and, when drawn, the figure
        Finding("<b>first</b> finding", 0.9, {"x": 1}, figure="line"),
        Finding("its figure could not be drawn", 0.5, figure="broken"),
        Finding("no such figure", 0.3, figure="missing"),
    ]
    return results


def test_html_is_self_contained_escaped_and_draws_every_figure_kind(tmp_path: Path):
    from featrob.builtins.report_html import HtmlReporter

    (path,) = HtmlReporter().write(_html_results(), tmp_path)
    text = path.read_text()
    assert "<script" not in text.lower() and "onerror=" not in text.replace("onerror=alert", "")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert text.count('<img alt="') == len(_figure_zoo())  # every kind drawn
    assert "figure broken could not be drawn: ValueError: unknown figure kind" in text
    assert "http://" not in text and "https://" not in text  # nothing fetched
    assert "ValueError: boom" in text  # the failed metric's traceback


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (.ci/run installs it)")
def test_html_renders_in_headless_chromium_without_errors(tmp_path: Path):
    """The report opens in a real browser: no script or console errors, every image loaded."""
    from featrob.builtins.report_html import HtmlReporter

    (path,) = HtmlReporter().write(_html_results(), tmp_path)
    probe = """<script>
    window.__errors = [];
    window.addEventListener('error',
      e => window.__errors.push(String(e.message || e.target.src)), true);
    window.addEventListener('load', () => {
      const imgs = Array.from(document.images);
      const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
      const links = Array.from(document.querySelectorAll('nav a, a.top, #findings a'));
      const unreachable = links.filter(a => !document.getElementById(a.hash.slice(1))).length;
      const wider = document.documentElement.scrollWidth > window.innerWidth;
      document.body.setAttribute('data-check', JSON.stringify({images: imgs.length, bad: bad,
        errors: window.__errors, wider: wider, links: links.length > 2, unreachable}));
    });
    </script>"""
    checked = tmp_path / "checked.html"
    checked.write_text(path.read_text().replace("<head>", "<head>" + probe, 1))
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--window-size=1280,900",
         "--enable-logging=stderr", "--v=0", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    match = re.search(r"data-check=\"([^\"]*)\"", proc.stdout)
    assert match, proc.stdout[-2000:] + proc.stderr[-2000:]
    check = json.loads(html.unescape(match.group(1)))
    assert check == {
        "images": len(_figure_zoo()),
        "bad": 0,
        "errors": [],
        "wider": False,  # the page never scrolls sideways at 1,280 px: wide tables scroll inside
        "links": True,
        "unreachable": 0,  # every entry of the contents and every "top" link has its target
    }
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console


def test_html_folds_long_tables_and_summaries_and_has_sticky_contents(tmp_path: Path):
    from featrob.builtins.report_html import FOLD_ROWS, HEADLINE_KEYS, HtmlReporter

    (path,) = HtmlReporter().write(_html_results(), tmp_path)
    text = path.read_text()
    assert "<details><summary>100 rows</summary>" in text  # the long table, folded
    summary = _html_results().metrics["mine"].summary
    assert f"<details><summary>{len(summary) - HEADLINE_KEYS} more summary values</summary>" in text
    assert text.count('<div class="scroll">') >= 3 and FOLD_ROWS < 100
    assert "position: sticky" in text and '<nav class="toc">' in text
    assert text.count('href="#top"') >= 2

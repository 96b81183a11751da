"""Findings: plain sentences built from each metric's numbers, ranked across metrics, first
in results.json, the terminal, summary.md and report.html."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from featrob_collision.findings import collision_findings
from featrob_compression.findings import compression_findings
from featrob_hpm.findings import hpm_sensitivity_findings, msa_findings
from featrob_scale.findings import scale_findings
from featrob_sensitivity.findings import carrying_half, sensitivity_findings
from typer.testing import CliRunner

from featrob import Figure, Finding, MetricResult, Results
from featrob.builtins.accuracy_findings import clean_accuracy_findings, robust_accuracy_findings
from featrob.builtins.report_formats import render_markdown
from featrob.builtins.report_html import render_html
from featrob.cli import create_app
from featrob.plugins import PluginHost
from featrob.results import results_schema

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


def _texts(findings: list[Finding]) -> list[str]:
    return [f.text for f in findings]


# ---------------------------------------------------------------------- the API
def test_finding_clamps_its_score_and_round_trips():
    assert Finding("a", 1.7).score == 1.0 and Finding("a", -1).score == 0.0
    assert Finding("a", NAN).score == 0.0
    f = Finding("x is 0.5", 0.4, {"x": 0.5, "n": 3, "what": "pgd", "none": NAN}, "fig")
    data = json.loads(json.dumps(f.to_json(), allow_nan=False))
    assert data == {
        "text": "x is 0.5",
        "score": 0.4,
        "values": {"x": 0.5, "n": 3, "what": "pgd", "none": None},
        "figure": "fig",
    }
    assert Finding.from_json(data) == Finding("x is 0.5", 0.4, data["values"], "fig")


def _results() -> Results:
    fig = Figure("hist", [{"label": "a", "values": [1, 2, 3], "bins": 2}])
    low = MetricResult(
        summary={"v": 1.0},
        figures={"first": fig, "h": fig},
        findings=[Finding("context <b>", 0.2), Finding("strong", 0.7, {"v": 1.0}, "h")],
    )
    top = MetricResult(summary={"a": 0.3}, findings=[Finding("headline", 1.0, {"a": 0.3})])
    failed = MetricResult(error="boom", findings=[Finding("from a failed metric", 0.9)])
    return Results(
        featrob="0.0",
        config={"model": "m", "dataset": "d", "eps": 0.1},
        plugins={},
        metrics={"low": low, "top": top, "failed": failed},
    )


def test_results_rank_findings_and_results_json_keeps_them(tmp_path: Path):
    results = _results()
    ranked = [(name, f.text) for name, f in results.findings]
    assert ranked == [("top", "headline"), ("low", "strong"), ("low", "context <b>")]
    results.save(tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    jsonschema.validate(data, results_schema())
    assert [(f["metric"], f["text"], f["score"]) for f in data["findings"]] == [
        ("top", "headline", 1.0),
        ("low", "strong", 0.7),
        ("low", "context <b>", 0.2),
    ]
    assert data["findings"][1]["figure"] == "h" and data["findings"][1]["values"] == {"v": 1.0}
    back = Results.load(tmp_path)
    assert [(n, f.text, f.figure) for n, f in back.findings] == [
        (n, f.text, f.figure) for n, f in results.findings
    ]
    # a results.json written before findings existed still loads (and has none)
    for metric in data["metrics"].values():
        del metric["findings"]
    del data["findings"]
    jsonschema.validate(data, results_schema())
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert Results.load(tmp_path).findings == []
    bad = json.loads(json.dumps(results.to_json()))
    bad["findings"][0]["score"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, results_schema())


# ---------------------------------------------------------------------- reports
def test_html_opens_with_findings_linked_to_sections_and_figures():
    text = render_html(_results())
    assert '<a href="#findings">findings</a>' in text.split("</nav>")[0]
    section = text.index('<section id="findings">')
    assert section < text.index('<h2 id="metric-0">')
    items = re.findall(r"<li>(.*?)</li>", text[section : text.index("</section>", section)])
    assert [re.sub(r" <span.*", "", i) for i in items] == [
        "headline",
        "strong",
        "context &lt;b&gt;",
    ]
    ids = set(re.findall(r'id="([^"]+)"', text))
    links = re.findall(r'href="#([^"]+)"', text)
    assert links and all(link in ids for link in links)  # every link reaches its target
    # "strong" links to metric 0 ("low") and its second figure, "h"
    assert '<a href="#metric-0">low</a> · <a href="#metric-0-figure-1">figure</a>' in items[1]
    assert "figure" not in items[0] and '<figure id="metric-0-figure-1">' in text


def test_html_folds_findings_past_the_top_ones():
    from featrob.builtins.report_html import TOP_FINDINGS

    results = _results()
    results.metrics["low"].findings = [Finding(f"f{k}", 0.5) for k in range(TOP_FINDINGS + 3)]
    text = render_html(results)
    assert "<details><summary>4 more findings</summary>" in text  # and "top"'s one


def test_markdown_and_csv_open_with_findings(tmp_path: Path):
    from featrob.builtins.report_data import CsvReporter

    md = render_markdown(_results())
    assert md.index("## Findings") < md.index("## low")
    assert "1. headline _(top)_" in md and "3. context &lt;b&gt; _(low)_" in md
    written = CsvReporter().write(_results(), tmp_path)
    assert tmp_path / "tables" / "findings.csv" in written
    rows = (tmp_path / "tables" / "findings.csv").read_text().splitlines()
    assert rows[0].startswith("metric,text,score") and rows[1].startswith("top,headline,1.0")


def test_a_small_run_prints_findings_first_and_report_rebuilds_them(tmp_path: Path):
    out = tmp_path / "out"
    app = create_app(lambda: PluginHost())
    args = ["run", "--plugin", "accuracy", "--n-per-class", "2", "--attack", "pgd(steps=2)"]
    result = CliRunner().invoke(app, [*args, "--quiet", "--store", "none", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = result.output[result.output.index("Findings") :]
    assert result.output.index("Findings") < result.output.index("featrob results")
    assert re.search(r"1\. Robust accuracy is at most \d+\.\d%", summary), summary
    data = json.loads((out / "results.json").read_text())
    assert data["findings"][0]["metric"] == "robust_accuracy"
    assert data["findings"][0]["figure"] == "after_each_attack"
    html = (out / "report.html").read_text()
    assert html.index('id="findings"') < html.index('<h2 id="metric-0">')
    (out / "report.html").unlink()
    again = CliRunner().invoke(app, ["report", str(out), "--report", "html"])
    assert again.exit_code == 0 and "Findings" in again.output
    assert (out / "report.html").read_text() == html


# ---------------------------------------------------------------------- accuracy
ATTACKS = [
    {"attack": "apgd-ce", "attacked": 90, "broken": 40},
    {"attack": "apgd-t", "attacked": 50, "broken": 5},
]
PER_CLASS = [
    {"class": "cat", "n": 50, "clean": 0.9, "robust": 0.2},
    {"class": "dog", "n": 50, "clean": 0.9, "robust": 0.7},
]


def test_robust_accuracy_findings_follow_the_numbers():
    summary = {"accuracy": 0.45, "clean_accuracy": 0.9, "eps": 0.1, "norm": "linf", "n": 100}
    head, fragile = robust_accuracy_findings(summary, ATTACKS, PER_CLASS)
    assert head.text == (
        "Robust accuracy is at most 45.0% under linf eps=0.1, against 90.0% clean; apgd-ce "
        "broke the most, 40 of the 90 correctly classified samples; the 2 attacks together "
        "broke 45."
    )
    assert head.score == 1.0 and head.figure == "after_each_attack"
    assert fragile.text == (
        "Class 'cat' is the most fragile: robust accuracy 20.0% (n=50, clean 90.0%), "
        "against 45.0% over all classes."
    )
    other = {**summary, "accuracy": 0.3}
    attacks = [dict(ATTACKS[0], broken=10), dict(ATTACKS[1], broken=20)]
    per_class = [dict(PER_CLASS[0], robust=0.1), dict(PER_CLASS[1], robust=0.1)]
    head2, fragile2 = robust_accuracy_findings(other, attacks, per_class)
    assert "at most 30.0%" in head2.text and "apgd-t broke the most, 20 of the 90" in head2.text
    assert fragile2.text.startswith("Classes 'cat', 'dog' are the most fragile: robust")
    assert fragile2.score < fragile.score  # closer to the overall accuracy
    # a class no worse than the overall accuracy is not a finding; missing numbers give none
    assert len(robust_accuracy_findings(summary, ATTACKS, PER_CLASS[:1])) == 1
    assert robust_accuracy_findings({**summary, "accuracy": NAN}, ATTACKS, PER_CLASS) == []
    assert robust_accuracy_findings({**summary, "clean_accuracy": None}, [], []) == []


def test_clean_accuracy_finding_only_when_a_class_lags():
    rows = [{"class": "a", "n": 10, "accuracy": 0.6}, {"class": "b", "n": 10, "accuracy": 1.0}]
    (found,) = clean_accuracy_findings({"accuracy": 0.8}, rows)
    assert found.text == (
        "Class 'a' is the hardest on clean inputs: accuracy 60.0% (n=10), against 80.0% over "
        "all classes."
    )
    rows[0]["accuracy"] = 0.75
    assert clean_accuracy_findings({"accuracy": 0.8}, rows) == []  # not notable
    assert clean_accuracy_findings({"accuracy": None}, rows) == []


# ---------------------------------------------------------------------- plugins
def test_scale_findings_follow_the_numbers():
    summary = {
        "pgd.error_rate": 0.5,
        "pgd.low_error_rate": 0.8,
        "pgd.high_error_rate": 0.4,
        "pgd.low_quantile_error_rate": 0.7,
        "pgd.judged_classes": 4,
        "pgd.separated_classes": 3,
        "pgd.decreasing_error_classes": 5,
        "pgd.classes_with_trend": 8,
        "fgsm.error_rate": 0.3,
        "fgsm.low_error_rate": 0.35,
        "fgsm.high_error_rate": 0.3,
        "compare.pgd.error_rate": 0.9,  # the compared model's: not the run model's finding
    }
    classes = [
        {"class": "cat", "low_error_rate": 0.9, "high_error_rate": 0.3},
        {"class": "dog", "low_error_rate": 0.5, "high_error_rate": 0.45},
    ]
    gap, trend = scale_findings(summary, {"pgd.classes": classes}, ["pgd.cat", "pgd.dog"])
    assert gap.text == (
        "Under pgd, samples in the lowest 30% of their class's feature-scale range are "
        "misclassified at 80.0%, against 40.0% for those in the highest 40%, 2.0x as often; "
        "their bootstrap intervals separate in 3 of the 4 classes with enough samples; class "
        "'cat' shows it most."
    )
    assert gap.figure == "pgd.cat" and gap.values["perturbation"] == "pgd"
    assert "falls as the feature scale grows" in trend.text and "5 of the 8" in trend.text
    # no low-scale section: the pooled lowest-scale 30% against all samples
    pooled = {**summary, "pgd.low_error_rate": None, "fgsm.low_error_rate": NAN}
    pooled |= {"pgd.classes_with_trend": 0}
    (only,) = scale_findings(pooled)
    assert only.text == (
        "Under pgd, each class's 30% lowest-scale samples are misclassified at 70.0%, against "
        "50.0% for all samples, 1.4x as often (pooled over classes, not tested for "
        "significance)."
    )
    calm = {"pgd.error_rate": 0.5, "pgd.low_error_rate": 0.3, "pgd.high_error_rate": 0.5}
    (flat,) = scale_findings(calm)
    assert "are not more fragile" in flat.text and flat.score < only.score
    assert scale_findings({"pgd.error_rate": None, "pgd.low_quantile_error_rate": None}) == []


def test_collision_finding_names_the_layer_where_the_loss_rises_first():
    summary = {
        "layers": "input, conv1, fc1, logits",
        "input.eps_half_saturation": 2.0,
        "conv1.eps_half_saturation": 1.5,
        "fc1.eps_half_saturation": 0.8,
        "logits.eps_half_saturation": 0.8,
        "classes": "3 vs 7",
        "pairs": 100,
        "eps_max": 3.0,
    }
    (found,) = collision_findings(summary)
    assert found.text == (
        "The optimal cross-entropy lower bound for classes 3 vs 7 rises first at layer fc1: it "
        "reaches half of log 2 at L2 eps=0.8, against 2 at the input and 0.8 at the logits "
        "(100 pairs)."
    )
    assert found.figure == "optimal_cross_entropy" and found.values["layer"] == "fc1"
    (moved,) = collision_findings({**summary, "conv1.eps_half_saturation": 0.5})
    assert "rises first at layer conv1: it reaches half of log 2 at L2 eps=0.5" in moved.text
    (closer,) = collision_findings({**summary, "input.eps_half_saturation": 1.0})
    assert "against 1 at the input" in closer.text and closer.score < found.score
    never = {k: (None if k.endswith("saturation") else v) for k, v in summary.items()}
    (none,) = collision_findings(never)
    assert "stays below half of log 2 at every layer up to L2 eps=3" in none.text
    assert collision_findings({"layers": ""}) == []
    assert collision_findings({**never, "eps_max": NAN}) == []


def test_sensitivity_findings_follow_the_numbers():
    assert carrying_half(np.array([4.0, 1.0, 1.0, 1.0, 1.0])) == 1
    assert carrying_half(np.ones(10)) == 5 and carrying_half(np.zeros(3)) is None
    concentrated = np.array([8.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    share, acc = sensitivity_findings(
        0.1, concentrated, layer="fc1", robust_accuracy=0.25, bound=0.05, samples=32, figure="h"
    )
    assert share.text == (
        "Half of the total feature sensitivity at layer fc1 (Linf eps=0.1) sits in the 1 most "
        "sensitive of the 10 analysed features (10%); 7 features do not move at all."
    )
    assert share.figure == "h"
    assert acc.text == (
        "PGD robust accuracy of the 32 analysed samples at Linf eps=0.1 is 25.0%; Theorem 3 "
        "bounds it below by 5.0% from margins and sensitivities."
    )
    (even,) = sensitivity_findings(0.1, np.ones(10))  # no accuracy: one finding
    assert "in the 5 most sensitive of the 10" in even.text and even.score < share.score
    assert "do not move" not in even.text
    (vacuous,) = sensitivity_findings(0.1, np.zeros(4), robust_accuracy=0.5, bound=-2.0)
    assert "Theorem 3" not in vacuous.text  # a bound <= 0 says nothing
    assert sensitivity_findings(0.1, np.array([1.0, NAN]), robust_accuracy=None) == []


def test_msa_findings_follow_the_numbers():
    summary = {
        "batch_size": 256,
        "eps0.1.fc.robust": 0.48,
        "eps0.1.hpm.msa": 0.40,
        "eps0.1.hpm.naive": 0.55,
        "eps0.1.hpm.square_only": 3,
        "batch.1.clean_changed": 0.02,
        "batch.1.msa_eps0.1_changed": 0.2,
        "batch.256.msa_eps0.1_changed": 0.0,
    }
    gap, fc, batch = msa_findings(summary)
    assert gap.text == (
        "Attacked naively, the HPM head looks 15.0 points more robust than under the Mixed "
        "Surrogate Attack at eps=0.1 (55.0% vs 40.0%): the naive evaluation overestimates its "
        "robustness; only the gradient-free Square attack broke 3 samples."
    )
    assert fc.text == (
        "Under the MSA protocol the HPM head keeps 40.0% robust accuracy at eps=0.1, against "
        "48.0% for the FC head on the same backbone."
    )
    assert batch.text == (
        "The HPM head's predictions depend on the evaluation batch: 20.0% of the MSA "
        "adversarial (eps=0.1) inputs are classified differently at batch size 1 than at the "
        "run's batch size 256."
    )
    honest = {**summary, "eps0.1.hpm.naive": 0.38, "eps0.1.hpm.square_only": 0}
    honest |= {"batch.1.clean_changed": 0.0, "batch.1.msa_eps0.1_changed": 0.0}
    same, _ = msa_findings(honest)
    assert "is not more optimistic" in same.text and same.score < gap.score
    assert "Square" not in same.text
    assert msa_findings({"eps0.1.hpm.msa": 0.4, "eps0.1.hpm.naive": None}) == []


def test_hpm_sensitivity_findings_follow_the_numbers():
    summary = {
        "samples": 100,
        "attack": "apgd-ce",
        "fc_more_sensitive_share": 0.8,
        "s_c.median": 0.9,
        "sup_s_d.median": 0.3,
        "cdf_model_vs_empirical_ks": 0.05,
        "cdf_isotropic_vs_empirical_ks": 0.4,
    }
    share, fit = hpm_sensitivity_findings(summary)
    assert share.text == (
        "The FC head is more sensitive than the L2 head's worst case on 80.0% of the 100 "
        "samples under apgd-ce (median S_c 0.9, sup S_d 0.3)."
    )
    assert "KS distance 0.050" in fit.text and fit.figure == "ratio_cdf"
    (less,) = hpm_sensitivity_findings(
        {**summary, "fc_more_sensitive_share": 0.1} | {"cdf_model_vs_empirical_ks": None}
    )
    assert "on 10.0% of the 100" in less.text and less.score < share.score
    assert hpm_sensitivity_findings({"s_c.median": NAN}) == []


def test_compression_findings_follow_the_numbers():
    summary = {
        "analysed_pairs": 40,
        "fragile_share": 0.9,
        "fragility.median": 0.5,
        "local_ratio.median": 0.3,
        "gaussian_prediction": 0.18,
        "input_dim": 64,
        "spearman.local_ratio~fragility": 0.4,
        "spearman.local_ratio~fragility.p": 0.001,
    }
    fragile, ratio = compression_findings(summary)
    assert fragile.text == (
        "90.0% of the 40 analysed pairs are broken by a perturbation shorter than the optimal "
        "classifier tolerates (d_opt, half the distance to the nearest other-class sample); the "
        "median delta_min / d_opt is 0.50."
    )
    assert ratio.text == (
        "The logit gradients see a median 30% of the direction to the nearest other-class "
        "sample (local compression ratio ||P(x' - x)|| / ||x' - x||; a random direction in 64 "
        "dimensions: 18%); more compressed pairs are more fragile (Spearman rho 0.40)."
    )
    other = {**summary, "fragile_share": 0.1, "spearman.local_ratio~fragility.p": 0.3}
    fragile2, ratio2 = compression_findings(other)
    assert fragile2.text.startswith("10.0% of the 40") and fragile2.score < fragile.score
    assert "no significant link to fragility (Spearman rho 0.40, p 0.3)" in ratio2.text
    assert compression_findings({"analysed_pairs": 0, "fragile_share": None}) == []


def test_example_plugin_finding_follows_its_numbers():
    spec = importlib.util.spec_from_file_location(
        "margin_plugin", ROOT / "examples" / "margin_plugin.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (few,) = module.margin_findings(2.5, 0.1, 1.0)
    (many,) = module.margin_findings(0.4, 0.6, 1.0)
    assert few.text == "10% of the samples have a clean logit margin below 1 (median margin 2.50)."
    assert many.text.startswith("60% of the samples") and many.score > few.score
    assert few.figure == "margins" and module.margin_findings(math.nan, 0.1, 1.0) == []

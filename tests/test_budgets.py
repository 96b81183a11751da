"""Run budgets (quick, standard, paper) and the pass counts of ``featrob run --check``."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from typer.testing import CliRunner

import featrob
from featrob import Metric, MetricResult, Passes, make_attack
from featrob.budgets import BUDGETS, budget_options
from featrob.cli import create_app
from featrob.config import RunConfig
from featrob.errors import ConfigError
from featrob.plugins import PluginHost
from featrob.testing import make_context, tiny_dataset, tiny_model

runner = CliRunner()


class Sized(Metric):
    name: ClassVar[str] = "sized"
    defaults: ClassVar[dict[str, Any]] = {"samples": 32, "steps": 20}
    budgets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"samples": 8},
        "paper": {"samples": 512, "steps": 100},
    }

    def compute(self, ctx: Any) -> MetricResult:
        return MetricResult(summary=dict(self.options))


def test_budget_defaults_to_quick_and_picks_the_attacks() -> None:
    assert RunConfig().budget == "quick"
    assert RunConfig().attack_specs() == ["apgd-ce(steps=20)"]
    assert RunConfig(budget="standard").attack_specs() == ["standard"]
    assert RunConfig(budget="paper").attack_specs() == ["standard"]
    # an explicit --attack replaces the budget's
    assert RunConfig(budget="quick", attacks=["fgsm"]).attack_specs() == ["fgsm"]


def test_unknown_budget_is_one_line_with_a_close_match() -> None:
    with pytest.raises(ConfigError, match=r"budget must be one of quick, standard, paper.*'quick'"):
        RunConfig.load(overrides={"budget": "quik"})


def test_budget_options_sit_between_defaults_and_the_users() -> None:
    assert Sized(**budget_options(Sized, "quick")).options == {"samples": 8, "steps": 20}
    assert Sized(**budget_options(Sized, "standard")).options == {"samples": 32, "steps": 20}
    paper = Sized(**budget_options(Sized, "paper", {"steps": 7})).options
    assert paper == {"samples": 512, "steps": 7}  # the user's option wins


def test_a_run_applies_the_budget_and_records_it(host: PluginHost, tmp_path) -> None:
    class Plugin:
        @featrob.hookimpl
        def featrob_register_metrics(self, register):
            register(Sized)

    host.add(Plugin(), "sized-plugin")
    results = featrob.run(
        {
            "budget": "paper",
            "plugins": ["sized-plugin"],
            "n_per_class": 2,
            "out": str(tmp_path / "out"),
            "store": "none",
            "reports": ["json"],
            "quiet": True,
            "train": {"epochs": 1},
            "metrics": {"sized": {"steps": 3}},
        },
        host=host,
    )
    assert results.metrics["sized"].summary == {"samples": 512, "steps": 3}
    assert results.config["budget"] == "paper"


def test_every_first_party_budget_gives_valid_options(host: PluginHost) -> None:
    for entry in host.metrics:
        cls = entry.obj
        assert set(cls.budgets) <= set(BUDGETS), entry.name
        for budget in BUDGETS:
            cls(**budget_options(cls, budget))  # raises on an unknown or invalid option
    # the budgets order the work: quick < standard < paper for every metric that counts
    cfgs = {b: RunConfig(budget=b, store="none") for b in BUDGETS}
    from featrob.run_plan import plan_info, plan_rows
    from featrob.runner import select_metrics

    totals = {}
    for budget, cfg in cfgs.items():
        metrics, _ = select_metrics(cfg, host)
        info = plan_info(cfg, host)
        totals[budget] = {r.metric: r.passes.total for r in plan_rows(cfg, metrics, info)}
    for metric in totals["quick"]:
        assert totals["quick"][metric] <= totals["standard"][metric] <= totals["paper"][metric]
    assert sum(totals["quick"].values()) * 5 < sum(totals["standard"].values())


def test_check_prints_the_plan_with_passes(tmp_path) -> None:
    app = create_app(lambda: PluginHost())
    result = runner.invoke(app, ["run", "--check", "--budget", "standard", "-p", "accuracy"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "config ok: 2 metrics" in out
    assert "budget standard: 450 test samples of digits (10 classes)" in out
    assert "attacks: apgd-ce, apgd-t, fab-t, square" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:2] == "  "}
    assert rows["clean_accuracy"] == ["450", "0"]
    # the standard preset at 10 classes: APGD-CE 102 + APGD-T 9 x 102 + FAB-T 1,801 +
    # Square 5,001 forward passes per sample, a check per attack, three clean checks (one
    # with an input gradient) and the clean logits
    per_sample = 102 + 9 * 102 + 1801 + 5001 + 4 + 3 + 1
    assert rows["robust_accuracy"][0] == f"{450 * per_sample:,}"
    assert rows["robust_accuracy"][1] == f"{450 * (101 + 9 * 101 + 900 + 1):,}"


def test_check_says_which_metric_does_not_estimate(host: PluginHost) -> None:
    class Plugin:
        @featrob.hookimpl
        def featrob_register_metrics(self, register):
            register(Sized)

    host.add(Plugin(), "sized-plugin")
    app = create_app(lambda: host)
    result = runner.invoke(app, ["run", "--check", "--budget", "nonsense"])
    assert result.exit_code != 0 and "did you mean" not in result.output
    assert "budget must be one of quick, standard, paper" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["run", "--check", "-p", "sized-plugin"])
    assert result.exit_code == 0, result.output
    assert "(not estimated)" in result.output


class _Counter:
    """Counts the inputs through a model's forward and backward passes."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.forward = 0
        self.backward = 0
        model.register_forward_hook(self._forward)

    def _forward(self, _module, inputs, output) -> None:
        self.forward += len(inputs[0])
        if output.requires_grad:
            output.register_hook(self._backward)

    def _backward(self, grad: torch.Tensor) -> None:
        self.backward += len(grad)


@pytest.mark.parametrize(
    "spec",
    ["apgd-ce(steps=10)", "apgd-t(steps=5, n_target_classes=3)", "pgd(steps=7)", "fgsm",
     "square(n_queries=40)", "fab-t(steps=6, n_target_classes=2)"],
)  # fmt: skip
def test_attack_pass_counts_bound_what_the_attack_spends(spec: str) -> None:
    model = tiny_model()
    data = tiny_dataset()
    x, y = data.test.float_images()[:16], data.test.labels[:16]
    attack = make_attack(spec, eps=0.3)
    counter = _Counter(model)
    attack.perturb(model, x, y)
    bound = len(x) * attack.passes(data.num_classes)
    assert counter.forward <= bound.forward and counter.backward <= bound.backward, (
        counter.forward, counter.backward, bound,
    )  # fmt: skip
    assert isinstance(bound, Passes)


def test_quick_robust_accuracy_says_it_is_an_upper_bound() -> None:
    from featrob.builtins.accuracy_metrics import RobustAccuracy

    quick = RobustAccuracy().compute(make_context(eps=0.1))
    notes = [w for w in quick.warnings if "upper bound" in w]
    assert len(notes) == 1 and "featrob run --budget standard" in notes[0]
    assert "apgd-ce(steps=20)" in notes[0]
    explicit = RobustAccuracy().compute(make_context(eps=0.1, attacks=["fgsm"]))
    assert not [w for w in explicit.warnings if "upper bound" in w]


def _first_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The first module with weights: every forward pass of the model goes through it."""
    return next(m for m in model.modules() if list(m.parameters(recurse=False)))


@pytest.mark.parametrize(
    ("metric", "options"),
    [("robust_accuracy", {}), ("scale", {"perturbations": ["fgsm", "pgd"]}),
     ("sensitivity", {"samples": 4, "steps": 3, "accuracy_steps": 2, "features": 3})],
)  # fmt: skip
def test_metric_pass_counts_bound_what_the_metric_spends(
    host: PluginHost, metric: str, options: dict[str, Any]
) -> None:
    from featrob.plan import PlanInfo

    model = tiny_model()
    ctx = make_context(model, host=host, eps=0.1, attacks=["apgd-ce(steps=5)", "fgsm"])
    cls = host.metrics.get(metric)
    instance = cls(**options)
    info = PlanInfo(
        config=ctx.config,
        n_samples=len(ctx.labels),
        n_train=len(ctx.data.split("train")),
        n_classes=ctx.num_classes,
        num_features=model.num_features,
        layers=["input", *model.layers],
        attacks=ctx.run_attacks(),
        make_attack=ctx.make_attack,
    )
    bound = instance.passes(info)
    counter = _Counter(_first_layer(model))
    instance.compute(ctx)
    assert 0 < counter.forward <= bound.forward
    assert counter.backward <= bound.backward


def test_terminal_says_a_quick_robust_accuracy_is_an_upper_bound(tmp_path) -> None:
    app = create_app(lambda: PluginHost())
    args = ["run", "-p", "accuracy", "--n-per-class", "2", "--store", "none", "--report", "json"]
    quick = runner.invoke(app, [*args, "--out", str(tmp_path / "quick")])
    assert quick.exit_code == 0, quick.output
    text = " ".join(quick.output.split())  # rich wraps long lines
    assert "is an upper bound: the quick budget ran only apgd-ce(steps=20)" in text
    assert "`featrob run --budget standard` runs AutoAttack's standard evaluation" in text
    explicit = runner.invoke(app, [*args, "--attack", "fgsm", "--out", str(tmp_path / "fgsm")])
    assert explicit.exit_code == 0, explicit.output
    assert "upper bound" not in explicit.output

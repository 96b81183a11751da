"""APGD-T's grouped targets: (sample, target) rows of several targets in one run give the
points of the targets run one at a time, with and without early exit, with restarts, and
with fewer model calls on few survivors. In float64: batch composition then moves a point by
at most an ulp (L2 steps use the gradient's values; Linf, its signs, is bit-identical)."""

from __future__ import annotations

import pytest
import torch

from featrob.attacks.factory import make_attack
from featrob.errors import ConfigError
from featrob.seeding import normal, sample_seeds, uniform
from tests.attack_reference import reference_data, reference_model

THREATS = {"linf": 0.15, "l2": 0.5}


class Counter:
    """A forward that counts its calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


@pytest.fixture(scope="module")
def problem():
    x, y, seeds = reference_data(48)
    return reference_model().double(), x.double(), y, seeds


@pytest.mark.parametrize("norm", list(THREATS))
@pytest.mark.parametrize("params", [{}, {"early_exit": False}, {"restarts": 2, "steps": 15}])
def test_grouped_targets_return_the_one_at_a_time_points(problem, norm, params):
    model, x, y, seeds = problem
    params = {"steps": 25, "n_target_classes": 5, **params}
    eps = THREATS[norm]
    one = make_attack("apgd-t", eps=eps, norm=norm, target_rows=1, **params)
    reference = one.perturb(model, x, y, sample_seeds=seeds)
    with torch.no_grad():
        broken = model(reference).argmax(1) != y
    assert 0 < int(broken.sum()) < len(x), "the threat model must break some samples"
    for rows in (100, 10_000):  # two targets per group; all five at once
        attack = make_attack("apgd-t", eps=eps, norm=norm, target_rows=rows, **params)
        adv = attack.perturb(model, x, y, sample_seeds=seeds)
        if norm == "linf":
            assert torch.equal(adv, reference), (params, rows)
        torch.testing.assert_close(adv, reference, atol=1e-12, rtol=0)
        with torch.no_grad():
            assert torch.equal(model(adv).argmax(1) != y, broken)


def test_grouped_targets_take_fewer_calls_on_few_survivors(problem):
    """Five targets on a handful of samples: one run of 5x the rows instead of five runs."""
    model, x, y, seeds = problem
    x, y, seeds = x[:6], y[:6], seeds[:6]
    calls = {}
    for rows in (1, 64):
        counter = Counter(model)
        attack = make_attack("apgd-t", eps=0.02, steps=20, n_target_classes=5, target_rows=rows)
        attack.perturb(counter, x, y, sample_seeds=seeds)
        calls[rows] = counter.calls
    assert calls[64] * 3 < calls[1], calls


def test_per_sample_streams_draw_what_int_streams_draw():
    seeds = sample_seeds(0, torch.arange(6))
    streams = torch.tensor([0, 5, 9, (1 << 40) + 3, 2, 0])
    u, n = uniform(seeds, (4,), streams), normal(seeds, (3,), streams)
    for i in range(6):
        assert torch.equal(u[i], uniform(seeds[i : i + 1], (4,), int(streams[i]))[0])
        assert torch.equal(n[i], normal(seeds[i : i + 1], (3,), int(streams[i]))[0])


def test_target_rows_must_be_positive():
    with pytest.raises(ConfigError, match="target_rows"):
        make_attack("apgd-t", eps=0.1, target_rows=0)


@pytest.mark.parametrize("norm", list(THREATS))
@pytest.mark.parametrize("early_exit", [True, False])
def test_fab_t_grouped_targets_give_the_one_at_a_time_result(problem, norm, early_exit):
    """FAB-T's grouped targets: the same smallest norms and points (float64) as one target
    at a time, within eps (perturb) and for the full search (minimize)."""
    model, x, y, seeds = problem
    params = {"steps": 20, "n_target_classes": 4, "early_exit": early_exit}
    eps = THREATS[norm]
    one = make_attack("fab-t", eps=eps, norm=norm, target_rows=1, **params)
    ref = one.search_within_eps(model, x, y, sample_seeds=seeds)
    ref_min = make_attack("fab-t", eps=0, norm=norm, target_rows=1, **params).minimize(
        model, x, y, sample_seeds=seeds
    )
    assert 0 < int((ref.norm <= eps * (1 + 1e-6)).sum()) < len(x)
    for rows in (96, 10_000):
        got = make_attack("fab-t", eps=eps, norm=norm, target_rows=rows, **params)
        res = got.search_within_eps(model, x, y, sample_seeds=seeds)
        torch.testing.assert_close(res.norm, ref.norm, atol=1e-12, rtol=0)
        torch.testing.assert_close(res.x_adv, ref.x_adv, atol=1e-12, rtol=0)
        full = make_attack("fab-t", eps=0, norm=norm, target_rows=rows, **params)
        res_min = full.minimize(model, x, y, sample_seeds=seeds)
        torch.testing.assert_close(res_min.norm, ref_min.norm, atol=1e-12, rtol=0)

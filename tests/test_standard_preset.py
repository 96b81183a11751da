"""featrob's `standard` preset against AutoAttack's standard version (its own code)."""

from __future__ import annotations

import logging
import time
import warnings

import pytest

from featrob.attacks import evaluate

from .attack_reference import LINF_EPS, reference_data, reference_model, robust_accuracy

pyautoattack = pytest.importorskip(
    "pyautoattack", reason="the AutoAttack reference comes with [test]"
)


# The whole standard preset twice (ours and AutoAttack's) takes ~2 min per eps on 2 cores:
# CI checks the larger eps, `pytest -m slow` the other ones.
@pytest.mark.parametrize(
    "eps", [pytest.param(e, marks=pytest.mark.slow) for e in LINF_EPS[:-1]] + [LINF_EPS[-1]]
)
def test_standard_preset_at_most_autoattack_plus_half_a_point(eps):
    model = reference_model()
    x, y, _ = reference_data()
    start = time.perf_counter()
    ours = evaluate(model, x, y, ["standard"], eps=eps, norm="linf")
    ours_s = time.perf_counter() - start
    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    reference = pyautoattack.AutoAttack(
        model, eps=eps, norm="Linf", seed=0, version="standard", device="cpu"
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_adv, _ = reference.run_standard_evaluation(x, y, batch_size=len(x))
    ref_s = time.perf_counter() - start
    ref_acc = robust_accuracy(model, x_adv, y)
    broken = [(s.label, s.broken) for s in ours.steps]
    print(
        f"eps {eps}: featrob {ours.robust_accuracy:.4f} in {ours_s:.1f} s, "
        f"AutoAttack {ref_acc:.4f} in {ref_s:.1f} s; broken per attack {broken}"
    )
    assert ours.robust_accuracy <= ref_acc + 0.005
    assert [s.label for s in ours.steps] == ["apgd-ce", "apgd-t", "fab-t", "square"]

"""Fast CPU tests of the Square Attack: contract, agreement with AutoAttack's own Square
(``pyautoattack``), batch-size invariance, query counts and configuration errors."""

from __future__ import annotations

import pytest
import torch

from featrob.attacks.square import SquareAttack, eta, p_selection
from featrob.errors import ConfigError
from featrob.testing import check_attack
from tests.attack_reference import (
    L2_EPS,
    LINF_EPS,
    reference_data,
    reference_model,
    robust_accuracy,
)

# The agreement test runs both implementations at 1000 queries, not AutoAttack's 5000: at
# 5000 the eight runs (4 budgets x 2 implementations) take minutes on a 2-core CPU. The
# budget is identical for both.
AGREEMENT_QUERIES = 1000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module (restored after it): the batches of 8x8 images
    are too small to gain from threads, and on a busy 2-core machine two spinning threads
    per process made these tests several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(one_thread):
    """The PGD-trained digits CNN and the 450 test images, labels and per-sample seeds."""
    return reference_model(), *reference_data()


# ---------------------------------------------------------------------------- contract
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_contract(norm, eps):
    check_attack(SquareAttack, eps=eps, norms=(norm,), n_queries=100)


# ---------------------------------------------------------------------------- reference
@pytest.mark.parametrize(
    ("norm", "eps"), [("linf", e) for e in LINF_EPS] + [("l2", e) for e in L2_EPS]
)
def test_agrees_with_autoattack_square(reference, norm, eps):
    from pyautoattack.square import SquareAttack as ReferenceSquare

    model, x, y, seeds = reference
    ref = ReferenceSquare(
        model,
        norm={"linf": "Linf", "l2": "L2"}[norm],
        eps=eps,
        n_queries=AGREEMENT_QUERIES,
        p_init=0.8,
        resc_schedule=False,
        seed=0,
        device="cpu",
    )
    ref_acc = robust_accuracy(model, ref.perturb(x, y), y)
    ours = SquareAttack(eps, norm, n_queries=AGREEMENT_QUERIES, p_init=0.8)
    x_adv = ours.perturb(model, x, y, sample_seeds=seeds)
    our_acc = robust_accuracy(model, x_adv, y)
    clean_acc = robust_accuracy(model, x, y)
    assert our_acc < clean_acc
    assert abs(our_acc - ref_acc) <= 0.01, f"featrob {our_acc:.4f} vs reference {ref_acc:.4f}"


@pytest.mark.parametrize("s", range(1, 20))
def test_eta_matches_autoattack(s):
    from pyautoattack.square import SquareAttack as ReferenceSquare

    ref = ReferenceSquare(lambda t: t, norm="L2", eps=1.0, device="cpu")
    torch.manual_seed(s)
    expected = ref.eta(s).double()  # randomly transposed by the reference
    ours = eta(s)
    assert torch.allclose(ours, expected, atol=1e-6) or torch.allclose(ours.T, expected, atol=1e-6)


def test_p_schedule_matches_autoattack():
    from pyautoattack.square import SquareAttack as ReferenceSquare

    ref = ReferenceSquare(lambda t: t, p_init=0.8, n_queries=5000, resc_schedule=False)
    for it in range(0, 10_050, 7):
        assert p_selection(0.8, it) == pytest.approx(ref.p_selection(it)), it
    assert p_selection(0.8, 10) == 0.8
    assert p_selection(0.8, 11) == 0.4
    assert p_selection(0.8, 9000) == pytest.approx(0.8 / 512)


# ---------------------------------------------------------------------------- batching
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_batch_size_invariance(reference, norm, eps):
    model, x, y, seeds = reference
    x, y, seeds = x[:60], y[:60], seeds[:60]
    attack = SquareAttack(eps, norm, n_queries=200)
    whole = attack.perturb(model, x, y, sample_seeds=seeds)
    whole_queries = attack.last_queries.clone()
    parts, part_queries = [], []
    for sl in (slice(0, 20), slice(20, 40), slice(40, 60)):
        parts.append(attack.perturb(model, x[sl], y[sl], sample_seeds=seeds[sl]))
        part_queries.append(attack.last_queries)
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(torch.cat(part_queries), whole_queries)
    # Different seeds give different trajectories.
    other = attack.perturb(model, x, y, sample_seeds=seeds + 1)
    assert not torch.equal(other, whole)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_chunked_draws_equal_per_iteration_draws(reference, norm, eps, monkeypatch):
    """Random numbers drawn for many iterations at once (and windows built per chunk) give
    the points and query counts of one draw per iteration, whatever the chunk size, also
    when samples break in the middle of a chunk."""
    import featrob.attacks.square as square

    model, x, y, seeds = reference
    x, y, seeds = x[:60], y[:60], seeds[:60]
    runs = []
    for chunk in (1, 7, 32):
        monkeypatch.setattr(square, "_CHUNK", chunk)
        attack = SquareAttack(eps, norm, n_queries=150)
        runs.append((attack.perturb(model, x, y, sample_seeds=seeds), attack.last_queries))
    broke = runs[0][1] < 151
    assert 0 < int(broke.sum()) < 60  # some samples leave mid-chunk, others run to the end
    for adv, queries in runs[1:]:
        assert torch.equal(adv, runs[0][0]) and torch.equal(queries, runs[0][1])


def test_many_streams_in_one_draw_equal_one_draw_each():
    from featrob.seeding import random_bits, sample_seeds, uniform

    seeds = sample_seeds(3, torch.arange(5))
    streams = [0, 9, (1 << 40) | 17]
    together = uniform(seeds, (2, 3), streams)
    assert together.shape == (5, 3, 2, 3)
    for k, stream in enumerate(streams):
        assert torch.equal(together[:, k], uniform(seeds, (2, 3), stream))
        assert torch.equal(
            random_bits(seeds, (4,), streams)[:, k], random_bits(seeds, (4,), stream)
        )


# ---------------------------------------------------------------------------- queries
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_query_counts(reference, norm):
    model, x, y, seeds = reference
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert wrong.any()
    # Every misclassified sample plus some correct ones.
    pick = torch.cat([wrong.nonzero().squeeze(1), (~wrong).nonzero().squeeze(1)[:30]])
    x, y, seeds, wrong = x[pick], y[pick], seeds[pick], wrong[pick]
    n = 50
    attack = SquareAttack(0.1 if norm == "linf" else 1.0, norm, n_queries=n)
    x_adv = attack.perturb(model, x, y, sample_seeds=seeds)
    q = attack.last_queries
    assert q.shape == (len(x),) and q.dtype == torch.int64
    assert bool((q[wrong] == 1).all())
    assert torch.equal(x_adv[wrong], x[wrong])
    assert bool((q >= 1).all()) and bool((q <= n + 1).all())
    with torch.no_grad():
        still_robust = model(x_adv).argmax(1) == y
    assert bool((q[still_robust] == n + 1).all())  # the full budget: start + n iterations

    restarts = SquareAttack(0.1 if norm == "linf" else 1.0, norm, n_queries=n, restarts=2)
    restarts.perturb(model, x, y, sample_seeds=seeds)
    assert bool((restarts.last_queries <= 2 * (n + 1)).all())
    assert bool((restarts.last_queries[wrong] == 1).all())


def test_eps_zero_returns_input(reference):
    model, x, y, seeds = reference
    attack = SquareAttack(0.0, "linf", n_queries=10)
    assert torch.equal(attack.perturb(model, x[:5], y[:5], sample_seeds=seeds[:5]), x[:5])
    assert torch.equal(attack.last_queries, torch.zeros(5, dtype=torch.int64))


# ---------------------------------------------------------------------------- errors
def test_loss_is_rejected(reference):
    from featrob.attacks.losses import cross_entropy

    model, x, y, _ = reference
    with pytest.raises(ConfigError, match="margin"):
        SquareAttack(0.1).perturb(model, x[:4], y[:4], loss=cross_entropy)


def test_unknown_parameter_suggests_close_match():
    with pytest.raises(ConfigError, match="did you mean 'n_queries'"):
        SquareAttack(0.1, n_querys=100)


@pytest.mark.parametrize(
    "params",
    [
        {"n_queries": -1},
        {"n_queries": 2.5},
        {"restarts": 0},
        {"p_init": 0},
        {"p_init": 1.5},
        {"p_init": float("nan")},
        {"p_init": "0.8"},
    ],
)
def test_bad_values_raise(params):
    with pytest.raises(ConfigError):
        SquareAttack(0.1, **params)


def test_rejects_non_image_input_and_l1():
    with pytest.raises(ConfigError, match="images"):
        SquareAttack(0.1).perturb(lambda t: t, torch.rand(3, 64), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError):
        SquareAttack(0.1, norm="l1")


def test_spec_and_flags():
    attack = SquareAttack(0.5, "L2", seed=3, n_queries=100.0)
    assert attack.uses_gradients is False
    assert attack.spec()["params"] == {"n_queries": 100, "p_init": 0.8, "restarts": 1}
    assert attack.norm == "l2"

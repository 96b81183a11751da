"""FAB's exact projection: Newton's water level against the sort it replaced, on real inputs.

Runs FAB-T on the PGD-trained small CNN of the standard-preset benchmark (MNIST subset,
eps 0.1; digits with ``--quick``), records the Linf projection problems of its steps (both
projections of every ``--every``-th step, the current and the original points, each onto
the linearised boundary),
then times, side by side in turns (:func:`benchmarks.common.interleaved_times`):
:func:`~featrob.attacks.fab_projections.water_level` (Newton's method) and
:func:`~featrob.attacks.fab_projections.water_level_sorted` on the same problems, and the
whole ``project_linf`` with each. Prints the times, their ratio, the largest relative
difference of the levels and how many Newton steps the rows needed.

Usage::

    python -m benchmarks.fab_projection                 # about 1 minute, model cached
    python -m benchmarks.fab_projection --quick         # digits, a few seconds
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

import featrob.attacks.fab_projections as fp
from benchmarks.common import SHARED, interleaved_times, machine, trained_model, write_json
from featrob.plugins import get_plugin_host


def _capture(net, x, y, eps: float, every: int, steps: int) -> list[tuple[torch.Tensor, ...]]:
    """The projection problems ``(t, w, b)`` of one FAB-T run (every ``every``-th call)."""
    import featrob.attacks.fab as fab

    problems: list[tuple[torch.Tensor, ...]] = []
    calls = 0
    inner = fab.linf_step

    def record(t, w_sign, w_abs, c):
        nonlocal calls
        if (calls // 2) % every == 0:  # both projections (iterate, x0) of a step
            w = w_sign * w_abs
            problems.append((t.clone(), w, c + torch.linalg.vecdot(w, t)))
        calls += 1
        return inner(t, w_sign, w_abs, c)

    attack = get_plugin_host().attacks.get("fab-t")(eps=eps, n_target_classes=2, steps=steps)
    fab.linf_step = record  # benchmark instrumentation, not an API
    try:
        attack.perturb(net, x, y)
    finally:
        fab.linf_step = inner
    return problems


def newton_steps(a: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Newton updates each row needs until its free set stops changing ``[N]``."""
    r = r * a.sign()
    lam = torch.zeros_like(c)
    count = None
    need = torch.zeros_like(c, dtype=torch.int64)
    for step in range(64):
        level = torch.minimum(lam[:, None], r)
        free = (r - level).sign()
        size = free.sum(1)
        if count is not None:
            need = torch.where((size != count) & (need == step - 1), step, need)
        count = size
        h = torch.linalg.vecdot(a, level)
        slope = torch.linalg.vecdot(a, free)
        lam = torch.where(slope > 0, lam + (c - h) / slope.clamp_min(1e-30), lam)
    return need + 1


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it prints (also written with ``--json``)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, 32 images, 20 steps")
    parser.add_argument(
        "--every", type=int, default=10, help="record the projections of every k-th step"
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cpu = torch.device("cpu")
    if args.quick:
        net, data = trained_model("small-cnn", "digits", cpu, 3, "pgd", 0.1)
        n, eps, steps = 32, 0.05, 20
    else:
        dataset = f"npz:{SHARED / 'mnist_subset.npz'}"
        net, data = trained_model("small-cnn", dataset, cpu, 10, "pgd", 0.2)
        n, eps, steps = 256, 0.1, 100
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = data.test.balanced_subset(max(1, 4 * n // data.num_classes), seed=0)
    x, y = test.float_images(), test.labels
    with torch.no_grad():
        keep = net(x).argmax(1) == y
    x, y = x[keep][:n], y[keep][:n]
    problems = _capture(net, x, y, eps, args.every, steps)
    oriented = [fp._oriented(*p)[1:] for p in problems]  # (|w|, room, c) per problem
    levels = {
        "newton": lambda: [fp.water_level(a, r, c) for a, r, c in oriented],
        "sort": lambda: [fp.water_level_sorted(a, r, c) for a, r, c in oriented],
    }
    times, results = interleaved_times(levels, args.repeats)
    fin = [torch.isfinite(s) for s in results["sort"]]
    diff = max(
        float(((nw - s).abs() / s.abs().clamp_min(1e-12))[f].amax()) if bool(f.any()) else 0.0
        for nw, s, f in zip(results["newton"], results["sort"], fin, strict=True)
    )
    inf_agree = all(
        torch.equal(torch.isinf(nw), torch.isinf(s))
        for nw, s in zip(results["newton"], results["sort"], strict=True)
    )
    need = torch.cat([newton_steps(a, r, c) for a, r, c in oriented])
    hist = torch.bincount(need).tolist()
    rows = problems[0][0].shape
    per_call = {k: v / len(problems) * 1e3 for k, v in times.items()}
    out = {
        "machine": machine(),
        "quick": args.quick,
        "problems": len(problems),
        "rows_x_dims": list(rows),
        "ms_per_call": per_call,
        "newton_over_sort": times["newton"] / times["sort"],
        "max_relative_difference": diff,
        "unreachable_rows_agree": inf_agree,
        "newton_steps_histogram": {str(k): v for k, v in enumerate(hist) if v},
    }
    print(
        f"FAB-T Linf projections: {len(problems)} problems of {rows[0]} x {rows[1]} "
        f"(threads {torch.get_num_threads()})"
    )
    print(f"  water level, Newton: {per_call['newton']:.2f} ms per call")
    print(f"  water level, sort:   {per_call['sort']:.2f} ms per call")
    print(f"  Newton / sort: {out['newton_over_sort']:.2f}")
    print(f"  largest relative difference of the levels: {diff:.2e}; inf rows agree: {inf_agree}")
    print(f"  Newton updates per row (steps: rows): {out['newton_steps_histogram']}")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

"""featrob's ``standard`` preset against pyautoattack's AutoAttack, attack by attack.

Same images, eps and model on both sides: a normally trained medium-cnn on the CIFAR-10
subset (Linf 8/255: most samples break in APGD-CE) and a small-cnn PGD-trained on the MNIST
subset (trained at eps 0.2, attacked at 0.1: most samples survive all four attacks). Per model
a table of, per attack and in total: featrob's time (``Evaluation.steps[i].seconds``; total:
the wall time of ``featrob.evaluate(..., ["standard"])``) with and without early exit
(``early_exit=false`` specs, skipped where the attacks lack it); pyautoattack's (its
``perturb`` methods timed; total: ``run_standard_evaluation``) and the ratio; samples attacked
and robust after, each side; and the floor, raw passes the survivors cannot avoid, timed on a
batch of their size (APGD-CE: steps + 1 forward+backward passes; APGD-T: that per target;
FAB-T: per target and step a forward+backward and a forward; Square: a forward of the attacked
batch, then one of the survivors per query). Then the checks (equal robust flags with and
without early exit; robust accuracy beside pyautoattack's, which draws other random numbers)
and where featrob's time goes: each model call of the early-exit run, priced as a raw pass of
its size (interpolated between powers of two); the rest is projections and bookkeeping.
With ``--repeats k`` featrob's early-exit run is made k times (flags must agree) and its
times are the medians: single timings on a shared 2-core machine move by 5-20 % between
runs, as much as the differences the floor ratio is meant to show.

Usage::

    python -m benchmarks.attacks --preset standard    # both models: 9 min on 2 CPU cores
    python -m benchmarks.attacks_standard --models pgd --n 64 --json standard.json
    python -m benchmarks.attacks_standard --quick     # digits, tiny budget: 10-40 s, smoke test
    python -m benchmarks.attacks --preset standard --repeats 3    # featrob's median of 3

9 minutes (4.4 normal, 4.5 PGD-trained; models cached) with the two cores to itself; 17.6
while other processes shared them, which skews single timings several-fold (oversubscribed
threads): check the other processes' CPU use each model prints before trusting a ratio.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import SHARED, benchmark_parser, machine, trained_model, write_json
from featrob.attacks.protocol import Evaluation, evaluate, resolve_plans

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclass
class Setup:
    """One model of the benchmark: what to train, and the threat model to attack it in."""

    model: str
    dataset: str
    method: str
    train_eps: float
    epochs: int
    eps: float
    n: int


@dataclass
class Budget:
    """Steps per APGD/FAB run, target classes, Square queries (AutoAttack's by default)."""

    steps: int = 100
    targets: int = 9
    queries: int = 5000

    def specs(self, early_exit: set[str] | None = None) -> list[str]:
        """featrob specs: ``["standard"]`` for the full budget with defaults, else one per
        attack, with ``early_exit=false`` for the attacks named in ``early_exit``."""
        if early_exit is None and self == Budget():
            return ["standard"]
        params = {"apgd-ce": f"steps={self.steps}", "square": f"n_queries={self.queries}"}
        params["apgd-t"] = params["fab-t"] = f"steps={self.steps}, n_target_classes={self.targets}"
        off = early_exit or set()
        return [f"{a}({params[a]}{', early_exit=false' if a in off else ''})" for a in ATTACKS]


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)


def _foreign_cpu() -> float:
    """CPU seconds every other process has used so far (Linux ``/proc/stat``; else NaN)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    mine = os.times()
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK") - mine.user - mine.system


def early_exit_attacks() -> set[str]:
    """The gradient attacks of the preset that take an ``early_exit`` parameter."""
    from featrob.plugins import get_plugin_host

    registry = get_plugin_host().attacks
    return {a for a in ATTACKS[:3] if "early_exit" in registry.get(a).defaults}


class CallLog(nn.Module):
    """The model, logging each call's batch size and whether it builds a graph, per attack."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.phase = net, "checks"
        self.calls: dict[str, list[tuple[int, bool]]] = defaultdict(list)

    def forward(self, x: Tensor) -> Tensor:
        """Log the call, then run the model."""
        self.calls[self.phase].append((len(x), torch.is_grad_enabled() and x.requires_grad))
        return self.net(x)

    def tag(self, attack: Any) -> None:
        """Make ``attack.perturb`` log its model calls under the attack's name."""
        inner = attack.perturb

        def perturb(*args: Any, **kwargs: Any) -> Tensor:
            self.phase = attack.name
            try:
                return inner(*args, **kwargs)
            finally:
                self.phase = "protocol"

        attack.perturb = perturb


class PassCost:
    """Seconds of one raw forward, or forward+backward, pass on ``m`` samples, measured once
    per size, in chunks of ``batch_size``."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int, sync) -> None:
        self.model, self.x, self.y, self.bs, self.sync = model, x, y, batch_size, sync
        self.cache: dict[tuple[bool, int], float] = {}

    def _measure(self, grad: bool, m: int) -> float:
        if (grad, m) not in self.cache:
            x, y = self.x[:m], self.y[:m]

            def one() -> None:
                if grad:
                    x_in = x.detach().clone().requires_grad_(True)
                    loss = F.cross_entropy(self.model(x_in), y, reduction="sum")
                    torch.autograd.grad(loss, x_in)
                else:
                    with torch.no_grad():
                        self.model(x)

            one()  # warm-up, then the median of 5 timings of k passes (k: >= 20 ms)
            k, times = 1, []
            while len(times) < 5:
                self.sync()
                start = time.perf_counter()
                for _ in range(k):
                    one()
                self.sync()
                elapsed = time.perf_counter() - start
                if elapsed < 0.02 and k < 64 and not times:
                    k *= 2
                    continue
                times.append(elapsed / k)
            self.cache[grad, m] = statistics.median(times)
        return self.cache[grad, m]

    def exact(self, grad: bool, m: int) -> float:
        """One pass over ``m`` samples, in chunks of the batch size."""
        full, rest = divmod(m, self.bs)
        total = full * self._measure(grad, self.bs) if full else 0.0
        return total + (self._measure(grad, rest) if rest else 0.0)

    def estimate(self, grad: bool, m: int) -> float:
        """One pass over ``m`` samples (at most a batch), interpolated between powers of 2."""
        lo = 1 << (max(m, 1).bit_length() - 1)
        hi = min(2 * lo, len(self.x))
        if m <= lo or hi <= lo:
            return self._measure(grad, min(m, len(self.x))) if m else 0.0
        t_lo, t_hi = self._measure(grad, lo), self._measure(grad, hi)
        return t_lo + (t_hi - t_lo) * (m - lo) / (hi - lo)


def run_featrob(model, x, y, idx, specs, eps, bs, sync, log: CallLog | None = None):
    """One ``featrob.evaluate`` of ``specs``: (evaluation, wall seconds, plans)."""
    plans = resolve_plans(specs, eps=eps, norm="linf", seed=0)
    if log is not None:
        for plan in plans:
            log.tag(plan.attack)
    sync()
    start = time.perf_counter()
    ev = evaluate(log or model, x, y, plans, eps=eps, norm="linf", indices=idx, batch_size=bs)
    sync()
    return ev, time.perf_counter() - start, plans


def run_reference(model, x, y, eps, bs, budget: Budget, device, sync) -> dict[str, Any]:
    """pyautoattack's standard version with each attack's ``perturb`` timed."""
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=device, seed=0)
    aa.verbose = False
    for apgd in (aa.apgd, aa.apgd_targeted):
        apgd.n_iter = apgd.n_iter_orig = budget.steps  # and its checkpoints (set in __init__)
        checks = (max(int(f * budget.steps), 1) for f in (0.22, 0.06, 0.03))
        apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = checks
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = budget.targets
    aa.fab.n_iter, aa.square.n_queries = budget.steps, budget.queries
    per: dict[str, dict[str, float]] = {a: {"s": 0.0, "attacked": 0, "broken": 0} for a in ATTACKS}

    def timed(obj: Any, name: str) -> None:
        inner = obj.perturb

        def perturb(xb: Tensor, yb: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            sync()
            start = time.perf_counter()
            adv = inner(xb, yb, *args, **kwargs)
            sync()
            per[name]["s"] += time.perf_counter() - start
            with torch.no_grad():
                per[name]["broken"] += int((model(adv).argmax(1) != yb).sum())
            per[name]["attacked"] += len(xb)
            return adv

        obj.perturb = perturb

    for obj, name in zip((aa.apgd, aa.apgd_targeted, aa.fab, aa.square), ATTACKS, strict=True):
        timed(obj, name)
    sync()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, y_adv = aa.run_standard_evaluation(x, y, batch_size=bs)
    sync()
    return {"total_s": time.perf_counter() - start, "per": per, "robust": (y_adv == y).cpu()}


def floors(cost: PassCost, plans, ev: Evaluation, n_classes: int) -> dict[str, float]:
    """Seconds of the passes that each attack's survivors cannot avoid."""
    out = {}
    for plan, step in zip(plans, ev.steps, strict=True):
        p, name = plan.attack.params, plan.attack.name
        alive = round(step.robust_after * len(ev.robust))
        targets = min(p.get("n_target_classes", 1), n_classes - 1)
        if name in ("apgd-ce", "apgd-t"):
            out[name] = targets * (p["steps"] + 1) * cost.exact(True, alive)
        elif name == "fab-t":
            out[name] = targets * p["steps"] * (cost.exact(True, alive) + cost.exact(False, alive))
        else:
            fwd = cost.exact(False, step.attacked)
            out[name] = fwd + p["n_queries"] * cost.exact(False, alive)
    return out


def breakdown(cost: PassCost, log: CallLog, ev: Evaluation) -> dict[str, dict[str, float]]:
    """Per attack: estimated seconds in gradient passes, in plain forwards, and the rest."""
    out = {}
    for step in ev.steps:
        calls = log.calls.get(step.label, [])
        grad = sum(cost.estimate(True, m) for m, g in calls if g)
        fwd = sum(cost.estimate(False, m) for m, g in calls if not g)
        out[step.label] = {
            "seconds": step.seconds, "gradient_passes_s": grad, "forward_s": fwd,
            "n_gradient_passes": sum(g for _, g in calls), "rest_s": step.seconds - grad - fwd,
            "n_forwards": sum(not g for _, g in calls),
        }  # fmt: skip
    return out


def _row(label, ours, off, ref_s, attacked, alive, ref_attacked, ref_alive, floor):
    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    return {
        "attack": label, "featrob_s": ours, "featrob_no_exit_s": off, "reference_s": ref_s,
        "ratio_vs_reference": ratio(ours, ref_s), "attacked": attacked, "robust_after": alive,
        "reference_attacked": ref_attacked, "reference_robust_after": ref_alive,
        "floor_s": floor, "ratio_vs_floor": ratio(ours, floor),
    }  # fmt: skip


def _print_rows(rows: list[dict[str, Any]]) -> None:
    def num(v: float | None, width: int) -> str:
        return f"{'-':>{width}}" if v is None else f"{v:{width}.2f}"

    print(
        f"{'attack':8} {'featrob s':>9} {'no exit s':>9} {'ref s':>8} {'/ref':>5} "
        f"{'attacked':>9} {'robust after':>12} {'floor s':>8} {'/floor':>6}"
    )
    for r in rows:
        print(
            f"{r['attack']:8} {num(r['featrob_s'], 9)} {num(r['featrob_no_exit_s'], 9)} "
            f"{num(r['reference_s'], 8)} {num(r['ratio_vs_reference'], 5)} "
            f"{r['attacked']:>4}/{r['reference_attacked']:<4} "
            f"{r['robust_after']:>6}/{r['reference_robust_after']:<5} "
            f"{num(r['floor_s'], 8)} {num(r['ratio_vs_floor'], 6)}"
        )
    print("(attacked, robust after: featrob/pyautoattack; no exit: early_exit=false specs)")


def _print_split(split: dict[str, dict[str, float]]) -> None:
    print("where featrob's time goes (model calls of the early-exit run, priced as raw passes):")
    print(f"  {'attack':8} {'total s':>8} {'gradient passes':>17} {'forwards':>17} {'rest':>13}")
    for label, b in split.items():
        share = b["rest_s"] / b["seconds"] if b["seconds"] else 0.0
        print(
            f"  {label:8} {b['seconds']:8.2f} {b['gradient_passes_s']:8.2f} s "
            f"({b['n_gradient_passes']:5d}) {b['forward_s']:8.2f} s ({b['n_forwards']:5d}) "
            f"{b['rest_s']:7.2f} s {share:4.0%}"
        )


def bench_model(kind: str, setup: Setup, budget: Budget, args, device) -> dict[str, Any]:
    """Both featrob runs, pyautoattack and the floors on one model; prints its tables."""
    sync, t0, cpu0 = _sync(device), time.perf_counter(), _foreign_cpu()
    net, data = trained_model(
        setup.model, setup.dataset, device, setup.epochs, setup.method, setup.train_eps
    )
    net.eval()
    with warnings.catch_warnings():  # "fewer than k samples in some class": take them all
        warnings.simplefilter("ignore")
        test = data.test.balanced_subset(max(1, 4 * setup.n // data.num_classes), seed=0)
    with torch.no_grad():
        x_all = test.float_images().to(device)
        correct = (net(x_all).argmax(1) == test.labels.to(device)).cpu()
    keep = torch.nonzero(correct).squeeze(1)[: setup.n]
    x, y, idx = x_all[keep.to(device)], test.labels[keep].to(device), test.indices[keep]
    n, bs, eps = len(x), args.batch_size or len(x), setup.eps
    print(
        f"\n== {kind}: {setup.model} on {setup.dataset} ({setup.method} training, "
        f"train eps {setup.train_eps:g}): clean accuracy {float(correct.double().mean()):.4f}; "
        f"{n} correctly classified images, Linf eps {eps:.5f}, batch {bs}, device {device}"
    )
    tiny = Budget(2, 1, 2)  # warm-up: first-call costs hit neither side's timings
    run_featrob(net, x[:4], y[:4], idx[:4], tiny.specs(set()), eps, bs, sync)
    run_reference(net, x[:4], y[:4], eps, bs, tiny, device, sync)
    log = CallLog(net).eval()
    ev, ours_s, plans = run_featrob(net, x, y, idx, budget.specs(), eps, bs, sync, log)
    runs = [(ours_s, [st.seconds for st in ev.steps])]
    for _ in range(args.repeats - 1):  # the same run again: its median is reported
        ev_again, again_s, _ = run_featrob(net, x, y, idx, budget.specs(), eps, bs, sync)
        if not torch.equal(ev_again.robust, ev.robust):
            raise RuntimeError("a repeated featrob run gave other robust flags")
        runs.append((again_s, [st.seconds for st in ev_again.steps]))
    ours_s = statistics.median(r[0] for r in runs)
    step_s = [statistics.median(r[1][i] for r in runs) for i in range(len(ev.steps))]
    ref = run_reference(net, x, y, eps, bs, budget, device, sync)
    exits = early_exit_attacks()
    ev_off, off_s = None, None
    if exits:
        ev_off, off_s, _ = run_featrob(net, x, y, idx, budget.specs(exits), eps, bs, sync)
    else:
        print("note: no attack takes early_exit yet; the run without early exit is skipped")
    if exits and exits != {"apgd-ce", "apgd-t", "fab-t"}:
        print(f"note: only {', '.join(sorted(exits))} take early_exit; the others run as before")
    cost = PassCost(net, x, y, bs, sync)
    floor = floors(cost, plans, ev, int(data.num_classes))
    rows = []
    for i, step in enumerate(ev.steps):
        r = ref["per"][step.label]
        off = ev_off.steps[i].seconds if ev_off else None
        alive, ref_alive = round(step.robust_after * n), int(r["attacked"] - r["broken"])
        rows.append(_row(step.label, step_s[i], off, r["s"], step.attacked, alive,
                         int(r["attacked"]), ref_alive, floor[step.label]))  # fmt: skip
    ours_robust, ref_robust = int(ev.robust.sum()), int(ref["robust"].sum())
    total = _row("total", ours_s, off_s, ref["total_s"], n, ours_robust, n, ref_robust,
                 sum(floor.values()))  # fmt: skip
    _print_rows([*rows, total])
    result: dict[str, Any] = {"setup": vars(setup), "n": n, "batch_size": bs, "rows": rows,
                              "total": total}  # fmt: skip
    if len(runs) > 1:
        totals = sorted(r[0] for r in runs)
        floor_total = sum(floor.values())
        print(f"featrob: median of {len(runs)} runs (identical flags); total "
              f"{', '.join(f'{t:.2f}' for t in totals)} s = "
              f"{', '.join(f'{t / floor_total:.2f}' for t in totals)}x the floor")  # fmt: skip
        result["featrob_runs"] = [{"total_s": t, "steps_s": st} for t, st in runs]
    if ev_off is not None:
        differ = int((ev.robust != ev_off.robust).sum())
        print(f"identical robust flags: {differ == 0} ({differ} samples differ)")
        result["identical_robust_flags"], result["robust_flags_differ"] = differ == 0, differ
    both = int((ev.robust & ref["robust"]).sum())
    print(
        f"robust accuracy: featrob {ours_robust / n:.4f} ({ours_robust}/{n}), pyautoattack "
        f"{ref_robust / n:.4f} ({ref_robust}/{n}): featrob {ours_robust - ref_robust:+d} "
        f"samples, {both} robust on both sides (the two draw different random numbers)"
    )
    result.update(robust_accuracy=ours_robust / n, reference_robust_accuracy=ref_robust / n,
                  robust_on_both=both, breakdown=breakdown(cost, log, ev))  # fmt: skip
    _print_split(result["breakdown"])
    if kind == "normal":
        goals = {"total / reference <= 0.5": total["ratio_vs_reference"] <= 0.5}
        goals["APGD-CE / reference <= 0.5"] = (rows[0]["ratio_vs_reference"] or 9) <= 0.5
    else:
        goals = {"total / reference <= 0.8": total["ratio_vs_reference"] <= 0.8}
        goals["total / floor <= 1.15"] = (total["ratio_vs_floor"] or 9) <= 1.15
    print("targets: " + "; ".join(f"{g}: {'met' if ok else 'MISSED'}" for g, ok in goals.items()))
    result["targets"], result["seconds"] = goals, time.perf_counter() - t0
    result["other_processes_cores"] = (_foreign_cpu() - cpu0) / result["seconds"]
    print(f"{result['seconds']:.0f} s; other processes used {result['other_processes_cores']:.2f} "
          f"of {os.cpu_count()} cores meanwhile (they skew every time)")  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the standard-preset comparison on the chosen models and print the tables."""
    parser = benchmark_parser(__doc__, "medium-cnn", "cifar10_subset.npz")
    mnist = SHARED / "mnist_subset.npz"
    parser.add_argument("--pgd-model", default="small-cnn", help="the PGD-trained model")
    parser.add_argument("--pgd-dataset", default=f"npz:{mnist}" if mnist.exists() else "digits")
    parser.add_argument("--n", type=int, default=None, help="images per model (256)")
    parser.add_argument("--eps", type=float, default=None, help="for every model (8/255, 0.1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: all at once")
    parser.add_argument("--models", default="normal,pgd", help="comma-separated: normal, pgd")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="digits, 32 images, tiny budget")
    parser.add_argument(
        "--repeats", type=int, default=1, help="featrob runs per model; the median is shown"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = Budget(10, 3, 100) if args.quick else Budget()
    setups = {
        "normal": Setup(args.model, args.dataset, "standard", 8 / 255, 10, 8 / 255, 256),
        "pgd": Setup(args.pgd_model, args.pgd_dataset, "pgd", 0.2, 10, 0.1, 256),
    }
    if args.quick:
        setups = {
            "normal": Setup("small-cnn", "digits", "standard", 8 / 255, 3, 8 / 255, 32),
            "pgd": Setup("small-cnn", "digits", "pgd", 0.1, 3, 0.05, 32),
        }
    for s in setups.values():
        s.n, s.eps = args.n or s.n, args.eps or s.eps
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    if not kinds or set(kinds) - set(setups):
        parser.error(f"--models: choose from {', '.join(setups)}")
    device = torch.device(args.device)
    print(
        f"featrob standard preset vs pyautoattack: steps {budget.steps}, target classes "
        f"{budget.targets}, Square queries {budget.queries}; threads {torch.get_num_threads()}; "
        f"early_exit in: {', '.join(sorted(early_exit_attacks())) or 'none'}"
    )
    results = {k: bench_model(k, setups[k], budget, args, device) for k in kinds}
    payload = {"benchmark": "attacks_standard", "args": vars(args), "budget": vars(budget),
               "machine": machine(), "models": results}  # fmt: skip
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()

"""featrob's APGD-CE and Square against AutoAttack's own code and the raw cost of the model.

Side by side in one run, on the same model, samples and budget:

* wall time of featrob vs ``pyautoattack`` (target: featrob / reference <= 0.8 at equal
  robust accuracy), both on the whole budget (``early_exit=False``), and featrob's APGD-CE
  with early exit beside them;
* wall time of featrob vs the forward(+backward) passes the attack cannot avoid: APGD-CE
  needs ``steps + 1`` forward-backward passes on the whole batch (target: <= 1.15); Square
  needs one forward pass on the still-robust samples per query (replayed with the same
  active-set sizes featrob's run had).

Usage::

    python -m benchmarks.attacks                        # medium-cnn on the CIFAR-10 subset
    python -m benchmarks.attacks --quick                # small and fast (CI keeps it alive)
    python -m benchmarks.attacks --device cuda --amp bf16 --json results.json
    python -m benchmarks.attacks --preset standard      # the whole standard preset, two models

``--preset standard`` runs :mod:`benchmarks.attacks_standard` (its own options follow) and
returns its payload.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import (
    benchmark_parser,
    interleaved_times,
    machine,
    trained_model,
    write_json,
)
from featrob.attacks.apgd import APGD
from featrob.attacks.square import SquareAttack
from featrob.extract import AutocastForward
from featrob.seeding import sample_seeds


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def _sync(device: torch.device):
    return (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)


def bench_apgd(model, x, y, seeds, eps, steps, repeats, sync) -> dict[str, Any]:
    """featrob APGD-CE vs pyautoattack APGD-CE vs (steps + 1) forward-backward passes."""
    from pyautoattack.autopgd_base import APGDAttack

    # the full budget on every sample (as the reference and the floor do), and early exit
    ours = APGD(eps=eps, norm="linf", steps=steps, early_exit=False)
    early = APGD(eps=eps, norm="linf", steps=steps)
    ref = APGDAttack(model, n_iter=steps, norm="Linf", eps=eps, seed=0, loss="ce", device=x.device)

    def forward_backward_passes():
        for _ in range(steps + 1):
            x_in = x.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(x_in), y, reduction="sum")
            torch.autograd.grad(loss, x_in)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times, out = interleaved_times(
            {
                "featrob": lambda: ours.perturb(model, x, y, sample_seeds=seeds),
                "early_exit": lambda: early.perturb(model, x, y, sample_seeds=seeds),
                "reference": lambda: ref.perturb(x, y),
                "raw": forward_backward_passes,
            },
            repeats,
            sync,
        )
    return {
        "attack": "apgd-ce",
        "steps": steps,
        "featrob_s": times["featrob"],
        "reference_s": times["reference"],
        "raw_s": times["raw"],
        "featrob_robust_acc": _accuracy(model, out["featrob"], y),
        "reference_robust_acc": _accuracy(model, out["reference"], y),
        "ratio_vs_reference": times["featrob"] / times["reference"],
        "ratio_vs_raw": times["featrob"] / times["raw"],
        "early_exit_s": times["early_exit"],
        "early_exit_robust_acc": _accuracy(model, out["early_exit"], y),
        "early_exit_vs_reference": times["early_exit"] / times["reference"],
    }


def bench_square(model, x, y, seeds, eps, queries, repeats, sync) -> dict[str, Any]:
    """featrob Square vs pyautoattack Square vs the forward passes on the active samples."""
    from pyautoattack.square import SquareAttack as RefSquare

    ours = SquareAttack(eps=eps, norm="linf", n_queries=queries)
    ref = RefSquare(
        model,
        norm="Linf",
        eps=eps,
        n_queries=queries,
        p_init=0.8,
        seed=0,
        resc_schedule=False,
        device=x.device,
    )
    ours.perturb(model, x, y, sample_seeds=seeds)
    # the forward passes featrob's run needed: the start, then one per still-robust sample
    # per iteration (replayed with the same active-set sizes)
    iterations = (ours.last_queries.cpu() - 1).clamp(min=0)
    active = [(iterations > t).sum().item() for t in range(queries)]

    @torch.no_grad()
    def replay():
        model(x)
        for m in active:
            if m:
                model(x[:m])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times, out = interleaved_times(
            {
                "featrob": lambda: ours.perturb(model, x, y, sample_seeds=seeds),
                "reference": lambda: ref.perturb(x, y),
                "raw": replay,
            },
            repeats,
            sync,
        )
    return {
        "attack": "square",
        "queries": queries,
        "featrob_s": times["featrob"],
        "reference_s": times["reference"],
        "raw_s": times["raw"],
        "featrob_robust_acc": _accuracy(model, out["featrob"], y),
        "reference_robust_acc": _accuracy(model, out["reference"], y),
        "ratio_vs_reference": times["featrob"] / times["reference"],
        "ratio_vs_raw": times["featrob"] / times["raw"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the attack benchmarks and print the ratios (``--preset standard``: see above)."""
    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument("--preset", choices=["standard"], default=None)
    known, rest = preset.parse_known_args(argv)
    if known.preset == "standard":
        from benchmarks.attacks_standard import main as standard_main

        return standard_main(rest)
    parser = benchmark_parser(__doc__, "medium-cnn", "cifar10_subset.npz")
    parser.add_argument(
        "--preset",
        choices=["standard"],
        default=None,
        help="standard: featrob's standard preset vs AutoAttack (benchmarks.attacks_standard)",
    )
    parser.add_argument("--n", type=int, default=256, help="test images (balanced)")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of the model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    parser.add_argument(
        "--quick", action="store_true", help="digits, 64 images, 20 steps, 100 queries"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.model, args.n, args.steps, args.queries, args.repeats = (
            "digits",
            "small-cnn",
            64,
            20,
            100,
            1,
        )
    device = torch.device(args.device)
    net, data = trained_model(args.model, args.dataset, device, epochs=args.epochs)
    test = data.test.balanced_subset(max(1, 4 * args.n // data.num_classes), seed=0)
    model = net if args.amp is None else AutocastForward(net, device, args.amp).eval()
    with torch.no_grad():
        x_all = test.float_images().to(device)
        correct = (model(x_all).argmax(1) == test.labels.to(device)).cpu()
    clean = float(correct.double().mean())
    # Both implementations attack only correctly classified inputs (AutoAttack skips the
    # others): benchmark on the first n of those, so every contender does the same work.
    keep = torch.nonzero(correct).squeeze(1)[: args.n]
    x, y = x_all[keep.to(device)], test.labels[keep].to(device)
    seeds = sample_seeds(0, test.indices[keep]).to(device)
    sync = _sync(device)
    print(
        f"{args.model} on {args.dataset}: clean accuracy {clean:.4f}; {len(x)} correctly "
        f"classified images attacked, Linf eps {args.eps:.5f}, device {device}, amp {args.amp}, "
        f"threads {torch.get_num_threads()}"
    )
    rows = [
        bench_apgd(model, x, y, seeds, args.eps, args.steps, args.repeats, sync),
        bench_square(model, x, y, seeds, args.eps, args.queries, args.repeats, sync),
    ]
    print(
        f"{'attack':10} {'featrob s':>10} {'reference s':>12} {'raw s':>8} {'vs ref':>7} "
        f"{'vs raw':>7} {'acc ours':>9} {'acc ref':>8}"
    )
    for r in rows:
        raw = r["raw_s"]
        print(
            f"{r['attack']:10} {r['featrob_s']:10.3f} {r['reference_s']:12.3f} {raw:8.3f} "
            f"{r['ratio_vs_reference']:7.3f} {r['ratio_vs_raw']:7.3f} "
            f"{r['featrob_robust_acc']:9.4f} {r['reference_robust_acc']:8.4f}"
        )
        if "early_exit_s" in r:
            print(
                f"{r['attack'] + ' (early exit)':22} {r['early_exit_s']:10.3f} s, "
                f"{r['early_exit_vs_reference']:.3f} x the reference, "
                f"robust accuracy {r['early_exit_robust_acc']:.4f}"
            )
    print(
        "targets: featrob/reference <= 0.8 at equal robust accuracy; APGD time / raw passes <= 1.15"
    )
    payload = {
        "benchmark": "attacks",
        "args": vars(args),
        "machine": machine(),
        "clean_accuracy": clean,
        "results": rows,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()

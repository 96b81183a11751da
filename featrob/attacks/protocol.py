"""Robust accuracy the way AutoAttack measures it, with a per-sample worst case.

:func:`evaluate` runs attacks in order, each only on the samples still robust, checks every
adversarial example itself on the target model (inside the eps ball and the [0, 1] box,
misclassified), and keeps per sample: robust or not, which attack broke it, the lowest
margin (true logit minus best other logit) any attack reached, that point's perturbation
norm, and the seed. Attacks with early exit (the default of APGD, FAB and PGD) stop on a
sample at its first adversarial point: the flags are those of a full run, but a broken
sample's margin is that point's, not the lowest reachable; ask for ``early_exit=False``
(``"apgd-ce(early_exit=false)"``) where the margins of broken samples matter. The store
keys the two modes apart (the parameter is part of the attack's spec). Attacks may run on a
surrogate (an ensemble, or the target through BPDA) and are always judged on the target.

With a feature store, every attack's per-sample record is written batch by batch: a killed
evaluation resumes with what it finished, and a later evaluation that adds an attack reuses
the others and takes the union.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from featrob.attacks.base import Attack, flat_norm, without_early_exit
from featrob.attacks.checks import (
    check_outputs,
    check_randomized,
    gradient_flags,
    gradient_warnings,
    square_gap_warning,
)
from featrob.attacks.factory import expand_presets, make_attack
from featrob.attacks.surrogate import BPDA
from featrob.errors import ConfigError
from featrob.progress import ProgressBars
from featrob.rows import RowCache
from featrob.seeding import sample_seeds
from featrob.transfer import to_device

Forward = Callable[[Tensor], Tensor]

CLEAN, ROBUST = -2, -1  # broken_by codes besides attack indices


@dataclass
class Plan:
    """One step of an evaluation: an attack, and what it attacks.

    Attributes:
        attack: the attack.
        surrogate: model (or callable) the attack runs on; None for the target itself.
        surrogate_name: identifies the surrogate in labels and store keys (needed when the
            surrogate is not a FeatrobModel with a fingerprint).
        bpda: differentiate through BPDA substitutes of the attacked model's modules.
        label: name in reports (default ``attack@surrogate``).

    An attack on a surrogate runs without early exit (:func:`without_early_exit`): the
    surrogate's first success need not fool the target, the strongest point more likely
    does, so stopping early would change the target's robust flags.
    """

    attack: Attack
    surrogate: nn.Module | Forward | None = None
    surrogate_name: str | None = None
    bpda: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        if self.surrogate is not None:
            self.attack = without_early_exit(self.attack)
        if not self.label:
            where = self.surrogate_name or ("surrogate" if self.surrogate is not None else "")
            self.label = (
                self.attack.name + (f"@{where}" if where else "") + ("+bpda" if self.bpda else "")
            )

    def forward(self, target: Forward) -> Forward:
        """What the attack differentiates or queries."""
        base = self.surrogate if self.surrogate is not None else target
        if self.bpda:
            if not isinstance(base, nn.Module):
                raise ConfigError(f"{self.label}: BPDA needs an nn.Module")
            return BPDA(base)
        return base

    def key(self) -> dict[str, Any]:
        """Identity of this step in store keys."""
        surrogate = None
        if self.surrogate is not None:
            fp = getattr(self.surrogate, "fingerprint", None)
            surrogate = self.surrogate_name or (fp() if callable(fp) else None)
            if surrogate is None:
                raise ConfigError(
                    f"{self.label}: give surrogate_name to store results of a surrogate"
                )
        return {"attack": self.attack.spec(), "surrogate": surrogate, "bpda": self.bpda}


@dataclass
class StepSummary:
    """What one attack did.

    ``early_exit`` says which mode produced the step's per-sample records: True, the attack
    stopped on each sample at its first adversarial point (margins and norms of broken
    samples are those of that point); False, it ran the whole budget; None, the attack has
    no such option (Square always stops at a sample's first success, as in AutoAttack).
    """

    label: str
    spec: dict[str, Any]
    attacked: int
    broken: int
    robust_after: float
    seconds: float
    from_store: int = 0
    early_exit: bool | None = None


@dataclass
class Evaluation:
    """Per-sample worst case over the attacks, and what each attack did.

    Attributes:
        labels: attack labels in order; ``broken_by`` indexes them (-1 robust, -2 clean error).
        clean_correct, robust, broken_by, margin, norm, seeds, indices: per sample ``[N]``.
        x_adv: the worst-case point per sample (clean input for clean errors).
        steps: per-attack summaries.
        warnings: masking and sanity flags, one line each.
        flags: per-sample boolean masks (``zero_gradient``, ``nan_gradient``).
    """

    eps: float
    norm: str
    labels: list[str]
    clean_correct: Tensor
    robust: Tensor
    broken_by: Tensor
    margin: Tensor
    norms: Tensor
    x_adv: Tensor
    seeds: Tensor
    indices: Tensor
    steps: list[StepSummary] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    flags: dict[str, Tensor] = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> float:
        """Share of samples classified correctly without attack."""
        return float(self.clean_correct.double().mean()) if len(self.robust) else 0.0

    @property
    def robust_accuracy(self) -> float:
        """Share of samples no attack broke (and correctly classified when clean)."""
        return float(self.robust.double().mean()) if len(self.robust) else 0.0

    def broken_by_names(self) -> list[str]:
        """Per sample: ``"clean"``, ``"robust"`` or the label of the attack that broke it."""
        names = {CLEAN: "clean", ROBUST: "robust", **dict(enumerate(self.labels))}
        return [names[int(k)] for k in self.broken_by]


def resolve_plans(
    attacks: Sequence[Attack | str | Plan],
    *,
    eps: float | None,
    norm: str | None,
    seed: int,
    registry: Any = None,
) -> list[Plan]:
    """Turn attack specs, instances and plans into plans sharing one threat model."""
    plans: list[Plan] = []
    for item in attacks:
        if isinstance(item, Plan):
            plans.append(item)
        elif isinstance(item, Attack):
            plans.append(Plan(item))
        else:
            for spec in expand_presets([item]):
                if eps is None:
                    raise ConfigError("eps is needed to build attacks from names")
                attack = make_attack(
                    spec, eps=eps, norm=norm or "linf", seed=seed, registry=registry
                )
                plans.append(Plan(attack))
    if not plans:
        raise ConfigError("no attack to evaluate")
    threat = {(p.attack.eps, p.attack.norm) for p in plans}
    if len(threat) > 1 or (eps is not None and threat != {(float(eps), plans[0].attack.norm)}):
        raise ConfigError(
            f"all attacks of one evaluation need the same eps and norm, got {sorted(threat)}"
        )
    return plans


def evaluate(
    model: Forward,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[Attack | str | Plan] = ("standard",),
    *,
    eps: float | None = None,
    norm: str | None = None,
    seed: int = 0,
    indices: Tensor | None = None,
    registry: Any = None,
    batch_size: int = 256,
    store: Any = None,
    store_key: dict[str, Any] | None = None,
    progress: ProgressBars | None = None,
    check: bool = True,
    rows: RowCache | None = None,
) -> Evaluation:
    """Run ``attacks`` in order on the still-robust samples and keep the per-sample worst case.

    Args:
        model: the target model (logits ``[B, K]``); every adversarial example is judged on it.
        x, y: clean inputs in [0, 1] and labels (on the model's device or CPU).
        attacks: attack instances, registered names or specs (``"apgd-t(steps=50)"``), preset
            names (``"standard"``), or :class:`Plan` objects (surrogates, BPDA).
        eps, norm: threat model for attacks given by name (instances carry their own).
        seed: seed of attacks built from names; per-sample seeds derive from it and
            ``indices``, which makes results independent of ``batch_size``.
        indices: sample identities (default ``0..N-1``); store rows are keyed by them.
        registry: attack registry for names (default: every installed plugin's attacks).
        batch_size: samples per attack call and per store chunk.
        store, store_key: a :class:`featrob.store.FeatureStore` and the full key of the model
            and data (model fingerprint, data identity, mixed precision); without them (or
            ``rows``) nothing is stored.
        progress: progress bars.
        check: run the masking checks (probabilities, randomness, zero/NaN gradients, Square gap).
        rows: the run's row cache (:meth:`featrob.RunContext.evaluate` passes it); its key
            records the run's ``--amp``, so ``model`` must run under it.

    Returns:
        The :class:`Evaluation`.
    """
    plans = resolve_plans(attacks, eps=eps, norm=norm, seed=seed, registry=registry)
    eps_, norm_ = plans[0].attack.eps, plans[0].attack.norm
    progress = progress or ProgressBars(quiet=True)
    precision = rows is not None
    if rows is None:  # the caller's store and full key, or memory for this call only
        keyed = store is not None and store_key is not None
        rows = RowCache(store if keyed else None, store_key or {}, progress=progress)
    device = _device_of(model, x)
    n = len(x)
    idx = torch.arange(n) if indices is None else torch.as_tensor(indices, dtype=torch.int64).cpu()
    x_cpu, y_cpu = x.detach().cpu().float(), y.detach().cpu().long()

    warnings: list[str] = []
    logits = _logits_batched(model, x_cpu, device, batch_size, warnings, check)
    clean_correct = logits.argmax(1) == y_cpu
    margin = _margin(logits, y_cpu)
    robust = clean_correct.clone()
    broken_by = torch.where(clean_correct, ROBUST, CLEAN)
    worst_x = x_cpu.clone()
    worst_norm = torch.zeros(n)
    flags: dict[str, Tensor] = {}
    if check:
        warnings += _gradient_checks(
            plans, model, x_cpu, y_cpu, clean_correct, device, batch_size, flags
        )

    steps: list[StepSummary] = []
    for k, plan in enumerate(plans):
        if n < 1 or plan.attack.min_classes > logits.shape[1]:
            if n:
                warnings.append(
                    f"{plan.label} skipped: it needs at least {plan.attack.min_classes} classes"
                )
            continue
        start = time.perf_counter()
        todo = torch.nonzero(robust).squeeze(1)
        key = rows.key("attack-record", plan.key(), precision=precision)
        result, reused = _attack_step(plan, model, x_cpu, y_cpu, idx, todo, rows, key, batch_size)
        broke, marg, norms_k, x_k, invalid = result
        if invalid:
            warnings.append(
                f"{plan.label} returned {invalid} points outside the eps ball or the [0, 1] box; "
                "they were not counted as adversarial"
            )
        lower = marg < margin[todo]
        margin[todo] = torch.where(lower, marg, margin[todo])
        worst_norm[todo] = torch.where(lower, norms_k, worst_norm[todo])
        worst_x[todo] = torch.where(lower.view(-1, *([1] * (x_cpu.dim() - 1))), x_k, worst_x[todo])
        newly = todo[broke]
        robust[newly] = False
        broken_by[newly] = k
        steps.append(
            StepSummary(
                label=plan.label,
                spec=plan.key(),
                attacked=len(todo),
                broken=int(broke.sum()),
                robust_after=float(robust.double().mean()),
                seconds=time.perf_counter() - start,
                from_store=reused,
                early_exit=plan.attack.params.get("early_exit"),
            )
        )
    if check:
        warnings += _square_gap(plans, steps, n)
    return Evaluation(
        eps=eps_,
        norm=norm_,
        labels=[p.label for p in plans],
        clean_correct=clean_correct,
        robust=robust,
        broken_by=broken_by,
        margin=margin,
        norms=worst_norm,
        x_adv=worst_x,
        seeds=sample_seeds(plans[0].attack.seed, idx),
        indices=idx,
        steps=steps,
        warnings=warnings,
        flags=flags,
    )


def _attack_step(
    plan: Plan,
    model: Forward,
    x: Tensor,
    y: Tensor,
    idx: Tensor,
    todo: Tensor,
    rows: RowCache,
    key: dict[str, Any],
    batch_size: int,
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor, int], int]:
    """Attack the samples ``todo`` (reading finished rows from the store)."""
    forward = plan.forward(model)
    attack = plan.attack
    device = _device_of(model, x)

    def attack_batch(local: np.ndarray) -> dict[str, np.ndarray]:
        rows_idx = todo[torch.from_numpy(local)]
        xb = to_device(x[rows_idx], device)
        yb = to_device(y[rows_idx], device)
        seeds = sample_seeds(attack.seed, idx[rows_idx]).to(device)
        x_adv = attack.perturb(forward, xb, yb, sample_seeds=seeds).detach()
        dist = flat_norm(x_adv - xb, attack.norm)
        ok = (
            torch.isfinite(x_adv).flatten(1).all(1)
            & (dist <= attack.eps * (1 + 1e-5) + 1e-6)
            & (x_adv.flatten(1).amin(1) >= 0)
            & (x_adv.flatten(1).amax(1) <= 1)
        )
        x_adv = torch.where(ok.view(-1, *([1] * (xb.dim() - 1))), x_adv, xb)
        with torch.no_grad():
            out = model(x_adv)
        return {
            "broken": (out.argmax(1) != yb).cpu().numpy(),
            "margin": _margin(out.float(), yb).cpu().numpy(),
            "norm": flat_norm(x_adv - xb, attack.norm).float().cpu().numpy(),
            "x_adv": x_adv.float().cpu().numpy(),
            "seed": seeds.cpu().numpy(),
            "invalid": (~ok).cpu().numpy(),
        }

    # Batches of the still-unattacked samples, shared among the ranks of a distributed run.
    found = rows.rows(
        key,
        idx[todo].numpy(),
        attack_batch,
        batch_size=batch_size,
        label=f"attack {plan.label}",
        fields=("broken", "margin", "norm", "x_adv"),
        stored=("broken", "margin", "norm", "x_adv", "seed"),
    )
    m = len(todo)
    if not m:
        empty = torch.empty(0)
        return (empty.bool(), empty, empty, x[todo].clone(), 0), 0
    broke = torch.from_numpy(found["broken"]).bool()
    marg = torch.from_numpy(found["margin"]).float()
    norms = torch.from_numpy(found["norm"]).float()
    x_out = torch.from_numpy(found["x_adv"]).float()
    invalid = int(found.values["invalid"].sum()) if "invalid" in found.values else 0
    return (broke, marg, norms, x_out, invalid), found.from_store


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """True logit minus best other logit (negative: misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return (true - other).float()


def _device_of(model: Forward, x: Tensor) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return x.device


def _logits_batched(
    model: Forward,
    x: Tensor,
    device: torch.device,
    batch_size: int,
    warnings: list[str],
    check: bool,
) -> Tensor:
    outs = []
    for start in range(0, len(x), batch_size):
        xb = to_device(x[start : start + batch_size], device)
        out, notes = check_outputs(model, xb)
        if start == 0 and check:
            warnings += notes + check_randomized(model, xb, out)
        outs.append(out.float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, 0)


def _gradient_checks(
    plans: list[Plan],
    model: Forward,
    x: Tensor,
    y: Tensor,
    clean_correct: Tensor,
    device: torch.device,
    batch_size: int,
    flags: dict[str, Tensor],
) -> list[str]:
    """Zero and NaN input gradients on each distinct attacked forward (of gradient attacks)."""
    warnings: list[str] = []
    seen: set[tuple[int, bool]] = set()
    zero_all = torch.zeros(len(x), dtype=torch.bool)
    nan_all = torch.zeros(len(x), dtype=torch.bool)
    sel = torch.nonzero(clean_correct).squeeze(1)
    for plan in plans:
        target = plan.surrogate if plan.surrogate is not None else model
        key = (id(target), plan.bpda)
        if not plan.attack.uses_gradients or key in seen or not len(sel):
            continue
        seen.add(key)
        forward = plan.forward(model)
        zero = torch.zeros(len(sel), dtype=torch.bool)
        nan = torch.zeros(len(sel), dtype=torch.bool)
        for start in range(0, len(sel), batch_size):
            rows = sel[start : start + batch_size]
            z, m = gradient_flags(forward, x[rows].to(device), y[rows].to(device))
            zero[start : start + len(rows)], nan[start : start + len(rows)] = z, m
        what = "target model" if plan.surrogate is None else f"surrogate of {plan.label}"
        warnings += gradient_warnings(zero, nan, what + (" (BPDA)" if plan.bpda else ""))
        zero_all[sel] |= zero
        nan_all[sel] |= nan
    flags["zero_gradient"], flags["nan_gradient"] = zero_all, nan_all
    return warnings


def _square_gap(plans: list[Plan], steps: list[StepSummary], n: int) -> list[str]:
    """AutoAttack's check: Square, after white-box attacks, should find (almost) nothing."""
    by_label = {s.label: s for s in steps}
    seen_white_box = False
    for plan in plans:
        step = by_label.get(plan.label)
        if step is None:
            continue
        if plan.attack.uses_gradients:
            seen_white_box = True
        elif plan.attack.name == "square" and seen_white_box:
            return square_gap_warning(step.broken, n)
    return []

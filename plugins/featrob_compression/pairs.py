"""Pair selection and the resumable, batched computation of every pair's quantities.

A pair is (sample, partner): the partner is the sample's nearest other-class sample within
the evaluated set (``pairs="nearest"``) or its nearest sample of each other class
(``pairs="each"``). Rows go to the feature store one batch of samples at a time, keyed by
the sample's index and holding the partner's index, so a killed run resumes where it
stopped and a run on a larger set recomputes only the samples whose partner changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from featrob import MinimumNormAttack
from featrob_compression.geometry import nearest_other_class
from featrob_compression.quantities import PAIR_FIELDS, pair_quantities

if TYPE_CHECKING:
    from featrob import RunContext

#: Per-pair arrays besides :data:`PAIR_FIELDS`: the minimal perturbations found.
ATTACK_FIELDS = ("delta_target",)


@dataclass
class PairTable:
    """Every pair of the evaluated set, flattened (one row per pair).

    Attributes:
        sample: position of the sample in the evaluated set ``[P]``.
        partner: position of its partner ``[P]``.
        y, y2: their classes.
        correct: the model classifies the sample correctly.
        values: ``{quantity: float64 [P]}`` (:data:`PAIR_FIELDS`, ``delta_target``,
            ``delta_untargeted`` of the sample, repeated per pair).
        from_store: samples whose rows were read from the store.
    """

    sample: np.ndarray
    partner: np.ndarray
    y: np.ndarray
    y2: np.ndarray
    correct: np.ndarray
    values: dict[str, np.ndarray]
    from_store: int = 0


def compute_pairs(
    ctx: RunContext,
    attack: MinimumNormAttack,
    *,
    mode: str = "nearest",
    points: int = 16,
    untargeted: bool = True,
) -> PairTable:
    """Quantities and minimal perturbations of every pair of the evaluated set.

    Args:
        ctx: the run (model, analysed samples, store, device).
        attack: the minimum-norm attack (L2) measuring ``delta_min``.
        mode: ``"nearest"`` or ``"each"`` (see the module docstring).
        points: K, path points per pair.
        untargeted: also measure the untargeted ``delta_min`` of every sample.
    """
    x_all = ctx.inputs().float()
    labels = ctx.labels.long()
    indices = ctx.indices.numpy().astype(np.int64)
    partner, _ = nearest_other_class(
        x_all.to(ctx.device),
        labels.to(ctx.device),
        each_class=mode == "each",
        num_classes=ctx.num_classes,
    )
    partner = partner.cpu()
    partner_np = partner.numpy()
    partner_idx = np.where(partner_np >= 0, indices[partner_np.clip(min=0)], -1)

    names = (*PAIR_FIELDS, *ATTACK_FIELDS, "delta_untargeted")
    seeds_all = ctx.sample_seeds()

    def run_batch(pos: np.ndarray) -> dict[str, np.ndarray]:
        out = _batch(ctx, attack, x_all, labels, partner, pos, seeds_all, untargeted, points)
        return {"partner": partner_idx[pos], **{n: out[n] for n in names}}

    def same_partner(stored: dict[str, np.ndarray], pos: np.ndarray) -> np.ndarray:
        return (stored["partner"] == partner_idx[pos]).all(1)

    # The evaluated set is not part of the key: rows hold the partner, checked on reading.
    found = ctx.cached_rows(
        "compression-pairs",
        {
            "version": 3,
            "pairs": mode,
            "path_points": points,
            "attack": attack.spec(),
            "untargeted": bool(untargeted),
        },
        indices,
        run_batch,
        batch_size=ctx.config.batch_size,
        label="compression pairs",
        accept=same_partner,
        precision=False,  # pair quantities and the attack run in float32
    )
    rows = found.values
    from_store = found.from_store

    sample, slot = np.nonzero(partner_np >= 0)
    y = labels.numpy()[sample]
    y2 = labels.numpy()[partner_np[sample, slot]]
    values = {name: rows[name][sample, slot] for name in (*PAIR_FIELDS, *ATTACK_FIELDS)}
    values["delta_untargeted"] = rows["delta_untargeted"][sample]
    correct = ctx.features("logits").correct.numpy()[sample]  # clean logits, from the store
    return PairTable(
        sample=sample,
        partner=partner_np[sample, slot],
        y=y,
        y2=y2,
        correct=correct,
        values=values,
        from_store=from_store,
    )


def _batch(
    ctx: RunContext,
    attack: MinimumNormAttack,
    x_all: Tensor,
    labels: Tensor,
    partner: Tensor,
    pos: np.ndarray,
    seeds_all: Tensor,
    untargeted: bool,
    points: int,
) -> dict[str, np.ndarray]:
    """Rows ``[b, slots]`` (and ``[b]``) for the samples at positions ``pos``."""
    device, model = ctx.device, ctx.model
    pos_t = torch.as_tensor(pos)
    part = partner[pos_t]  # [b, slots]
    b, slots = part.shape
    sample_rep, slot = torch.nonzero(part >= 0, as_tuple=True)
    other = part[sample_rep, slot]
    src = pos_t[sample_rep]
    x = x_all[src].to(device)
    y = labels[src].to(device)
    x2 = x_all[other].to(device)
    y2 = labels[other].to(device)
    out: dict[str, np.ndarray] = {}
    q = pair_quantities(model, x, y, x2, y2, points=points, chunk=4 * ctx.config.batch_size)
    found = attack.minimize(
        model, x, y, target=y2, sample_seeds=seeds_all[src].to(device), pairwise=True
    )
    fields = {**q, "delta_target": found.norm.double().cpu()}
    for name, value in fields.items():
        arr = np.full((b, slots), np.nan)
        arr[sample_rep.numpy(), slot.numpy()] = value.numpy()
        out[name] = arr
    if untargeted:
        xs, ys = x_all[pos_t].to(device), labels[pos_t].to(device)
        # a targeted success is an untargeted one too: the smallest perturbation found for
        # the sample is the smaller of the two searches (FAB's untargeted walk follows the
        # closest linearised boundary and sometimes ends farther than a targeted run)
        un = attack.minimize(model, xs, ys, sample_seeds=seeds_all[pos_t].to(device))
        targeted_best = np.fmin.reduce(out["delta_target"], axis=1)
        out["delta_untargeted"] = np.fmin(un.norm.double().cpu().numpy(), targeted_best)
    else:
        out["delta_untargeted"] = np.full(b, np.nan)
    return out

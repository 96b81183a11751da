"""Layer outputs of clean and perturbed inputs, computed once and kept in the store.

:class:`Extractor` answers "layer L of every sample under perturbation P": it reads what the
store has, computes only the missing sample indices in batches, and writes each finished
batch as a store chunk straight away, so a killed run resumes where it stopped. Perturbed
inputs are themselves an entry (layer ``input`` under P): a second layer under the same
attack does not rerun the attack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featrob.attacks.base import Attack, without_early_exit
from featrob.data.base import DataSplit
from featrob.models.base import FeatrobModel
from featrob.progress import ProgressBars
from featrob.rows import RowCache
from featrob.seeding import sample_seeds
from featrob.store import FeatureStore, key_digest
from featrob.transfer import to_device


@dataclass
class FeatureSet:
    """One layer's outputs for the analysed samples (rows in split order).

    Attributes:
        layer: the layer name as asked for.
        values: layer outputs ``[N, ...]`` (float32, CPU).
        logits: model logits for the same inputs ``[N, K]``.
        labels: true labels ``[N]``.
        indices: source sample indices ``[N]``.
        perturbation: the attack spec, or None for clean inputs.
    """

    layer: str
    values: Tensor
    logits: Tensor
    labels: Tensor
    indices: Tensor
    perturbation: dict[str, Any] | None = None

    @property
    def predictions(self) -> Tensor:
        """Arg-max class per sample."""
        return self.logits.argmax(1)

    @property
    def correct(self) -> Tensor:
        """True where the prediction equals the label."""
        return self.predictions == self.labels


def autocast_context(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in (``bf16``, ``fp16``), else a no-op."""
    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class AutocastForward(torch.nn.Module):
    """``model`` run under mixed precision, returning float32 outputs."""

    def __init__(self, model: torch.nn.Module, device: torch.device, amp: str) -> None:
        super().__init__()
        self.model, self.device_type, self.amp = model, device, amp

    def forward(self, x: Tensor) -> Tensor:
        """Forward under ``torch.autocast``."""
        with autocast_context(self.device_type, self.amp):
            return self.model(x).float()


class Extractor:
    """Computes and caches layer outputs of one model on one data split.

    Args:
        model: the model (eval mode, on ``device``).
        split: the analysed samples.
        device: where forward passes run.
        store: the feature store, or None to keep results in memory only.
        base_key: identifies model and data in store keys (fingerprint, data spec, split).
        batch_size: samples per forward pass and per store chunk.
        amp: mixed precision for forward passes (part of the store key).
        progress: progress bars.
        rows: the run's row cache (built from ``store``, ``base_key``, ``amp`` when None).
    """

    def __init__(
        self,
        model: FeatrobModel,
        split: DataSplit,
        device: torch.device,
        store: FeatureStore | None,
        base_key: dict[str, Any],
        batch_size: int = 256,
        amp: str | None = None,
        progress: ProgressBars | None = None,
        rows: RowCache | None = None,
    ) -> None:
        self.model, self.split, self.device = model, split, device
        self.rows = rows or RowCache(store, base_key, amp=amp, progress=progress)
        self.batch_size, self.amp = batch_size, amp
        self._cache: dict[str, Tensor] = {}  # store digest -> full-split tensor
        indices = split.indices.numpy().astype(np.int64)
        self._sorted_idx = np.unique(indices)  # rows are computed in index order
        self._split_pos = np.searchsorted(self._sorted_idx, indices)
        self._pos_of_sorted = np.empty(len(self._sorted_idx), dtype=np.int64)
        self._pos_of_sorted[self._split_pos] = np.arange(len(indices))

    # ------------------------------------------------------------------ public
    def features(
        self, layers: Sequence[str], attack: Attack | None = None
    ) -> dict[str, FeatureSet]:
        """Outputs of ``layers`` for every sample of the split, clean or under ``attack``
        (run without early exit: features need each sample's strongest point)."""
        attack = None if attack is None else without_early_exit(attack)
        canon = {name: self.model.resolve_layer(name) for name in layers}
        wanted = sorted(set(canon.values()) | {"logits"})
        pert = attack.spec() if attack is not None else None
        arrays = self._ensure(wanted, attack)
        logits = arrays["logits"]
        out = {}
        for name, layer in canon.items():
            out[name] = FeatureSet(
                layer=name,
                values=arrays[layer],
                logits=logits,
                labels=self.split.labels,
                indices=self.split.indices,
                perturbation=pert,
            )
        return out

    def inputs(self, attack: Attack | None = None) -> Tensor:
        """Model inputs for every sample: clean images, or adversarial ones under ``attack``
        (run without early exit, as for :meth:`features`)."""
        if attack is None:
            return self.split.float_images()
        attack = without_early_exit(attack)
        return self._ensure(["input"], attack)["input"]

    # ------------------------------------------------------------------ machinery
    def _key(self, layer: str, attack: Attack | None) -> dict[str, Any]:
        perturbation = attack.spec() if attack is not None else None
        return self.rows.key("layer", {"layer": layer, "perturbation": perturbation})

    def _ensure(self, layers: Sequence[str], attack: Attack | None) -> dict[str, Tensor]:
        """Full-split tensors for ``layers`` (memory cache, else store, else computed).

        Layer ``input`` is special: clean inputs are the images themselves (never stored);
        adversarial inputs are their own store entry, computed before any layer under the
        same attack so that every layer reads the same perturbed inputs.
        """
        result: dict[str, Tensor] = {}
        if "input" in layers and attack is None:
            result["input"] = self.split.float_images()
        elif attack is not None:
            adversarial = self._rows(["input"], attack, load="input" in layers)
            result.update(adversarial)
        todo = [layer for layer in layers if layer != "input"]
        if todo:
            result.update(self._rows(todo, attack, load=True))
        return {layer: result[layer] for layer in layers}

    def _rows(self, layers: list[str], attack: Attack | None, *, load: bool) -> dict[str, Tensor]:
        """Compute what ``layers`` miss; with ``load``, return their full-split tensors."""
        keys = {layer: self._key(layer, attack) for layer in layers}
        tags = {layer: key_digest(key) for layer, key in keys.items()}
        result = {layer: self._cache[tag] for layer, tag in tags.items() if tag in self._cache}
        keys = {layer: key for layer, key in keys.items() if layer not in result}
        if not keys:
            return result
        if layers == ["input"]:
            assert attack is not None
            what = "attack " + attack.label()
        else:
            what = "features" + (f" under {attack.label()}" if attack is not None else "")

        def compute(positions: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
            batch_idx = self._sorted_idx[positions]
            pos = self._pos_of_sorted[positions]
            labels = self.split.labels[torch.from_numpy(pos)].numpy()
            if layers == ["input"]:
                assert attack is not None
                outputs = {"input": self._attack_batch(attack, pos, batch_idx)}
            else:
                outputs = self._forward(self._batch_inputs(attack, pos, batch_idx), layers)
            return {layer: {"values": outputs[layer], "labels": labels} for layer in keys}

        rows = self.rows.rows_many(
            keys,
            self._sorted_idx,
            compute,
            batch_size=self.batch_size,
            label=what,
            fields={layer: ["values"] for layer in keys},
        )
        if load:
            for layer, found in rows.items():
                values = torch.from_numpy(found["values"][self._split_pos])
                self._cache[tags[layer]] = values
                result[layer] = values
        return result

    def _batch_inputs(
        self, attack: Attack | None, pos: np.ndarray, batch_idx: np.ndarray
    ) -> Tensor:
        if attack is None:
            return to_device(self.split.float_images(torch.from_numpy(pos)), self.device)
        tag = key_digest(self._key("input", attack))
        if tag in self._cache:
            return to_device(self._cache[tag][torch.from_numpy(pos)], self.device)
        entry = self.rows.entry(self._key("input", attack))
        return to_device(torch.from_numpy(entry.read(batch_idx, ["values"])["values"]), self.device)

    def _attack_batch(self, attack: Attack, pos: np.ndarray, batch_idx: np.ndarray) -> np.ndarray:
        x = to_device(self.split.float_images(torch.from_numpy(pos)), self.device)
        y = to_device(self.split.labels[torch.from_numpy(pos)], self.device)
        seeds = sample_seeds(attack.seed, batch_idx)
        with autocast_context(self.device, self.amp):
            x_adv = attack.perturb(self.model, x, y, sample_seeds=seeds)
        return x_adv.detach().float().cpu().numpy()

    @torch.no_grad()
    def _forward(self, x: Tensor, layers: list[str]) -> dict[str, np.ndarray]:
        with autocast_context(self.device, self.amp):
            outs = self.model.extract(x, layers)
        return {k: v.detach().float().cpu().numpy() for k, v in outs.items()}

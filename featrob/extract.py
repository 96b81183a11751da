"""Layer outputs of clean and perturbed inputs, computed once and kept in the store.

:class:`Extractor` answers "layer L of every sample under perturbation P": it reads what the
store has, computes only the missing sample indices in batches, and writes each finished
batch as a store chunk straight away, so a killed run resumes where it stopped. Perturbed
inputs are themselves an entry (layer ``input`` under P): a second layer under the same
attack does not rerun the attack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featrob.attacks.base import Attack
from featrob.data.base import DataSplit
from featrob.distributed import map_batches
from featrob.models.base import FeatrobModel
from featrob.progress import Reporter
from featrob.seeding import sample_seeds
from featrob.store import FeatureStore
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
        progress: Reporter | None = None,
    ) -> None:
        self.model, self.split, self.device, self.store = model, split, device, store
        self.base_key = {**base_key, "amp": amp}
        self.batch_size, self.amp = batch_size, amp
        self.progress = progress or Reporter(quiet=True)
        self._memory: dict[str, dict[str, np.ndarray]] = {}  # used when store is None
        self._cache: dict[str, Tensor] = {}  # store digest -> full-split tensor
        order = np.argsort(split.indices.numpy(), kind="stable")
        self._sorted_idx = split.indices.numpy()[order]
        self._sorted_pos = order

    # ------------------------------------------------------------------ public
    def features(
        self, layers: Sequence[str], attack: Attack | None = None
    ) -> dict[str, FeatureSet]:
        """Outputs of ``layers`` for every sample of the split, clean or under ``attack``."""
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
        """Model inputs for every sample: clean images, or adversarial ones under ``attack``."""
        if attack is None:
            return self.split.float_images()
        return self._ensure(["input"], attack)["input"]

    # ------------------------------------------------------------------ machinery
    def _key(self, layer: str, attack: Attack | None) -> dict[str, Any]:
        return {
            **self.base_key,
            "kind": "layer",
            "layer": layer,
            "perturbation": attack.spec() if attack is not None else None,
        }

    def _tag(self, layer: str, attack: Attack | None) -> str:
        from featrob.store import key_digest

        return key_digest(self._key(layer, attack))

    def _ensure(self, layers: Sequence[str], attack: Attack | None) -> dict[str, Tensor]:
        """Compute what is missing for ``layers`` and return full-split tensors.

        Layer ``input`` is special: clean inputs are the images themselves (never stored);
        adversarial inputs are their own store entry, computed before any layer under the
        same attack so that every layer reads the same perturbed inputs.
        """
        result: dict[str, Tensor] = {}
        if "input" in layers:
            if attack is None:
                result["input"] = self.split.float_images()
            else:
                result.update(self._load_or_compute(["input"], attack))
        elif attack is not None:
            self._fill(["input"], attack)  # layers below read these batch by batch
        layers_to_run = [layer for layer in layers if layer != "input"]
        if layers_to_run:
            result.update(self._load_or_compute(layers_to_run, attack))
        return {layer: result[layer] for layer in layers}

    def _fill(self, layers: list[str], attack: Attack | None) -> None:
        """Compute and store the rows that ``layers`` miss (nothing when all are stored)."""
        idx = self.split.indices.numpy()
        missing = np.unique(np.concatenate([self._missing(layer, attack, idx) for layer in layers]))
        if len(missing):
            self._compute(layers, attack, missing)

    def _load_or_compute(self, layers: list[str], attack: Attack | None) -> dict[str, Tensor]:
        """Full-split tensors for ``layers`` (memory cache, else store, else computed)."""
        tags = {layer: self._tag(layer, attack) for layer in layers}
        result = {layer: self._cache[tag] for layer, tag in tags.items() if tag in self._cache}
        todo = [layer for layer in layers if layer not in result]
        if todo:
            self._fill(todo, attack)
            idx = self.split.indices.numpy()
            for layer in todo:
                values = torch.from_numpy(self._read(layer, attack, idx))
                self._cache[tags[layer]] = values
                result[layer] = values
        return result

    def _positions(self, indices: np.ndarray) -> np.ndarray:
        return self._sorted_pos[np.searchsorted(self._sorted_idx, indices)]

    def _batches(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(indices), self.batch_size):
            yield indices[start : start + self.batch_size]

    def _compute(self, layers: list[str], attack: Attack | None, missing: np.ndarray) -> None:
        what = (
            "attack " + attack.label()
            if attack is not None and layers == ["input"]
            else ("features" + (f" under {attack.label()}" if attack is not None else ""))
        )

        def compute(batch_idx: np.ndarray) -> dict[str, np.ndarray] | None:
            pos = self._positions(batch_idx)
            if layers == ["input"]:
                assert attack is not None
                outputs = {"input": self._attack_batch(attack, pos, batch_idx)}
            else:
                x = self._batch_inputs(attack, pos, batch_idx)
                outputs = self._forward(x, layers)
            bar.advance(len(batch_idx))
            if self.store is None:
                return outputs  # kept in memory below, on every rank
            labels = self.split.labels[torch.from_numpy(pos)].numpy()
            for layer, values in outputs.items():
                self._write(layer, attack, batch_idx, values, labels)
            return None  # in the store, where every rank reads it

        # Batches are shared among the ranks of a distributed run (featrob.distributed).
        batches = list(self._batches(missing))
        with self.progress.bar(len(missing), what) as bar:
            done = map_batches(batches, compute)
        for batch_idx, outputs in zip(batches, done, strict=True):
            if outputs is not None:
                labels = self.split.labels[torch.from_numpy(self._positions(batch_idx))].numpy()
                for layer, values in outputs.items():
                    self._write(layer, attack, batch_idx, values, labels)

    def _batch_inputs(
        self, attack: Attack | None, pos: np.ndarray, batch_idx: np.ndarray
    ) -> Tensor:
        if attack is None:
            return to_device(self.split.float_images(torch.from_numpy(pos)), self.device)
        return to_device(torch.from_numpy(self._read("input", attack, batch_idx)), self.device)

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

    # ------------------------------------------------------------------ storage
    def _missing(self, layer: str, attack: Attack | None, idx: np.ndarray) -> np.ndarray:
        if self.store is not None:
            return self.store.entry(self._key(layer, attack)).missing(idx)
        have = self._memory.get(self._tag(layer, attack), {}).get("indices")
        return idx if have is None else idx[~np.isin(idx, have)]

    def _write(
        self,
        layer: str,
        attack: Attack | None,
        idx: np.ndarray,
        values: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        if self.store is not None:
            self.store.entry(self._key(layer, attack)).write(idx, values=values, labels=labels)
            return
        mem = self._memory.setdefault(self._tag(layer, attack), {})
        if "indices" in mem:
            mem["indices"] = np.concatenate([mem["indices"], idx])
            mem["values"] = np.concatenate([mem["values"], values])
        else:
            mem["indices"], mem["values"] = idx.copy(), values

    def _read(self, layer: str, attack: Attack | None, idx: np.ndarray) -> np.ndarray:
        if self.store is not None:
            return self.store.entry(self._key(layer, attack)).read(idx, ["values"])["values"]
        mem = self._memory[self._tag(layer, attack)]
        order = np.argsort(mem["indices"])
        where = order[np.searchsorted(mem["indices"], idx, sorter=order)]
        return mem["values"][where]

"""What a metric gets to work with: :class:`RunContext`."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from featrob.attacks.base import Attack
from featrob.attacks.factory import expand_presets, make_attack
from featrob.attacks.protocol import evaluate
from featrob.budgets import budget_options
from featrob.extract import AutocastForward, Extractor, FeatureSet, autocast_context
from featrob.memory import chunk_for, footprint, loop_footprint, tame_allocator
from featrob.model_cache import cached_module, model_cache_path
from featrob.prepare import prepare_model
from featrob.rows import CachedRows, Compute, MemoryStore, ReadOnlyStore, RowCache
from featrob.seeding import derive_seed, sample_seeds
from featrob.specs import parse_size

if TYPE_CHECKING:
    from featrob.attacks.protocol import Evaluation, Plan
    from featrob.config import RunConfig
    from featrob.data.base import DatasetBundle, DataSplit
    from featrob.models.base import FeatrobModel
    from featrob.plugins import PluginHost
    from featrob.progress import ProgressBars
    from featrob.registry import Registry
    from featrob.store import FeatureStore


class RunContext:
    """The model, data, device, seeds, attacks and feature store of a run.

    Attributes:
        config: the resolved run configuration.
        model: the model in eval mode on :attr:`device` (backbone and head separate).
        data: the whole data set (``data.train`` for metrics that need training samples).
        split: the analysed samples (the configured split, subsampled).
        device: where computation runs.
        store: the shared feature store (None when disabled).
        host: the plugin host (registries of every kind).
        progress: progress bars (quiet with ``--quiet``).
    """

    def __init__(
        self,
        config: RunConfig,
        model: FeatrobModel,
        data: DatasetBundle,
        split: DataSplit,
        device: torch.device,
        host: PluginHost,
        store: FeatureStore | None,
        progress: ProgressBars,
        model_fingerprint: str,
        *,
        memory: MemoryStore | None = None,
        store_read_only: bool = False,
    ) -> None:
        self.config, self.model, self.data, self.split = config, model, data, split
        self.device, self.host, self.store, self.progress = device, host, store, progress
        self.model_fingerprint = model_fingerprint
        self.data_key = {
            "dataset": data.spec,
            "data_fingerprint": data.fingerprint,
            "data_options": config.data_options,
            "split": config.split,
        }
        # Without a store, rows live in memory for the whole run (variants and subsets too).
        self._memory = memory if memory is not None else MemoryStore()
        self._store_read_only = store_read_only
        rows_store: FeatureStore | MemoryStore | ReadOnlyStore = self._memory
        if store is not None:
            rows_store = ReadOnlyStore(store, self._memory) if store_read_only else store
        self._rows = RowCache(
            rows_store,
            {"model": model_fingerprint, **self.data_key},
            amp=config.amp,
            progress=progress,
        )
        self._extractor = Extractor(
            model,
            split,
            device,
            store,
            base_key={},
            batch_size=config.batch_size,
            amp=config.amp,
            progress=progress,
            rows=self._rows,
        )

    # ------------------------------------------------------------------ data
    @property
    def labels(self) -> Tensor:
        """True labels of the analysed samples ``[N]``."""
        return self.split.labels

    @property
    def indices(self) -> Tensor:
        """Source indices of the analysed samples ``[N]``."""
        return self.split.indices

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.data.num_classes

    @property
    def class_names(self) -> list[str]:
        """Class names (``"0"``..``"K-1"`` when the data set has none)."""
        return self.data.classes or [str(k) for k in range(self.num_classes)]

    @property
    def attacks(self) -> Registry[Any]:
        """The attack registry."""
        return self.host.attacks

    # ------------------------------------------------------------------ randomness
    def rng(self, purpose: str) -> np.random.Generator:
        """A NumPy generator seeded from the run seed and ``purpose`` (a metric's name), so a
        metric's randomness does not depend on which metrics ran before it."""
        return np.random.default_rng(derive_seed(self.config.seed, purpose))

    def torch_generator(self, purpose: str) -> torch.Generator:
        """A torch generator (CPU) seeded like :meth:`rng`."""
        return torch.Generator().manual_seed(derive_seed(self.config.seed, purpose))

    def sample_seeds(self, indices: Tensor | None = None) -> Tensor:
        """Per-sample seeds of the analysed samples (or of ``indices``)."""
        return sample_seeds(self.config.seed, self.indices if indices is None else indices)

    # ------------------------------------------------------------------ options and attacks
    def options(self, metric: str) -> dict[str, Any]:
        """The options ``metric`` runs with: its ``budgets`` entry for the run's budget,
        then the user's (``[metrics.NAME]`` in the config) on top."""
        cls = self.host.metrics.get(metric) if metric in self.host.metrics else None
        return budget_options(cls, self.config.budget, self.config.metrics.get(metric))

    def make_attack(
        self,
        spec: str | None = None,
        *,
        eps: float | None = None,
        norm: str | None = None,
        seed: int | None = None,
        **params: Any,
    ) -> Attack:
        """Instantiate a registered attack.

        Args:
            spec: ``"pgd"`` or ``"pgd(steps=20)"``; default the run's first attack (the first
                attack of a preset such as ``standard``).
            eps, norm, seed: default the run's.
            **params: override parameters of the spec.
        """
        if spec is None:  # the run's first attack, presets ("standard") expanded
            spec = expand_presets(self.config.attack_specs())[0]
        return make_attack(
            spec,
            eps=self.config.eps if eps is None else eps,
            norm=norm or self.config.norm,
            seed=self.config.seed if seed is None else seed,
            registry=self.attacks,
            **params,
        )

    # ------------------------------------------------------------------ memory
    @property
    def memory_budget(self) -> int | None:
        """``--max-memory`` in bytes (None: no budget)."""
        return parse_size(self.config.max_memory)

    def chunk_size(
        self,
        forward: Callable[[Tensor], Tensor],
        default: int,
        *,
        work: Callable[[int], object] | None = None,
        per_item_factor: float = 1.0,
        extra_per_item: int = 0,
    ) -> int:
        """How many items one pass of a loop may take under ``--max-memory``
        (``default`` without a budget).

        Args:
            forward: what the loop differentiates; its forward/backward cost per input is
                measured on an analysed sample (:func:`featrob.memory.footprint`).
            default: the chunk without a budget.
            work: the loop body itself, ``work(n)`` on ``n`` items (e.g. two PGD steps on
                ``n`` replicas): measured instead where peaks can be measured, which counts
                the loop's own state too.
            per_item_factor, extra_per_item: without a measured ``work``, scale the pass
                cost per item (an item that holds several passes) and add bytes an item
                keeps besides.
        """

        budget = self.memory_budget
        if budget is None:
            return default
        tame_allocator()  # see featrob.memory: without it no CPU budget holds
        fp = None if work is None else loop_footprint(work, self.device, budget=budget)
        if fp is not None:  # the loop itself, measured
            return chunk_for(budget, fp.per_input, fixed=fp.fixed, default=default)
        probe = self.split.float_images(torch.arange(1)).to(self.device)
        fp = footprint(forward, probe, budget=budget)
        per_item = int(fp.per_input * per_item_factor) + extra_per_item
        return chunk_for(budget, per_item, fixed=fp.fixed, default=default)

    def run_attacks(self) -> list[Attack]:
        """The run's configured attacks (``--attack``; presets expanded), instantiated."""
        return [self.make_attack(spec) for spec in expand_presets(self.config.attack_specs())]

    def evaluate(
        self,
        attacks: Sequence[Attack | str | Plan] | None = None,
        *,
        eps: float | None = None,
        norm: str | None = None,
        model: FeatrobModel | None = None,
    ) -> Evaluation:
        """Robust accuracy of the analysed samples under ``attacks`` (default: the run's),
        AutoAttack style: attacks in order on the still-robust samples, per-sample worst case,
        masking checks; per-attack records go to the store, so a second run or a resumed one
        reuses them.

        Args:
            attacks: attack instances, specs, presets or :class:`featrob.Plan` objects.
            eps, norm: the threat model (default the run's).
            model: evaluate another model on the run's samples (a model sharing the run
                model's backbone, say); default the run's model. It runs under ``--amp``
                like the run's, and its records are keyed by its fingerprint.
        """

        target = self.model if model is None else model
        rows = self._rows if model is None else self._rows.with_model(model.fingerprint())
        return evaluate(
            self.amp_forward(target),
            self.inputs(),
            self.labels,
            attacks if attacks is not None else self.config.attack_specs(),
            eps=self.config.eps if eps is None else eps,
            norm=norm or self.config.norm,
            seed=self.config.seed,
            indices=self.indices,
            registry=self.attacks,
            batch_size=self.config.batch_size,
            progress=self.progress,
            rows=rows,
        )

    def amp_forward(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` as the run's computations use it: under ``--amp`` (float32 outputs),
        or unchanged without it."""
        if self.config.amp is None:
            return model
        return AutocastForward(model, self.device, self.config.amp)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (``--amp``), or a no-op."""
        return autocast_context(self.device, self.config.amp)

    # ------------------------------------------------------------------ other models
    def variant(self, method: str | None = None, weights: str | None = None) -> RunContext:
        """The same run (data, samples, store, seeds) on another model: the run's model
        trained with training method ``method`` (trained once, then cached like the run's
        own model), or the checkpoint ``weights``. Metrics use it to compare models side by
        side (e.g. standard vs scale-aware training)."""

        if (method is None) == (weights is None):
            raise ValueError("variant() takes exactly one of method and weights")
        if weights is not None:
            config = dataclasses.replace(self.config, weights=weights)
        else:
            train = dataclasses.replace(self.config.train, method=method)
            config = dataclasses.replace(self.config, weights=None, train=train)
        model, _ = prepare_model(config, self.data, self.host, self.device, self.progress)
        return RunContext(
            config,
            model,
            self.data,
            self.split,
            self.device,
            self.host,
            self.store,
            self.progress,
            model.fingerprint(),
            memory=self._memory,
            store_read_only=self._store_read_only,
        )

    def compared(self, spec: str) -> RunContext:
        """:meth:`variant` for a metric's ``compare`` option: a checkpoint path (``.pt``,
        ``.pth``, ``.ckpt``) or a training method name."""
        spec = str(spec)
        if spec.endswith((".pt", ".pth", ".ckpt")):
            return self.variant(weights=spec)
        return self.variant(method=spec)

    def restricted(self, positions: Sequence[int] | np.ndarray | Tensor) -> RunContext:
        """The same run (model, store, seeds) on a subset of the analysed samples, given by
        positions into :attr:`split`: features, inputs and evaluations of the subset come
        from (and go to) the store under the same per-sample keys."""
        return RunContext(
            self.config,
            self.model,
            self.data,
            self.split.subset(positions),
            self.device,
            self.host,
            self.store,
            self.progress,
            self.model_fingerprint,
            memory=self._memory,
            store_read_only=self._store_read_only,
        )

    @property
    def model_label(self) -> str:
        """How comparison tables name the run's model: its training method, or "run model"
        for a checkpoint given with ``--weights``."""
        return "run model" if self.config.weights else self.config.train.method

    # ------------------------------------------------------------------ cached work
    def store_key(
        self, kind: str, params: dict[str, Any] | None = None, *, precision: bool = True
    ) -> dict[str, Any]:
        """The full store key of a computation on the run's model and samples: the model
        fingerprint, the data identity and split, ``--amp`` (with ``precision``: the
        computation's passes run under :meth:`autocast`) and the computation's own ``kind``
        and device-independent ``params`` (which may override ``split``)."""
        return self._rows.key(kind, params, precision=precision)

    def cached_rows(
        self,
        kind: str,
        params: dict[str, Any] | None,
        row_keys: np.ndarray,
        compute: Compute,
        *,
        batch_size: int | None = None,
        batches: Sequence[np.ndarray] | None = None,
        label: str = "",
        fields: Sequence[str] | None = None,
        stored: Sequence[str] | None = None,
        accept: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray] | None = None,
        precision: bool = True,
    ) -> CachedRows:
        """Rows computed once: what the store holds is read, the missing rows are computed in
        batches (shared among the ranks under torchrun), each batch is written as it finishes
        (a killed run resumes there), and every row comes back in the order of ``row_keys``.
        Without a store (``--store none``) the rows are kept in memory for the run.

        Args:
            kind: what the rows are, e.g. ``"my-metric.distances"`` (part of the key).
            params: the device-independent parameters that determine the rows (part of the
                key; add a ``"version"`` and bump it when the computation changes).
            row_keys: ``[R]`` distinct int64 row identifiers, e.g. :attr:`indices` or pair
                keys ``i * stride + j``.
            compute: ``compute(positions) -> {field: array}``, the rows of
                ``row_keys[positions]`` (first axis ``len(positions)``, CPU NumPy arrays).
            batch_size: missing rows per ``compute`` call (default: all at once).
            batches: instead, your own batches of positions (a batch with any missing row is
                computed whole), e.g. the cells of a grid.
            label: progress-bar text.
            fields: fields to read back from the store (default all).
            stored: fields of ``compute``'s result to store (default all; the others are
                zeros for rows read back).
            accept: ``accept(stored_rows, positions) -> bool mask`` of stored rows still
                valid (rejected rows are recomputed).
            precision: ``compute`` runs its passes under :meth:`autocast` (the key records
                ``--amp``); False for a computation always in float32.

        Returns:
            :class:`featrob.CachedRows`: ``rows[field]`` ``[R, ...]`` and ``rows.computed``.
        """
        return self._rows.rows(
            self.store_key(kind, params, precision=precision),
            row_keys,
            compute,
            batch_size=batch_size,
            batches=batches,
            label=label,
            fields=fields,
            stored=stored,
            accept=accept,
        )

    def cached_model(
        self,
        kind: str,
        params: dict[str, Any],
        module: torch.nn.Module,
        train: Callable[[], object],
    ) -> bool:
        """Train ``module`` once and keep its weights: the first call runs ``train()`` (which
        trains ``module`` in place) and saves ``module.state_dict()`` under
        ``$FEATROB_HOME/models``, keyed by ``kind``, ``params``, the run model's fingerprint
        and the data; later calls (later runs, the other ranks under torchrun) load it.

        Returns:
            True when the weights came from the cache.
        """

        key = {"kind": kind, "base": self.model_fingerprint, **self.data_key, **params}
        path = model_cache_path(key, prefix=kind)
        return cached_module(path, module, train, self.device)

    # ------------------------------------------------------------------ features
    def features(
        self, layer: str = "features", perturbation: Attack | str | None = None
    ) -> FeatureSet:
        """Outputs of ``layer`` for every analysed sample, computed once and stored.

        Args:
            layer: a layer name (``"features"``, ``"logits"``, ``"input"``, ``"conv2"``, ...).
            perturbation: None for clean inputs, an :class:`Attack`, or an attack spec string
                (instantiated with the run's eps, norm and seed).
        """
        return self.features_many([layer], perturbation)[layer]

    def features_many(
        self, layers: Sequence[str], perturbation: Attack | str | None = None
    ) -> dict[str, FeatureSet]:
        """Several layers from one pass (cheaper than separate :meth:`features` calls)."""
        attack = self.make_attack(perturbation) if isinstance(perturbation, str) else perturbation
        return self._extractor.features(layers, attack)

    def inputs(self, perturbation: Attack | str | None = None) -> Tensor:
        """Model inputs of every analysed sample: clean images or stored adversarial ones."""
        attack = self.make_attack(perturbation) if isinstance(perturbation, str) else perturbation
        return self._extractor.inputs(attack)

"""What a metric gets to work with: :class:`RunContext`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from featrob.attacks.base import Attack
from featrob.extract import AutocastForward, Extractor, FeatureSet, autocast_context
from featrob.seeding import derive_seed, sample_seeds
from featrob.specs import parse_call

if TYPE_CHECKING:
    from featrob.attacks.protocol import Evaluation, Plan
    from featrob.config import RunConfig
    from featrob.data.base import DatasetBundle, DataSplit
    from featrob.models.base import FeatrobModel
    from featrob.plugins import PluginHost
    from featrob.progress import Reporter
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
        progress: Reporter,
        model_fingerprint: str,
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
        self._extractor = Extractor(
            model,
            split,
            device,
            store,
            base_key={"model": model_fingerprint, **self.data_key},
            batch_size=config.batch_size,
            amp=config.amp,
            progress=progress,
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
        """The user's options for ``metric`` (``[metrics.NAME]`` in the config)."""
        return dict(self.config.metrics.get(metric, {}))

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
            from featrob.attacks.protocol import expand_presets

            spec = expand_presets(self.config.attacks)[0]
        name, spec_params = parse_call(spec)
        cls = self.attacks.get(name)
        return cls(
            eps=self.config.eps if eps is None else eps,
            norm=norm or self.config.norm,
            seed=self.config.seed if seed is None else seed,
            **{**spec_params, **params},
        )

    # ------------------------------------------------------------------ memory
    @property
    def memory_budget(self) -> int | None:
        """``--max-memory`` in bytes (None: no budget)."""
        from featrob.memory import parse_size

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
        from featrob.memory import chunk_for, footprint, loop_footprint, tame_allocator

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
        from featrob.attacks.protocol import expand_presets

        return [self.make_attack(spec) for spec in expand_presets(self.config.attacks)]

    def evaluate(
        self,
        attacks: Sequence[Attack | str | Plan] | None = None,
        *,
        eps: float | None = None,
        norm: str | None = None,
    ) -> Evaluation:
        """Robust accuracy of the analysed samples under ``attacks`` (default: the run's),
        AutoAttack style: attacks in order on the still-robust samples, per-sample worst case,
        masking checks; per-attack records go to the store, so a second run or a resumed one
        reuses them.
        """
        from featrob.attacks.protocol import evaluate

        model = (
            self.model
            if self.config.amp is None
            else AutocastForward(self.model, self.device, self.config.amp)
        )
        return evaluate(
            model,
            self.inputs(),
            self.labels,
            attacks if attacks is not None else self.config.attacks,
            eps=self.config.eps if eps is None else eps,
            norm=norm or self.config.norm,
            seed=self.config.seed,
            indices=self.indices,
            registry=self.attacks,
            batch_size=self.config.batch_size,
            store=self.store,
            store_key={"model": self.model_fingerprint, **self.data_key, "amp": self.config.amp},
            progress=self.progress,
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (``--amp``), or a no-op."""
        return autocast_context(self.device, self.config.amp)

    # ------------------------------------------------------------------ other models
    def variant(self, method: str | None = None, weights: str | None = None) -> RunContext:
        """The same run (data, samples, store, seeds) on another model: the run's model
        trained with training method ``method`` (trained once, then cached like the run's
        own model), or the checkpoint ``weights``. Metrics use it to compare models side by
        side (e.g. standard vs scale-aware training)."""
        import dataclasses

        from featrob.prepare import prepare_model

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
        )

    @property
    def model_label(self) -> str:
        """How comparison tables name the run's model: its training method, or "run model"
        for a checkpoint given with ``--weights``."""
        return "run model" if self.config.weights else self.config.train.method

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

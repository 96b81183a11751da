"""Run configuration: defaults < TOML file < command-line flags < ``--set key=value``.

The resolved configuration is saved with every run (``results.json`` and ``config.toml`` in
the output folder), so ``featrob run --config OUT/config.toml`` repeats a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from featrob.budgets import BUDGETS, budget_attacks
from featrob.errors import ConfigError
from featrob.specs import parse_fraction, parse_norm, parse_size, parse_value


def featrob_home() -> Path:
    """Where featrob keeps caches (trained models, the feature store): ``$FEATROB_HOME``,
    else ``~/.cache/featrob``."""
    return Path(os.environ.get("FEATROB_HOME") or Path.home() / ".cache" / "featrob")


@dataclass
class TrainConfig:
    """How a model is trained (``featrob train``, or ``featrob run`` without ``--weights``).

    Attributes:
        method: registered training method (``standard``, ``pgd``, ``trades``, plugins' own).
        epochs: passes over the training split (None: 30 for digits, 10 otherwise).
        batch_size, lr, optimizer (``adam``/``sgd``), weight_decay, schedule
            (``cosine``/``constant``): the optimiser.
        eps, norm: threat model of adversarial training (None: the run's eps and norm).
        attack_steps: PGD steps used inside adversarial training.
        trades_beta: weight of the TRADES KL term.
        augment: random crop (pad 4 for >= 28 px, 1 otherwise) and horizontal flip for
            3-channel images.
        n_per_class: train on a balanced subset.
        trainable: ``"all"`` parameters, or only the ``"head"`` on a frozen backbone (the
            backbone stays in eval mode, so its batch-norm statistics do not move either).
        method_options: extra options for the training method.
        init: checkpoint to start from instead of a fresh initialisation (the backbone
            must fit it; the head is loaded, adopted or fresh, see
            :func:`featrob.models.warm_start`), e.g. to fine-tune a plug-in head.
    """

    method: str = "standard"
    epochs: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    eps: float | None = None
    norm: str | None = None
    attack_steps: int = 10
    trades_beta: float = 6.0
    augment: bool = False
    n_per_class: int | None = None
    trainable: str = "all"
    method_options: dict[str, Any] = field(default_factory=dict)
    init: str | None = None

    def cache_key(self) -> dict[str, Any]:
        """What determines the trained weights, for cache keys: every field, and for a warm
        start the digest of the checkpoint file rather than only its path (``init`` is left
        out when unset, so models cached before the field existed stay valid)."""
        key = dataclasses.asdict(self)
        init = key.pop("init")
        if init is not None:
            key["init"] = {"path": init, "sha256": file_digest(init)}
        return key


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a file's bytes (None when it cannot be read: the load will say why)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


@dataclass
class RunConfig:
    """Everything ``featrob run`` needs; every field is also a TOML key and a ``--set`` key.

    Attributes:
        model: model spec (``small-cnn``, ``tv:resnet50``, ``pkg.module:factory``).
        model_options: options of the model factory (``feature_dim`` for vgg16, ...).
        head, head_options: replace the model's head (``l2``, ...).
        weights: checkpoint to load; without it the model is trained (and cached).
        model_dir: where model zoos keep downloaded weights (RobustBench's folder layout
            for ``rb:``); passed to model factories that take a ``model_dir`` parameter
            (None: each zoo's folder under ``$FEATROB_HOME``).
        normalize: the model's input normalisation, ``none``, ``dataset``, ``imagenet`` or
            ``MEAN/STD`` (``0.4914,0.4822,0.4465/0.2471,0.2435,0.2616``); None (default)
            lets the checkpoint card, the network or featrob's rule decide
            (:mod:`featrob.models.normalization`).
        dataset: data spec (``digits``, ``cifar10``, ``npz:PATH``, ``imagefolder:PATH``).
        data_root, download, data_options: where torchvision-format data lives, whether to
            download it, loader options.
        split: the split that metrics analyse (``test`` or ``train``).
        n_per_class: balanced per-class subsample of that split.
        budget: ``quick`` (default), ``standard`` or ``paper``: how much compute the run
            spends (:mod:`featrob.budgets`): the attacks when ``attacks`` is empty and each
            metric's options under the user's own.
        attacks: attack specs (``apgd-ce``, ``pgd(steps=20)``) or presets (``standard``:
            APGD-CE, APGD-T, FAB-T, Square as AutoAttack runs them); metrics that attack use
            them. Empty (default): the budget's (``quick``: ``apgd-ce(steps=20)``;
            ``standard`` and ``paper``: ``standard``); see :meth:`attack_specs`.
        eps, norm: the threat model.
        plugins: metric plugins to run (empty: every installed one).
        no_plugins: plugins whose metrics never run (``--no-plugin``).
        metrics: per-metric options, ``{metric name: {option: value}}``.
        out: output folder.
        store: feature store folder (None: ``$FEATROB_HOME/store``); ``"none"`` disables it.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: mixed precision for forward passes: None, ``bf16`` or ``fp16``.
        channels_last: run the model's convolutions in the channels-last memory format
            (faster on GPUs with tensor cores; logits agree with the default format to
            float tolerance, checked by a test).
        seed: the run seed (per-sample seeds derive from it).
        batch_size: evaluation batch size.
        max_memory: a memory budget (``"4GiB"``, ``"512MiB"``): chunk sizes (evaluation
            batches, sensitivity replicas, collision searches) are chosen from the measured
            per-input cost so that each pass fits it (:mod:`featrob.memory`); None keeps
            ``batch_size`` and the metrics' own defaults.
        threads: CPU threads for torch; None chooses them from the work and the CPUs this
            process may use (:mod:`featrob.threads`); ``OMP_NUM_THREADS`` also sets them.
        reports: reporter names (results.json is written whatever they are).
        quiet: no progress bars.
        train: training settings.
    """

    model: str = "small-cnn"
    model_options: dict[str, Any] = field(default_factory=dict)
    head: str | None = None
    head_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    normalize: str | None = None
    model_dir: str | None = None
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    data_options: dict[str, Any] = field(default_factory=dict)
    split: str = "test"
    n_per_class: int | None = None
    budget: str = "quick"
    attacks: list[str] = field(default_factory=list)
    eps: float = 0.1
    norm: str = "linf"
    plugins: list[str] = field(default_factory=list)
    no_plugins: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    out: str = "featrob-out"
    store: str | None = None
    device: str = "auto"
    amp: str | None = None
    channels_last: bool = False
    seed: int = 0
    batch_size: int = 256
    max_memory: str | None = None
    threads: int | None = None
    reports: list[str] = field(default_factory=lambda: ["json", "md", "html"])
    quiet: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build and validate a config from a (TOML-like) dict."""
        return _validate(_from_dict(cls, dict(data), prefix=""))

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
        sets: list[str] | None = None,
    ) -> RunConfig:
        """Defaults < TOML file at ``path`` < ``overrides`` (flags) < ``sets`` (``key=value``)."""
        data: dict[str, Any] = {}
        if path is not None:
            data = read_toml(path)
        for key, value in (overrides or {}).items():
            if value is not None:
                data[key] = value
        for item in sets or []:
            key, value = parse_set(item)
            if key in RAW_STRING_KEYS:  # "none" and "0.5/0.5" are not None and 1.0 here
                value = item.partition("=")[2].strip()
            _assign_dotted(data, key, value)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the resolved config saved with results)."""
        return dataclasses.asdict(self)

    def attack_specs(self) -> list[str]:
        """The run's attack specs (presets not expanded): ``attacks``, else the budget's."""
        return list(self.attacks) or budget_attacks(self.budget)

    def store_path(self) -> Path | None:
        """The feature store folder, or None when disabled."""
        if self.store is not None and str(self.store).lower() == "none":
            return None
        return Path(self.store) if self.store else featrob_home() / "store"


#: ``--set`` keys whose value is text to keep as given, not a literal to parse.
RAW_STRING_KEYS = frozenset({"normalize"})


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML config file; a missing or malformed file is a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None


def parse_set(item: str) -> tuple[str, Any]:
    """``"metrics.scale.sections=20"`` -> ``("metrics.scale.sections", 20)``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    return key.strip(), parse_value(value)


def _assign_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a table")
        node = child
    node[parts[-1]] = value


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
        raise ConfigError(f"unknown config key {prefix + key!r}{hint}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        if f.type in ("TrainConfig",):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {prefix + name!r} must be a table")
            kwargs[name] = _from_dict(TrainConfig, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, str(f.type), value)
    return cls(**kwargs)


def _coerce(key: str, annotation: str, value: Any) -> Any:
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key {key!r} cannot be empty")
    base = annotation.replace(" | None", "")
    try:
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            return parse_fraction(value, key)
        if base == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if base == "str":
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if base.startswith("list"):
            items = value if isinstance(value, list) else [v for v in str(value).split(",") if v]
            return [str(v).strip() for v in items]
        if base.startswith("dict"):
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (ValueError, TypeError):
        raise ConfigError(f"config key {key!r} must be {base}, got {value!r}") from None
    return value


def _validate(cfg: RunConfig) -> RunConfig:

    cfg.norm = parse_norm(cfg.norm)
    if cfg.budget not in BUDGETS:
        close = difflib.get_close_matches(str(cfg.budget), BUDGETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"budget must be one of {', '.join(BUDGETS)}, got {cfg.budget!r}{hint}")
    if cfg.norm == "linf" and cfg.eps > 1:
        raise ConfigError(f"Linf eps must be in [0, 1] for [0, 1] images, got {cfg.eps}")
    if cfg.train.norm is not None:
        cfg.train.norm = parse_norm(cfg.train.norm)
    for key in ("batch_size",):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    if cfg.threads is not None and (
        isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int) or cfg.threads < 1
    ):
        raise ConfigError(f"threads must be a positive integer, got {cfg.threads!r}")
    if cfg.max_memory is not None:
        cfg.max_memory = str(cfg.max_memory)
        parse_size(cfg.max_memory)
    if cfg.n_per_class is not None and cfg.n_per_class <= 0:
        raise ConfigError(f"n_per_class must be positive, got {cfg.n_per_class}")
    if cfg.split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {cfg.split!r}")
    if cfg.normalize is not None:
        from featrob.models.normalization import parse_request

        parse_request(cfg.normalize)
    if cfg.amp not in (None, "bf16", "fp16"):
        raise ConfigError(f"amp must be 'bf16' or 'fp16' (or unset), got {cfg.amp!r}")
    for name, options in cfg.metrics.items():
        if not isinstance(options, dict):
            raise ConfigError(f"config key 'metrics.{name}' must be a table of options")
    if cfg.train.trainable not in ("all", "head"):
        raise ConfigError(f"train.trainable must be 'all' or 'head', got {cfg.train.trainable!r}")
    if cfg.train.epochs is not None and cfg.train.epochs <= 0:
        raise ConfigError(f"train.epochs must be positive, got {cfg.train.epochs}")
    if cfg.train.init is not None and not Path(cfg.train.init).is_file():
        raise ConfigError(f"train.init: checkpoint not found: {cfg.train.init}")
    return cfg


def to_toml(data: dict[str, Any]) -> str:
    """Write a config dict as TOML (strings, numbers, bools, lists, nested tables; None
    values are left out, as TOML has no null)."""
    lines: list[str] = []
    _emit_table(lines, [], data)
    return "\n".join(lines).strip() + "\n"


def _emit_table(lines: list[str], path: list[str], table: dict[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append(f"\n[{'.'.join(_key(p) for p in path)}]")
    for key, value in scalars.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables.items():
        _emit_table(lines, [*path, key], value)


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum()
    return key if bare else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value if v is not None) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'

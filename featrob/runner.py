"""``featrob.run(config)``: the whole analysis, as the CLI runs it.

Order: select plugins, load data, get the model (load or train once), open the store, run
each metric in its own try/except (a failing metric is recorded with its traceback and the
others still run), write results after every metric (nothing finished is lost), then let
every reporter render the results.

Under ``torchrun`` every rank runs this function; the batch loops share their work
(:mod:`featrob.distributed`), rank 0 trains the model before the others load it, and only
rank 0 writes the results folder.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

import featrob
from featrob import distributed
from featrob.attacks.factory import expand_presets, make_attack
from featrob.budgets import budget_options
from featrob.config import RunConfig, to_toml
from featrob.context import RunContext
from featrob.errors import ConfigError, FeatrobError, PluginLoadError, UnknownNameError
from featrob.memory import chunk_for, footprint, tame_allocator
from featrob.model_checks import loaded_model_warnings
from featrob.paths import check_output_folder, store_writable
from featrob.plugins import PluginHost, get_plugin_host
from featrob.prepare import load_run_data, prepare_model, resolve_device
from featrob.progress import ProgressBars
from featrob.registry import Entry
from featrob.results import MetricResult, Results
from featrob.run_warnings import collected, warn
from featrob.specs import parse_size, split_spec
from featrob.store import MARKER, FeatureStore
from featrob.threads import ThreadChoice, choose_threads


def select_metrics(config: RunConfig, host: PluginHost) -> tuple[list[Entry[Any]], list[str]]:
    """The metrics to run and error lines for broken plugins.

    With ``config.plugins`` empty every installed metric runs and a broken plugin is an error
    line in the results; a plugin named in ``config.plugins`` must load (else the run stops
    here, naming it) and must register at least one metric. Metrics of the plugins in
    ``config.no_plugins`` never run (``--no-plugin``; an unknown name is an error).
    """
    excluded = set(config.no_plugins)
    for name in excluded:
        if name not in host.plugins:
            raise UnknownNameError("plugin", name, [p for p in host.plugins if " " not in p])
    if not config.plugins:
        errors = [
            f"plugin {p.name!r} failed to load: {p.error}"
            for p in host.broken()
            if p.name not in excluded
        ]
        return [e for e in host.metrics if e.plugin not in excluded], errors
    infos = [host.require(name) for name in config.plugins]  # loads file/module plugins
    registry = host.metrics
    chosen: list[Entry[Any]] = []
    for info in infos:
        if info.name in excluded:
            raise ConfigError(f"plugin {info.name!r} is both selected and excluded (--no-plugin)")
        names = registry.by_plugin(info.name)
        if not names:
            raise PluginLoadError(f"plugin {info.name!r} registers no metric; nothing to run")
        chosen += [registry.entry(n) for n in names if registry.entry(n) not in chosen]
    # broken plugins that were not asked for do not fail an explicit selection
    return chosen, []


def check_before_work(config: RunConfig, host: PluginHost, metrics: list[Entry[Any]]) -> None:
    """Fail on unknown attacks, attack parameters and metric options before any training or
    data loading, so a typo costs a second, not a run."""

    for spec in expand_presets(config.attack_specs()):
        make_attack(spec, eps=config.eps, norm=config.norm, seed=config.seed, registry=host.attacks)
    for entry in metrics:
        entry.obj(**budget_options(entry.obj, config.budget, config.metrics.get(entry.name)))


def check_config(config: RunConfig, host: PluginHost) -> list[str]:
    """Everything a run can check without data or compute: plugins, metrics and their
    options, attacks and their parameters, reporters, the model and data set names and the
    training method. Returns the names of the metrics the run would execute.

    Raises:
        FeatrobError: the first problem found, as one line (close matches for names).
    """
    metrics, _ = select_metrics(config, host)
    for name in config.reports:
        host.reporters.get(name)
    check_before_work(config, host, metrics)
    check_model_config(config, host, training=not config.weights)
    return [entry.name for entry in metrics]


def check_model_config(config: RunConfig, host: PluginHost, *, training: bool = True) -> None:
    """The model, data set, head and (when ``training``) training method names exist; what
    ``featrob train --check`` checks. A ``module:factory`` model is imported only by a real
    run or training.

    Raises:
        FeatrobError: the first unknown name, with close matches.
    """

    model_name, arg = split_spec(config.model)
    if model_name in host.models or not ("." in model_name or arg is not None):
        host.models.get(model_name)
    host.datasets.get(split_spec(config.dataset)[0])
    if training:
        host.training_methods.get(config.train.method)
    if config.head is not None:
        host.heads.get(config.head)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware of this run (saved so it can be repeated)."""

    try:
        torchvision_version = version("torchvision")  # importing torchvision costs seconds
    except PackageNotFoundError:
        torchvision_version = None
    env = {
        "pid": os.getpid(),  # with hostname: tells a killed run's results.json from a live one
        "hostname": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision_version,
        "numpy": np.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def run(
    config: RunConfig | dict[str, Any] | None = None,
    *,
    host: PluginHost | None = None,
    progress: ProgressBars | None = None,
) -> Results:
    """Run every selected metric and write the reports.

    Args:
        config: a :class:`RunConfig`, a dict of config keys, or None for the defaults.
        host: plugin host (default: every installed plugin).
        progress: progress bars (default: quiet when ``config.quiet``).

    Returns:
        The results; ``results.failed`` is True when a metric or plugin failed.
    """
    if config is None:
        config = RunConfig()
    elif isinstance(config, dict):
        config = RunConfig.from_dict(config)
    host = host or get_plugin_host()
    metrics, errors = select_metrics(config, host)
    # results.json is the core's (written after every metric); reporters render the rest
    reporters = [host.reporters.get(name) for name in config.reports if name != "json"]
    check_before_work(config, host, metrics)
    out = Path(config.out)
    check_output_folder(out)  # before any work: a run must not lose its results
    device = resolve_device(config.device)
    warned: list[str] = []  # run-level warnings, one plain line each
    with distributed.joined(device) as here:  # torchrun: work with the other ranks
        device = distributed.local_device(device)
        progress = progress or ProgressBars(quiet=config.quiet or not here.main)
        log = progress.log if here.main else (lambda _line: None)
        threads = torch.get_num_threads()  # the run chooses its own; the caller's come back
        try:
            with collected(warned, log):
                return _run(
                    config, host, metrics, errors, reporters, out, device, here, progress, warned
                )
        finally:
            torch.set_num_threads(threads)


def _run(
    config: RunConfig,
    host: PluginHost,
    metrics: list[Entry[Any]],
    errors: list[str],
    reporters: list[Any],
    out: Path,
    device: torch.device,
    here: distributed.World,
    progress: ProgressBars,
    warned: list[str],
) -> Results:
    torch.manual_seed(config.seed)
    data = load_run_data(config, host)
    split = data.split(config.split)
    if config.n_per_class:
        split = split.balanced_subset(config.n_per_class, config.seed)
    chosen: list[ThreadChoice] = []

    def size_threads(built: torch.nn.Module) -> None:  # before training: it runs on them too
        probe = split.float_images(torch.arange(min(len(split), config.batch_size, 32)))
        chosen.append(choose_threads(built.eval(), probe, device, config.threads))

    # rank 0 trains first
    model, card = prepare_model(config, data, host, device, progress, on_built=size_threads)
    config, memory = _fit_batch_to_budget(config, model, split, device)
    store, read_only = open_store(config.store_path())
    fingerprint = model.fingerprint()
    ctx = RunContext(
        config,
        model,
        data,
        split,
        device,
        host,
        store,
        progress,
        fingerprint,
        store_read_only=read_only,
    )

    resolved = config.to_dict()
    resolved["sample_indices"] = split.indices.tolist()
    results = Results(
        featrob=featrob.__version__,
        config=resolved,
        plugins=host.versions(),
        errors=errors,
        environment={
            **environment(device),
            "model_fingerprint": fingerprint,
            "model_card": card,
            "normalization": model.normalization.to_json(),
            "world_size": here.size,
            "memory": memory,
            "thread_choice": chosen[0].to_json() if chosen else None,
        },
        warnings=warned,  # the same list: warnings raised from now on land in results.json
        status="running",
        pending=[entry.name for entry in metrics],
    )
    if here.main:  # one results folder and one report, whatever the number of ranks
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(to_toml({k: v for k, v in config.to_dict().items()}))
        results.save(out)  # status "running": a reader can tell partial results from final
    try:
        if config.weights or model.pretrained:  # weights featrob did not train: check them
            for line in _checked(loaded_model_warnings, ctx, results.errors):
                warn(line)
        results.errors += host.call("featrob_run_start", context=ctx)
        started = time.perf_counter()
        for i, entry in enumerate(metrics):
            progress.log(run_progress_line(i, len(metrics), entry.name, results, started))
            result = _run_metric(entry, ctx, progress)
            results.metrics[entry.name] = result
            results.pending.remove(entry.name)
            results.errors += host.call(
                "featrob_metric_result", name=entry.name, result=result, context=ctx
            )
            if here.main:
                results.save(out)  # keep what is finished, whatever happens next
        results.errors += host.call("featrob_run_end", results=results, context=ctx)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a lost rank: say so in results.json
        interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
        results.status = "interrupted" if interrupted else "failed"
        if not interrupted:
            results.errors.append(f"run failed: {type(exc).__name__}: {exc}")
        if here.main:
            results.save(out)
        raise
    results.status = "complete"
    for reporter_cls in reporters if here.main else []:
        try:
            reporter_cls().write(results, out)
        except Exception as exc:
            results.errors.append(
                f"reporter {reporter_cls.name!r} failed: {type(exc).__name__}: {exc}"
            )
    if here.main:
        results.save(out)
    return results


def open_store(path: Path | None) -> tuple[FeatureStore | None, bool]:
    """The run's feature store and whether it is read-only (None: ``--store none``, or a
    store that can neither be created nor read). A store that cannot be written is read,
    and new rows stay in memory: said once, never a failure."""
    if path is None:
        return None, False
    if store_writable(path):
        return FeatureStore(path), False
    if (path / MARKER).is_file():
        warn(
            f"feature store {path} is read-only: reusing what it holds, keeping new work in "
            "memory (give a writable --store, or --store none)"
        )
        return FeatureStore(path), True
    warn(
        f"cannot create a feature store at {path}: nothing is reused or kept "
        "(give a writable --store or FEATROB_HOME, or --store none)"
    )
    return None, False


def _checked(check: Any, ctx: RunContext, errors: list[str]) -> list[str]:
    """A check's warnings; a check that fails is an error line, not a failed run."""
    try:
        return list(check(ctx))
    except Exception as exc:
        errors.append(f"model check {check.__name__} failed: {type(exc).__name__}: {exc}")
        return []


def _fit_batch_to_budget(
    config: RunConfig, model: torch.nn.Module, split: Any, device: torch.device
) -> tuple[RunConfig, dict[str, Any] | None]:
    """With ``--max-memory``, the evaluation batch whose forward/backward pass fits it.

    The per-input cost is measured on the model (:func:`featrob.memory.footprint`); the
    resolved config records the batch size chosen. Attacks that replicate their inputs
    (batched restarts) hold that many passes at once: give them the budget divided by their
    replication, or ``batch_restarts=false``.
    """

    budget = parse_size(config.max_memory)
    if budget is None:
        return config, None
    tame_allocator()  # freed memory back to the kernel, so the budget holds for the run
    fp = footprint(model, split.float_images(torch.arange(1)).to(device), budget=budget)
    batch = chunk_for(budget, fp.per_input, fixed=fp.fixed, default=config.batch_size)
    memory = {
        "budget_bytes": budget,
        "per_input_bytes": fp.per_input,
        "fixed_bytes": fp.fixed,
        "batch_size": batch,
    }
    return dataclasses.replace(config, batch_size=batch), memory


def run_progress_line(i: int, n: int, name: str, results: Results, started: float) -> str:
    """``metric 3/8 compression · 0:42 elapsed · about 1:10 left``: the run-level progress
    line printed above each metric's own bars (the estimate: the finished metrics' mean
    time for each one left; none before the first has finished)."""
    elapsed = time.perf_counter() - started
    line = f"metric {i + 1}/{n} {name} · {_clock(elapsed)} elapsed"
    done = [m.duration_s for m in results.metrics.values()]
    if done:
        line += f" · about {_clock(sum(done) / len(done) * (n - i))} left"
    return line


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _run_metric(entry: Entry[Any], ctx: RunContext, progress: ProgressBars) -> MetricResult:
    start = time.perf_counter()
    try:
        metric = entry.obj(**ctx.options(entry.name))
        result = metric.compute(ctx)
        if not isinstance(result, MetricResult):
            raise TypeError(
                f"metric {entry.name!r} returned {type(result).__name__}, not MetricResult"
            )
    except (FeatrobError, ConfigError) as exc:
        result = MetricResult(error=f"{type(exc).__name__}: {exc}")
    except Exception:
        result = MetricResult(error=traceback.format_exc())
    result.duration_s = time.perf_counter() - start
    return result

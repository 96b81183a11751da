"""The built-in subcommands: ``run``, ``report``, ``train`` and ``plugins``."""

import contextlib
import dataclasses
import json
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from featrob.cli_options import (
    ConfigOpt,
    DataRootOpt,
    DatasetOpt,
    DeviceOpt,
    DownloadOpt,
    EpsOpt,
    HeadOpt,
    ModelDirOpt,
    ModelOpt,
    NormalizeOpt,
    NormOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
)
from featrob.config import RunConfig
from featrob.errors import ConfigError, DuplicateNameError
from featrob.paths import folder_problem
from featrob.plugins import KINDS, PluginHost

Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def _overrides(**flags: Any) -> dict[str, Any]:
    """Flags the user gave (None and False mean 'not given')."""
    return {k: v for k, v in flags.items() if v is not None and v is not False and v != []}


def add_run_command(
    app: typer.Typer, host_factory: Callable[[], PluginHost], friendly: Wrap
) -> None:
    """Add ``featrob run``."""

    @app.command("run")
    @friendly
    def run_command(
        plugin: Annotated[
            list[str] | None,
            typer.Option("--plugin", "-p", help="Metric plugin to run (repeatable; default: all)."),
        ] = None,
        no_plugin: Annotated[
            list[str] | None,
            typer.Option("--no-plugin", help="Plugin whose metrics do not run (repeatable)."),
        ] = None,
        model: ModelOpt = None,
        weights: Annotated[
            str | None,
            typer.Option(
                "--weights", "-w", help="Checkpoint to load (else the model is trained and cached)."
            ),
        ] = None,
        normalize: NormalizeOpt = None,
        model_dir: ModelDirOpt = None,
        head: HeadOpt = None,
        dataset: DatasetOpt = None,
        data_root: DataRootOpt = None,
        download: DownloadOpt = False,
        split: Annotated[
            str | None, typer.Option("--split", help="Split to analyse: test or train.")
        ] = None,
        n_per_class: Annotated[
            int | None, typer.Option("--n-per-class", help="Balanced subsample of the split.")
        ] = None,
        attack: Annotated[
            list[str] | None,
            typer.Option(
                "--attack", "-a", help="Attack spec, e.g. pgd or 'pgd(steps=20)' (repeatable)."
            ),
        ] = None,
        budget: Annotated[
            str | None,
            typer.Option(
                "--budget",
                "-b",
                help="quick (default: about a minute; robust accuracy an upper bound), "
                "standard (AutoAttack's standard version) or paper (the papers' settings).",
            ),
        ] = None,
        eps: EpsOpt = None,
        norm: NormOpt = None,
        out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder.")] = None,
        store: Annotated[
            str | None, typer.Option("--store", help="Feature store folder ('none' disables it).")
        ] = None,
        device: DeviceOpt = None,
        amp: Annotated[
            str | None, typer.Option("--amp", help="Mixed precision: bf16 or fp16.")
        ] = None,
        seed: SeedOpt = None,
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", help="Evaluation batch size.")
        ] = None,
        channels_last: Annotated[
            bool,
            typer.Option("--channels-last", help="Channels-last convolutions (GPU speed)."),
        ] = False,
        max_memory: Annotated[
            str | None,
            typer.Option(
                "--max-memory",
                help="Memory budget, e.g. 4GiB: chunk sizes are chosen to fit it.",
            ),
        ] = None,
        threads: Annotated[
            int | None,
            typer.Option("--threads", help="CPU threads (default: chosen from the work)."),
        ] = None,
        report: Annotated[
            str | None, typer.Option("--report", help="Comma-separated reporters, e.g. json,md.")
        ] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        quiet: QuietOpt = False,
        check: Annotated[
            bool,
            typer.Option(
                "--check",
                help="Validate the config and print the plan (data, attacks, passes per "
                "metric); no training, no attack.",
            ),
        ] = False,
    ) -> None:
        """Analyse a model: run every selected metric and write a report folder."""
        from featrob.distributed import launched
        from featrob.runner import run
        from featrob.specs import parse_fraction

        flags = _overrides(
            plugins=plugin,
            no_plugins=no_plugin,
            model=model,
            weights=weights,
            normalize=normalize,
            model_dir=model_dir,
            head=head,
            dataset=dataset,
            data_root=data_root,
            download=download,
            split=split,
            n_per_class=n_per_class,
            attacks=attack,
            budget=budget,
            eps=parse_fraction(eps) if eps is not None else None,
            norm=norm,
            out=out,
            store=store,
            device=device,
            amp=amp,
            seed=seed,
            batch_size=batch_size,
            max_memory=max_memory,
            threads=threads,
            channels_last=channels_last,
            reports=report.split(",") if report else None,
            quiet=quiet,
        )
        cfg = RunConfig.load(config, flags, set_)
        if check:
            _check_and_plan(cfg, host_factory())
            return
        with _sigterm_interrupts():  # results.json then says "interrupted"
            results = run(cfg, host=host_factory())
        here = launched()  # the group is closed by now
        if here.main:  # under torchrun, rank 0 speaks for the run
            _print_summary(results, Path(cfg.out))
        elif results.failed:  # other ranks only say why they fail
            for line in results.failure_lines():
                typer.echo(f"featrob: rank {here.rank}: {line}", err=True)
        if results.failed:
            raise typer.Exit(1)


def _check_and_plan(cfg: RunConfig, host: PluginHost) -> None:
    """``featrob run --check``: names and options first (a typo costs a second), then the
    plan, which loads the data and builds the model's architecture (data or weights that
    are not there yet leave the config valid: one ``no plan: ...`` line)."""
    from featrob.plan import format_plan
    from featrob.run_plan import plan_info, plan_rows
    from featrob.runner import check_config

    names = check_config(cfg, host)
    typer.echo(f"config ok: {len(names)} metrics ({', '.join(names)})")
    metrics = [host.metrics.entry(name) for name in names]  # plugins are loaded by now
    try:  # the config is fine; without the data or the model there is only no plan
        info = plan_info(cfg, host)
    except Exception as exc:
        typer.echo(f"no plan: {exc}")
        return
    for line in format_plan(info, plan_rows(cfg, metrics, info)):
        typer.echo(line)


def add_report_command(
    app: typer.Typer, host_factory: Callable[[], PluginHost], friendly: Wrap
) -> None:
    """Add ``featrob report``."""

    @app.command("report")
    @friendly
    def report_command(
        run_dir: Annotated[Path, typer.Argument(help="A finished run's output folder.")],
        report: Annotated[
            str | None,
            typer.Option("--report", help="Comma-separated reporters (default: the run's)."),
        ] = None,
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="Write here instead of RUN_DIR.")
        ] = None,
    ) -> None:
        """Re-render a finished run's reports from its results.json, computing nothing."""
        from featrob.results import Results

        if not (run_dir / "results.json").is_file():
            raise ConfigError(f"{run_dir} has no results.json (is it a featrob run folder?)")
        results = Results.load(run_dir)
        default = results.config.get("reports") or RunConfig().reports
        names = report.split(",") if report else default
        registry = host_factory().reporters
        reporters = [registry.get(name.strip()) for name in names]
        target = out or run_dir
        for reporter_cls in reporters:
            for path in reporter_cls().write(results, target):
                typer.echo(f"wrote {path}")
        _print_summary(results, target)


def _print_summary(results: Any, out: Path) -> None:
    """The terminal table at the end of a run. Text from metrics and errors is escaped: a
    message like ``[/path/file.cc:545]`` is text, not rich markup."""
    from rich.markup import escape

    console = Console()
    table = Table(title="featrob results", show_lines=False)
    table.add_column("metric")
    table.add_column("status")
    table.add_column("summary")
    table.add_column("time", justify="right")
    for name, metric in results.metrics.items():
        if metric.error:
            last = escape(metric.error_line)
            table.add_row(escape(name), "[red]failed[/red]", last, f"{metric.duration_s:.1f}s")
            continue
        parts = [
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in list(metric.summary.items())[:6]
        ]
        table.add_row(escape(name), "ok", escape(", ".join(parts)), f"{metric.duration_s:.1f}s")
    _print_findings(console, results)
    if results.normalization_line:
        console.print(
            f"model {escape(str(results.config.get('model')))}: "
            f"{escape(results.normalization_line)}"
        )
    console.print(table)
    if results.status_line:
        console.print(f"[red]{escape(results.status_line)}[/red]")
    for line in results.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}")
    noted = [(n, w) for n, m in results.metrics.items() if not m.error for w in m.warnings]
    for name, line in noted[:TERMINAL_METRIC_WARNINGS]:
        console.print(f"[yellow]{escape(name)}:[/yellow] {escape(line)}")
    if len(noted) > TERMINAL_METRIC_WARNINGS:
        more = len(noted) - TERMINAL_METRIC_WARNINGS
        console.print(f"({more} more metric warnings in the report)")
    for err in results.errors:
        console.print(f"[red]error:[/red] {escape(err)}")
    console.print(f"report: {out.resolve()}")


#: Metric warnings (gradient masking suspected, a quick robust accuracy's upper bound, ...)
#: the terminal summary shows; the reports have all of them.
TERMINAL_METRIC_WARNINGS = 5


#: Findings the terminal summary shows (the reports have all of them).
TERMINAL_FINDINGS = 6


def _print_findings(console: Console, results: Any) -> None:
    """The top-ranked findings, first in the terminal summary (nothing when there are none)."""
    from rich.markup import escape

    found = results.findings
    if not found:
        return
    console.print("[bold]Findings[/bold]")
    grid = Table.grid(padding=(0, 1))  # numbered, wrapped lines indented under their text
    grid.add_column(justify="right")
    grid.add_column()
    for k, (name, finding) in enumerate(found[:TERMINAL_FINDINGS], 1):
        grid.add_row(f"{k}.", f"{escape(finding.text)} [dim]({escape(name)})[/dim]")
    if len(found) > TERMINAL_FINDINGS:
        grid.add_row("", f"({len(found) - TERMINAL_FINDINGS} more in the report)")
    console.print(grid)


def add_train_command(
    app: typer.Typer, host_factory: Callable[[], PluginHost], friendly: Wrap
) -> None:
    """Add ``featrob train``."""

    @app.command("train")
    @friendly
    def train_command(
        out: Annotated[
            Path,
            typer.Option(
                "--out", "-o", help="Checkpoint file to write (a .json card goes beside it)."
            ),
        ],
        model: ModelOpt = None,
        dataset: DatasetOpt = None,
        method: Annotated[
            str | None,
            typer.Option("--method", help="standard, pgd, trades, or a plugin's method."),
        ] = None,
        eps: EpsOpt = None,
        norm: NormOpt = None,
        epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs.")] = None,
        lr: Annotated[float | None, typer.Option("--lr", help="Learning rate.")] = None,
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", help="Training batch size.")
        ] = None,
        augment: Annotated[
            bool, typer.Option("--augment", help="Random crops (and flips for colour images).")
        ] = False,
        head: HeadOpt = None,
        normalize: NormalizeOpt = None,
        model_dir: ModelDirOpt = None,
        init: Annotated[
            Path | None,
            typer.Option(
                "--init",
                help="Start from this checkpoint (e.g. fine-tune a new --head on its "
                "backbone; with --set train.trainable=head the backbone stays frozen).",
            ),
        ] = None,
        data_root: DataRootOpt = None,
        download: DownloadOpt = False,
        device: DeviceOpt = None,
        seed: SeedOpt = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        quiet: QuietOpt = False,
        check: Annotated[
            bool,
            typer.Option("--check", help="Only validate the settings (names, files); no training."),
        ] = False,
    ) -> None:
        """Train a model and write a checkpoint with a JSON card (accuracies, versions)."""
        from featrob.prepare import build, fit, load_run_data, resolve_device, write_checkpoint
        from featrob.progress import ProgressBars
        from featrob.runner import check_model_config
        from featrob.specs import parse_fraction

        flags = _overrides(
            model=model,
            dataset=dataset,
            eps=parse_fraction(eps) if eps is not None else None,
            norm=norm,
            head=head,
            normalize=normalize,
            model_dir=model_dir,
            data_root=data_root,
            download=download,
            device=device,
            seed=seed,
            quiet=quiet,
        )
        train_flags = _overrides(
            method=method,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            augment=augment,
            init=str(init) if init is not None else None,
        )
        cfg = RunConfig.load(config, flags, set_)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_flags))
        host = host_factory()
        check_model_config(cfg, host)  # unknown names fail before loading data
        if check:
            typer.echo(f"config ok: train {cfg.model} on {cfg.dataset} with {cfg.train.method}")
            return
        problem = folder_problem(Path(out).parent)
        if problem is None and Path(out).is_dir():
            problem = f"{out} is a folder"
        if problem is not None:  # before training: the checkpoint must have somewhere to go
            raise ConfigError(f"cannot write the checkpoint {out}: {problem}; give another --out")
        progress = ProgressBars(quiet=cfg.quiet)
        data = load_run_data(cfg, host)
        net = build(cfg, data, host)
        card = fit(
            net,
            data,
            cfg.train,
            host,
            eps=cfg.eps,
            norm=cfg.norm,
            device=resolve_device(cfg.device),
            seed=cfg.seed,
            progress=progress,
        )
        card_path = write_checkpoint(net.cpu(), out, card)
        typer.echo(
            f"{cfg.model} on {data.spec} ({cfg.train.method}, {card['epochs']} epochs, "
            f"{card['duration_s']:.0f}s): clean accuracy {card['clean_accuracy']:.4f}, "
            f"PGD-20 accuracy {card['pgd_accuracy']:.4f} ({card['threat_model']['norm']}, "
            f"eps={card['threat_model']['eps']:g}, {card['eval_n']} test images)"
        )
        typer.echo(f"wrote {out} and {card_path}")


def add_plugins_command(
    app: typer.Typer, host_factory: Callable[[], PluginHost], friendly: Wrap
) -> None:
    """Add ``featrob plugins``."""

    @app.command("plugins")
    @friendly
    def plugins_command(
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """List installed plugins: source, distribution, version, what they register, errors."""
        host = host_factory()
        problem = None
        try:
            host.build_all()
        except DuplicateNameError as exc:
            problem = str(exc)
        infos = list(host.plugins.values())
        if as_json:
            typer.echo(dump_json([dataclasses.asdict(p) | {"ok": p.ok} for p in infos]))
        else:
            table = Table(title="featrob plugins")
            for col in ("plugin", "source", "distribution", "registers", "status"):
                table.add_column(col)
            for p in infos:
                registers = "; ".join(
                    f"{kind.replace('_', ' ')}: {', '.join(names)}"
                    for kind, names in p.registers.items()
                    if kind in KINDS
                )
                dist = f"{p.distribution} {p.version}" if p.distribution else p.target
                status = "ok" if p.ok else f"[red]error: {p.error}[/red]"
                table.add_row(p.name, p.source, dist, registers or "-", status)
            Console(width=200).print(table)
        if problem:
            typer.secho(f"featrob: error: {problem}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2)


def dump_json(data: Any) -> str:
    """Indented JSON for terminal output."""
    return json.dumps(data, indent=2, default=str)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's timeout) ends the run like Ctrl-C: it unwinds, so the
    run records itself as interrupted. Only in the main thread (signals need it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

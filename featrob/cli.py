"""The ``featrob`` command line: a thin layer over :func:`featrob.run` and friends.

Built by :func:`create_app` so tests get a fresh app (and plugin host) each time. Every
:class:`~featrob.errors.FeatrobError` becomes one line on stderr and a non-zero exit code,
never a traceback.
"""

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

import featrob
from featrob.errors import FeatrobError
from featrob.plugins import PluginHost, get_plugin_host

F = TypeVar("F", bound=Callable[..., Any])

HELP = """featrob: why is this image classifier fragile?

Which samples, features and layers make a PyTorch classifier fragile, and how far it is
from the best achievable robustness. `featrob run` with no arguments trains a small CNN on the
bundled 8x8 digits and analyses it offline.
"""


def _friendly(func: F) -> F:
    """Turn user errors into one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FeatrobError as exc:
            typer.secho(f"featrob: error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.secho("featrob: interrupted; finished work is kept in the store", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def create_app(host_factory: Callable[[], PluginHost] = get_plugin_host) -> typer.Typer:
    """Build the ``featrob`` Typer app.

    Args:
        host_factory: returns the plugin host the commands use (tests pass one with
            in-memory plugins).
    """
    app = typer.Typer(
        name="featrob",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )

    def version_callback(value: bool) -> None:
        if value:
            typer.echo(f"featrob {featrob.__version__}")
            raise typer.Exit()

    @app.callback()
    def main_options(
        version: Annotated[
            bool,
            typer.Option(
                "--version", callback=version_callback, is_eager=True, help="Print the version."
            ),
        ] = False,
    ) -> None:
        """featrob: robustness analysis of image classifiers."""

    from featrob.cli_commands import (
        add_plugins_command,
        add_report_command,
        add_run_command,
        add_train_command,
    )

    add_run_command(app, host_factory, _friendly)
    add_report_command(app, host_factory, _friendly)
    add_train_command(app, host_factory, _friendly)
    add_plugins_command(app, host_factory, _friendly)
    _add_plugin_commands(app, host_factory)
    return app


def _add_plugin_commands(app: typer.Typer, host_factory: Callable[[], PluginHost]) -> None:
    """Let plugins add subcommands; a failing plugin is reported, not fatal."""
    try:
        host = host_factory()
    except Exception as exc:  # never let plugin trouble break --help
        typer.secho(f"featrob: warning: plugins unavailable: {exc}", err=True)
        return
    for error in host.call("featrob_register_commands", app=app):
        typer.secho(f"featrob: warning: {error}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app = create_app()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="featrob")


__all__ = ["Path", "create_app", "main"]

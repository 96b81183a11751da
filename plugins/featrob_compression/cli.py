"""``featrob compression theory``: the paper's synthetic experiments from the command line."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer


def _dims(text: str) -> list[int]:
    try:
        dims = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        dims = []
    if not dims or any(d < 2 for d in dims):
        raise typer.BadParameter(f"expected comma-separated integers >= 2, got {text!r}")
    return dims


def add_commands(app: typer.Typer) -> None:
    """Attach the ``compression`` command group to the featrob app."""
    group = typer.Typer(
        help="Feature-compression plugin (paper 001): synthetic experiments.",
        no_args_is_help=True,
        add_completion=False,
    )

    @group.command("theory")
    def theory(
        experiment: Annotated[
            str, typer.Option(help="linear (Theorem 6), relu (Theorem 7) or all.")
        ] = "all",
        linear_dims: Annotated[
            str, typer.Option(help="Input dimensions n of the linear experiment.")
        ] = "10",
        relu_dims: Annotated[
            str, typer.Option(help="Input dimensions n of the ReLU experiment.")
        ] = "10,20,40,80",
        runs: Annotated[int, typer.Option(min=1, help="Valid linear runs per n.")] = 10,
        networks: Annotated[int, typer.Option(min=1, help="Accurate ReLU networks per n.")] = 50,
        scale: Annotated[
            float,
            typer.Option(
                min=0.0, help="Factor on every column of H but the last (both experiments)."
            ),
        ] = 1.0,
        hidden: Annotated[
            int | None, typer.Option(min=1, help="Hidden width (default: 32 linear, 64 ReLU).")
        ] = None,
        steps: Annotated[
            int | None,
            typer.Option(min=1, help="Full-batch Adam steps (default: 1000 linear, 500 ReLU)."),
        ] = None,
        lr: Annotated[
            float | None, typer.Option(min=0.0, help="Learning rate (default 0.01).")
        ] = None,
        optimizer: Annotated[
            str, typer.Option(help="ReLU networks' optimiser: adam or sgd (full batch).")
        ] = "adam",
        stop_at_fit: Annotated[
            bool,
            typer.Option(
                help="Stop each ReLU network at the first step that fits every training "
                "point (--steps is then the most it may take)."
            ),
        ] = False,
        train_points: Annotated[
            int,
            typer.Option(min=0, help="Training points per ReLU network (0: all 2^n, <= 4096)."),
        ] = 2000,
        activation: Annotated[
            str, typer.Option(help="relu, or linear: Theorem 6's networks measured as Table 3.")
        ] = "relu",
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="Also write the results here.")
        ] = None,
    ) -> None:
        """Theorem 6's linear networks against the QR prediction, and Theorem 7's ReLU
        networks' local compression ratio against sqrt(2/n)."""
        from featrob_compression.theory import linear_experiment, relu_experiment

        if experiment not in ("linear", "relu", "all"):
            raise typer.BadParameter(f"experiment must be linear, relu or all, got {experiment!r}")
        if optimizer not in ("adam", "sgd"):
            raise typer.BadParameter(f"optimizer must be adam or sgd, got {optimizer!r}")
        if activation not in ("relu", "linear"):
            raise typer.BadParameter(f"activation must be relu or linear, got {activation!r}")
        out: dict[str, Any] = {}
        if experiment in ("linear", "all"):
            out["linear"] = []
            for n in _dims(linear_dims):
                res = linear_experiment(
                    n,
                    runs=runs,
                    scale=scale,
                    seed=seed,
                    **_given(hidden=hidden, steps=steps, lr=lr),
                )
                out["linear"].append(res)
                _print_linear(res)
        if experiment in ("relu", "all"):
            out["relu"] = []
            width = hidden or 64
            fit = "stopped at fit" if stop_at_fit else "fixed steps"
            typer.echo(
                f"Theorem 7: local compression ratio of accurate {activation} networks "
                f"(width {width}, {optimizer}, {fit}, scale {scale:g}, "
                f"{'all (at most 4096)' if train_points == 0 else train_points} training points)"
            )
            typer.echo(
                f"{'n':>4} {'nets':>9} {'mean':>7} {'median':>7} {'|cos g|':>7} {'all lam':>7} "
                f"{'sqrt(2/n)':>9} {'exact E':>7} {'QR frac':>7} {'steps':>6}"
            )
            for n in _dims(relu_dims):
                res = relu_experiment(
                    n,
                    networks=networks,
                    seed=seed,
                    scale=scale,
                    optimizer=optimizer,
                    stop_at_fit=stop_at_fit,
                    train_points=train_points,
                    activation=activation,
                    **_given(hidden=hidden, steps=steps, lr=lr),
                )
                out["relu"].append(asdict(res))
                if not res.mean_ratio:
                    typer.echo(f"{n:>4} {0:>5} (no accurate network in {res.attempts})")
                    continue
                nets = f"{res.accurate_networks}/{res.attempts}"
                typer.echo(
                    f"{n:>4} {nets:>9} {res.mean_ratio[0]:>7.4f} "
                    f"{res.median_ratio[0]:>7.4f} {res.mean_abs_cos[0]:>7.4f} "
                    f"{sum(res.mean_ratio) / len(res.mean_ratio):>7.4f} "
                    f"{res.sqrt_2_over_n:>9.4f} {res.gaussian_mean:>7.4f} "
                    f"{res.qr_fraction_mean:>7.4f} {res.mean_steps:>6.0f}"
                )
            typer.echo(
                "(nets: accurate / trained; ratio at x itself, lambda = 0, mean and median over "
                "the accurate networks; |cos g|: cos(grad (f1 - f2), x' - x); 'all lam': mean "
                "over the ten points x + lambda (x' - x), every lambda in --json; QR frac: "
                "|R_nn| / ||h_n|| of the accurate networks' H; steps: mean optimiser steps)"
            )
        if json_out is not None:
            json_out.write_text(json.dumps(out, indent=1))
            typer.echo(f"wrote {json_out}")

    app.add_typer(group, name="compression")


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set (None: keep the experiment's default)."""
    return {k: v for k, v in options.items() if v is not None}


def _print_linear(res: dict[str, Any]) -> None:
    typer.echo(
        f"Theorem 6, n={res['n']}: {res['valid_runs']} valid runs of {res['attempts']}; "
        f"closed-form check max error {res['closed_form_max_error']:.2e}"
    )
    typer.echo(f"{'run':>4} {'fraction':>9} {'measured':>9} {'|cos t1|':>9} {'|cos t2|':>9}")
    for i, r in enumerate(res["runs"], start=1):
        typer.echo(
            f"{i:>4} {r['predicted_fraction']:>9.4f} {r['measured_median']:>9.4f} "
            f"{r['abs_cos_theta1']:>9.4f} {r['abs_cos_theta2']:>9.4f}"
        )
    if res["runs"]:
        rho = res["spearman_predicted_measured"]
        typer.echo(
            f"mean {res['mean_predicted_fraction']:>9.4f} {res['mean_measured_median']:>9.4f} "
            f"{res['mean_abs_cos_theta1']:>9.4f} {res['mean_abs_cos_theta2']:>9.4f}   "
            f"Spearman(fraction, measured) = {'n/a' if rho is None else f'{rho:.3f}'}"
        )

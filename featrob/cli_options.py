"""Typer options shared by ``featrob run`` and ``featrob train``."""

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Model spec: small-cnn, resnet18, tv:NAME, pkg.module:factory."
    ),
]
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset", "-d", help="Data spec: digits, mnist, cifar10, npz:PATH, imagefolder:PATH."
    ),
]
EpsOpt = Annotated[
    str | None, typer.Option("--eps", help="Perturbation budget, e.g. 0.1 or 8/255.")
]
NormOpt = Annotated[str | None, typer.Option("--norm", help="Threat model: linf or l2.")]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Run seed (per-sample seeds derive from it).")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML file with any config keys.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set metrics.NAME.key=value (repeatable)."),
]
DataRootOpt = Annotated[
    str | None, typer.Option("--data-root", help="Folder with torchvision-format data sets.")
]
DownloadOpt = Annotated[
    bool, typer.Option("--download", help="Download torchvision data sets that are missing.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
NormalizeOpt = Annotated[
    str | None,
    typer.Option(
        "--normalize",
        help="Model input normalisation: none, dataset, imagenet or MEAN/STD "
        "(default: the checkpoint card, the network, else none for your own network).",
    ),
]
ModelDirOpt = Annotated[
    str | None,
    typer.Option(
        "--model-dir", help="Where model zoos keep weights (RobustBench's layout for rb:)."
    ),
]
HeadOpt = Annotated[
    str | None, typer.Option("--head", help="Replace the model's head: fc, l2, or a plugin's head.")
]

"""featrob-robustbench: every RobustBench model as a featrob model ``rb:DATASET/THREAT/NAME``.

``featrob run --model rb:cifar10/Linf/Carmon2019Unlabeled --dataset cifar10 ...`` builds the
network through RobustBench's own loader (``robustbench.utils.load_model``) from
``--model-dir`` in RobustBench's folder layout (``DIR/cifar10/Linf/NAME.pt``; default
``$FEATROB_HOME/robustbench``). With network access RobustBench fetches a missing file as it
always does; offline the run stops with one line naming the file it needs.

RobustBench models normalise their inputs inside themselves and take [0, 1] pixels, so
featrob adds no normalisation (the network declares none with ``featrob_normalize``). Their
weights are trained: featrob analyses them as they are and never trains them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import featrob

__version__ = "0.1.0"

#: RobustBench's data sets and the input shape and class count their models expect.
DATASETS = {
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "imagenet": ((3, 224, 224), 1000),
}
#: Threat models with model zoos (RobustBench files corruption models under ``corruptions``).
THREATS = ("Linf", "L2", "corruptions")


def default_model_dir() -> Path:
    """``$FEATROB_HOME/robustbench`` (RobustBench's own default is ``./models``)."""
    from featrob import featrob_home

    return featrob_home() / "robustbench"


def parse(arg: str | None) -> tuple[str, str, str]:
    """``"cifar10/Linf/Carmon2019Unlabeled"`` -> ``("cifar10", "Linf", "Carmon2019Unlabeled")``.

    Raises:
        featrob.ConfigError: not three parts.
        featrob.UnknownNameError: unknown data set, threat model or model name (with
            close matches among RobustBench's).
    """
    from featrob import ConfigError, UnknownNameError

    parts = (arg or "").split("/")
    if len(parts) != 3 or not all(parts):
        raise ConfigError(
            f"model 'rb' needs rb:DATASET/THREAT/NAME (e.g. rb:cifar10/Linf/Carmon2019Unlabeled), "
            f"got {'rb:' + (arg or '')!r}"
        )
    dataset, threat, name = parts
    if dataset not in DATASETS:
        raise UnknownNameError("RobustBench data set", dataset, DATASETS)
    known_threats = {t.lower(): t for t in THREATS}
    if threat.lower() not in known_threats:
        raise UnknownNameError("RobustBench threat model", threat, THREATS)
    threat = known_threats[threat.lower()]
    names = list(zoo(dataset, threat))
    if name not in names:
        raise UnknownNameError(f"RobustBench {dataset}/{threat} model", name, names)
    return dataset, threat, name


def zoo(dataset: str, threat: str) -> dict[str, Any]:
    """RobustBench's model entries for ``dataset`` and ``threat`` (name -> entry)."""
    robustbench = _robustbench()
    enums = robustbench.model_zoo.enums
    return dict(
        robustbench.model_zoo.model_dicts[enums.BenchmarkDataset(dataset)][
            enums.ThreatModel(threat)
        ]
    )


def expected_files(dataset: str, threat: str, name: str, model_dir: Path) -> list[Path]:
    """The checkpoint file(s) RobustBench reads for a model (an ensemble has several)."""
    folder = model_dir / dataset / threat
    ids = zoo(dataset, threat)[name].get("gdrive_id")
    if isinstance(ids, list):
        return [folder / f"{name}.pt_m{i}.pt" for i in range(len(ids))]
    return [folder / f"{name}.pt"]


def rb(
    input_shape: tuple[int, int, int],
    num_classes: int,
    arg: str | None = None,
    model_dir: str | None = None,
) -> Any:
    """A RobustBench model ``rb:DATASET/THREAT/NAME`` with its trained weights.

    Raises:
        featrob.ModelError: a data set that does not fit the model, or weights that
            are missing and cannot be fetched (one line naming the file).
    """
    from featrob import ModelError

    dataset, threat, name = parse(arg)
    shape, classes = DATASETS[dataset]
    if num_classes != classes:
        raise ModelError(
            f"RobustBench {dataset} models have {classes} classes; the data set has {num_classes}"
        )
    if dataset != "imagenet" and tuple(input_shape) != shape:
        raise ModelError(
            f"RobustBench {dataset} models take {shape} images; the data set has "
            f"{tuple(input_shape)}"
        )
    folder = Path(model_dir) if model_dir else default_model_dir()
    files = expected_files(dataset, threat, name, folder)
    missing = [f for f in files if not f.is_file()]
    utils = _robustbench().utils
    try:
        net = utils.load_model(name, model_dir=str(folder), dataset=dataset, threat_model=threat)
    except Exception as exc:
        reason = _first_line(exc)
        if missing:
            raise ModelError(
                f"RobustBench model {dataset}/{threat}/{name}: {missing[0]} is missing and "
                f"could not be fetched ({type(exc).__name__}: {reason}); put the checkpoint "
                f"there (RobustBench's layout under --model-dir {folder})"
            ) from None
        raise ModelError(
            f"RobustBench could not load {dataset}/{threat}/{name} from {folder}: "
            f"{type(exc).__name__}: {reason}"
        ) from None
    net.featrob_normalize = {  # RobustBench models normalise inside themselves
        "mean": None,
        "std": None,
        "source": "RobustBench models normalise inside themselves",
    }
    net.featrob_pretrained = f"RobustBench {dataset}/{threat}/{name} ({files[0]})"
    return net


def _robustbench() -> Any:
    """``robustbench`` with its ``utils`` and ``model_zoo`` loaded (imported on first use:
    it imports timm and pandas, seconds that ``featrob --help`` should not pay)."""
    from featrob_robustbench._compat import bridge

    bridge()
    import robustbench.model_zoo
    import robustbench.utils

    return robustbench


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@featrob.hookimpl
def featrob_register_models(register: Any) -> None:
    """Register ``rb``."""
    register(
        rb,
        name="rb",
        description="a RobustBench model with its weights: rb:DATASET/THREAT/NAME "
        "(e.g. rb:cifar10/Linf/Carmon2019Unlabeled; --model-dir: RobustBench's folder)",
    )

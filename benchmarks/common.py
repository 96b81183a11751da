"""Helpers shared by the benchmark scripts: a trained model on real data, timing."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def benchmark_parser(doc: str, model: str, shared_npz: str) -> argparse.ArgumentParser:
    """A parser with ``--model``, ``--dataset`` (the shared subset ``shared_npz`` when it is
    present, else the bundled digits) and ``--json``; the script adds its own options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    path = SHARED / shared_npz
    parser.add_argument("--model", default=model)
    parser.add_argument("--dataset", default=f"npz:{path}" if path.exists() else "digits")
    parser.add_argument("--json", default=None, help="write the results here")
    return parser


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def trained_model(
    model: str,
    dataset: str,
    device: torch.device,
    epochs: int = 3,
    method: str = "standard",
    eps: float = 8 / 255,
):
    """A model trained (once, then cached under $FEATROB_HOME) and the data bundle."""
    from featrob.config import RunConfig
    from featrob.plugins import PluginHost
    from featrob.prepare import load_run_data, prepare_model
    from featrob.progress import ProgressBars

    cfg = RunConfig.from_dict(
        {
            "model": model,
            "dataset": dataset,
            "eps": eps,
            "quiet": True,
            "train": {"epochs": epochs, "method": method, "batch_size": 128},
        }
    )
    host = PluginHost()
    data = load_run_data(cfg, host)
    net, _ = prepare_model(cfg, data, host, device, ProgressBars(quiet=False))
    return net, data


def interleaved_times(
    fns: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None] = lambda: None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Median wall time of each function, measured in turns (a, b, c, a, b, c, ...) after one
    untimed warm-up each, so slow drifts of the machine hit every contender alike."""
    results = {name: fn() for name, fn in fns.items()}
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Write results for later comparison."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")

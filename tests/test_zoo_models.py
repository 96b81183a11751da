"""The model zoos users already have: RobustBench and timm (contrib distributions installed
with pip and found through their entry points), torchvision's own weights, and
ImageNet-size inputs through every analysis plugin under a memory budget."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import featrob
from featrob.errors import ModelError, UnknownNameError
from featrob.testing import check_model

from .distributions import pip_install

ROOT = Path(__file__).resolve().parents[1]
ZOOS = {
    "robustbench": ("featrob-robustbench", "robustbench"),
    "timm": ("featrob-timm", "timm"),
}


@pytest.mark.parametrize("plugin", sorted(ZOOS))
def test_contrib_zoo_plugin_installs_is_found_and_passes_its_own_tests(plugin: str, tmp_path: Path):
    """contrib/featrob-robustbench and contrib/featrob-timm, installed with pip like any
    third-party plugin: found through their entry points, and their own tests (a model run
    through every analysis plugin, offline) pass."""
    folder, needs = ZOOS[plugin]
    if importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} is not installed (pip install '.[test]' brings it)")
    source = ROOT / "contrib" / folder
    target = tmp_path / "site"
    pip = pip_install(source, target)
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    listed = subprocess.run(
        [sys.executable, "-m", "featrob", "plugins", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins[plugin]["distribution"] == folder, listed.stdout
    assert plugins[plugin]["registers"] == {"models": [{"robustbench": "rb"}.get(plugin, plugin)]}
    own = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert own.returncode == 0, own.stdout[-3000:] + own.stderr[-3000:]


def _image_folder(root: Path, size: int = 224, classes: int = 2) -> str:
    """``imagefolder:`` data of noise images: 4 training and 2 test images per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return f"imagefolder:{root}"


def test_imagenet_size_inputs_run_through_every_plugin_within_a_memory_budget(tmp_path: Path):
    """`featrob run --model tv:resnet18 --dataset imagefolder:DIR` on 224 x 224 images:
    featrob trains the network, every analysis plugin runs at tiny budgets, and the
    evaluation batch the run picks fits `--max-memory`."""
    data = _image_folder(tmp_path / "images")
    budget = 512 * 2**20
    results = check_model(
        "tv:resnet18",
        data,
        train={"epochs": 1},
        max_memory="512MiB",
        out=tmp_path / "out",
        # measuring each layer's search cost under a budget takes seconds a layer at 224 px
        metrics={"collision": {"layers": ["layer1", "layer4"]}},
    )
    for name, metric in results.metrics.items():
        print(f"{name}: {metric.duration_s:.1f} s")
    assert {"collision", "compression", "msa", "scale", "sensitivity"} <= set(results.metrics)
    memory = results.environment["memory"]
    assert memory["fixed_bytes"] + memory["batch_size"] * memory["per_input_bytes"] <= budget
    assert results.environment["normalization"]["kind"] == "dataset"  # featrob trained it


@pytest.mark.slow
def test_max_memory_bounds_the_peak_of_an_imagenet_size_run(tmp_path: Path):
    """Peak resident memory of every analysis plugin on ResNet-18 at 224 x 224, above a
    baseline run of one forward pass, stays within the budget (and above it without one)."""
    data = _image_folder(tmp_path / "images")
    torch.manual_seed(0)
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "r18.pt")
    common = ["--model", "tv:resnet18", "--weights", str(tmp_path / "r18.pt"),
              "--normalize", "imagenet", "--dataset", data, "--store", "none", "--quiet",
              "--report", "json"]  # fmt: skip

    def peak_mib(*args: str) -> float:
        config = tmp_path / "tiny.toml"
        from featrob.config import to_toml
        from featrob.testing import TINY_BUDGETS

        config.write_text(to_toml(TINY_BUDGETS))
        code = (
            "import resource, subprocess, sys; "
            "p = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
            "sys.exit(p.returncode)"
        )
        cmd = [sys.executable, "-c", code, sys.executable, "-m", "featrob", "run", *common,
               "--config", str(config), "--out", str(tmp_path / "o"), *args]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return float(proc.stdout.strip().splitlines()[-1])

    baseline = peak_mib("--plugin", "accuracy", "--batch-size", "1")
    bounded = peak_mib("--max-memory", "512MiB")
    unbounded = peak_mib("--batch-size", "64")
    print(f"peak RSS MiB: baseline {baseline:.0f}, 512MiB budget {bounded:.0f}, "
          f"no budget {unbounded:.0f}")  # fmt: skip
    assert bounded - baseline <= 512 * 1.25
    assert unbounded > bounded


def _thousand_classes(path: Path) -> str:
    """An npz data set whose labels span ImageNet's 1,000 classes (two 32 x 32 images)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    y = np.array([0, 999])
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return f"npz:{path}"


def test_torchvision_weights_bring_their_normalisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`tv:resnet18` with `model_options.weights`: the weights' metadata decides the
    normalisation, and the model is analysed as it is (never trained). The test fills
    torchvision's hub cache as a download would."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cache.parent.mkdir(parents=True)
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    torch.save(net.state_dict(), cache)
    data = featrob.load_data(_thousand_classes(tmp_path / "inet.npz"))
    model = featrob.load_model(
        "tv:resnet18", data, model_options={"weights": "IMAGENET1K_V1"}, train={"epochs": 1}
    )
    assert model.normalization.kind == "imagenet"
    assert "metadata of torchvision weights resnet18 IMAGENET1K_V1" in model.normalization.source
    assert model.pretrained is not None and "IMAGENET1K_V1" in model.pretrained
    x = data.test.float_images()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x - mean) / std), rtol=1e-5, atol=1e-5)

    with pytest.raises(UnknownNameError, match="did you mean 'IMAGENET1K_V1'"):
        featrob.load_model("tv:resnet18", data, model_options={"weights": "IMAGENET1K_V2"})
    from featrob.testing import write_npz_dataset

    ten = featrob.load_data(write_npz_dataset(tmp_path / "ten.npz"))
    with pytest.raises(ModelError, match="1000 classes; the data set has 10"):
        featrob.load_model("tv:resnet18", ten, model_options={"weights": "DEFAULT"})

    def offline(*_args, **_kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match=r"offline, put the file at .*resnet18-f37072fd\.pth"):
        featrob.load_model("tv:resnet18", data, model_options={"weights": "IMAGENET1K_V1"})

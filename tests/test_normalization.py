"""Normalisation is a property of the model: a user's network gets exactly the inputs it
expects, a featrob-trained one gets back what it was trained with, and a loaded model near
chance is called out."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import featrob
from featrob.cli import create_app
from featrob.errors import ConfigError
from featrob.model_checks import chance_threshold, near_chance_warning
from featrob.models import save_checkpoint
from featrob.models.normalization import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalization,
    Request,
    parse_request,
    resolve,
)
from featrob.plugins import PluginHost

runner = CliRunner()

# A user's network as its authors ship it: a factory and a plain state_dict; it takes
# [0, 1] pixels.
USER_MODULE = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU())
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def net(num_classes):
    return Net(num_classes)
"""


def invoke(args: list[str]):
    return runner.invoke(create_app(lambda: PluginHost()), args)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``usermodels`` importable from a fresh folder; returns a writer for its source."""
    folder = tmp_path / "usercode"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))

    def write(name: str, source: str) -> str:
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


def _train_user_net(module_name: str, path: Path) -> torch.nn.Module:
    """Train the user's network on digits in plain PyTorch and save its state_dict.

    It is trained to name the digit of [0, 1] pixels and, to be wrong if normalised in front,
    digit + 5 of standardised pixels (an easy tell: their background is negative). Digits
    networks trained only on pixels shrug off a standardisation (1-14 % of predictions move),
    which would make a weak test.
    """
    import importlib

    module = importlib.import_module(module_name)
    data = featrob.load_data("digits")
    x, y = data.train.float_images(), data.train.labels
    x = torch.cat([x, (x - 0.3) / 0.4])
    y = torch.cat([y, (y + 5) % 10])
    torch.manual_seed(0)
    net = module.net(10)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.save(net.state_dict(), path)
    return net.eval()


def _run(out: Path, *args: str) -> dict:
    result = invoke(
        [
            "run",
            "--plugin",
            "accuracy",
            "--store",
            "none",
            "--quiet",
            "--report",
            "json,md,html",
            "--n-per-class",
            "10",
            "--out",
            str(out),
            *args,
        ]
    )
    assert result.exit_code == 0, result.output
    return {"output": result.output, "results": json.loads((out / "results.json").read_text())}


def test_users_factory_and_state_dict_get_exactly_the_inputs_they_expect(
    tmp_path: Path, user_module
):
    name = user_module("usermodels", USER_MODULE)
    net = _train_user_net(name, tmp_path / "model.pt")
    model_args = ["--model", f"{name}:net", "--weights", str(tmp_path / "model.pt")]

    ran = _run(tmp_path / "plain", *model_args)
    results = ran["results"]
    arrays = np.load(tmp_path / "plain" / "arrays.npz")
    indices = torch.as_tensor(arrays["clean_accuracy/indices"])
    data = featrob.load_data("digits")
    positions = torch.searchsorted(data.test.indices, indices)
    with torch.no_grad():
        direct = net(data.test.float_images(positions)).argmax(1).numpy()
    np.testing.assert_array_equal(arrays["clean_accuracy/predictions"], direct)
    norm = results["environment"]["normalization"]
    assert norm["kind"] == "none" and norm["mean"] is None
    assert "plain state_dict" in norm["source"]
    assert "input normalisation: none" in ran["output"]
    for report in ("report.html", "summary.md"):
        assert (
            "input normalisation: none (plain state_dict"
            in (tmp_path / "plain" / report).read_text()
        )
    assert results["warnings"] == []  # the network is accurate: nothing to warn about
    accuracy = results["metrics"]["clean_accuracy"]["summary"]["accuracy"]
    assert accuracy > 0.85

    # Normalised in front (what featrob did before), it is another function: the check
    # above would have caught it, and the run says so in one line everywhere.
    out = tmp_path / "twice"
    ran = _run(out, *model_args, "--normalize", "dataset")
    twice = ran["results"]
    twice_pred = np.load(out / "arrays.npz")["clean_accuracy/predictions"]
    assert (twice_pred != direct).mean() > 0.8
    assert twice["environment"]["normalization"]["source"] == "--normalize dataset"
    assert twice["metrics"]["clean_accuracy"]["summary"]["accuracy"] < 0.15
    assert len(twice["warnings"]) == 1 and "near chance" in twice["warnings"][0]
    assert "near chance" in " ".join(ran["output"].split())  # rich wraps long lines
    assert "near chance" in (out / "report.html").read_text()
    assert "near chance" in (out / "summary.md").read_text()

    # The Python API gives the same function.
    model = featrob.load_model(f"{name}:net", data, weights=tmp_path / "model.pt")
    with torch.no_grad():
        x = data.test.float_images(positions)
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)


def test_a_factory_declares_its_normalisation(tmp_path: Path, user_module):
    module = user_module(
        "declaring",
        """
        from torch import nn

        FEATROB_NORMALIZE = "0.25/0.5"


        def net(num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


        def tagged(num_classes):
            network = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
            network.featrob_normalize = "imagenet-like"
            return network


        def grey(num_classes):
            network = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
            network.featrob_normalize = (0.1,), (0.2,)
            return network
        """,
    )
    data = featrob.load_data("digits")
    state = torch.nn.Linear(64, 10).state_dict()
    torch.save({"1.weight": state["weight"], "1.bias": state["bias"]}, tmp_path / "w.pt")
    weights = tmp_path / "w.pt"
    model = featrob.load_model(f"{module}:net", data, weights=weights)
    assert (model.normalization.mean, model.normalization.std) == ((0.25,), (0.5,))
    assert model.normalization.source == "declaring.FEATROB_NORMALIZE"
    model = featrob.load_model(f"{module}:grey", data, weights=weights)
    assert (model.normalization.mean, model.normalization.std) == ((0.1,), (0.2,))
    assert "featrob_normalize" in model.normalization.source
    # --normalize wins over a declaration
    model = featrob.load_model(f"{module}:grey", data, weights=weights, normalize="none")
    assert model.normalization.identity
    with pytest.raises(ConfigError, match="featrob_normalize must be none, dataset"):
        featrob.load_model(f"{module}:tagged", data, weights=weights)


def _train(out: Path, *extra: str) -> dict:
    """``featrob train`` a small MLP on digits for one epoch; return its card."""
    trained = invoke(
        ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--quiet",
         "--set", "train.n_per_class=20", *extra, "--out", str(out)]
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    return json.loads(out.with_suffix(".json").read_text())


def test_a_featrob_trained_model_round_trips_its_normalisation(tmp_path: Path):
    out = tmp_path / "net.pt"
    card = _train(out)
    data = featrob.load_data("digits")
    assert card["normalization"]["kind"] == "dataset"
    assert card["normalization"]["mean"] == pytest.approx(list(data.mean))
    model = featrob.load_model("mlp", data, weights=out)
    assert model.normalization.mean == pytest.approx(data.mean)
    assert model.normalization.source == f"checkpoint card ({out})"

    # trained without normalisation: loaded without it, although mlp is featrob's own
    plain = tmp_path / "plain.pt"
    assert _train(plain, "--normalize", "none")["normalization"]["kind"] == "none"
    model = featrob.load_model("mlp", data, weights=plain)
    assert model.normalization.identity and model.normalization.kind == "none"


def test_cached_models_are_keyed_by_a_normalisation_other_than_the_data_sets():
    from featrob.config import RunConfig
    from featrob.prepare import cached_model_path

    data = featrob.load_data("digits")
    config = RunConfig()
    dataset_norm = Normalization("dataset", tuple(data.mean), tuple(data.std), "x")
    legacy = cached_model_path(config, data)
    assert cached_model_path(config, data, dataset_norm) == legacy
    assert cached_model_path(config, data, Normalization("none", source="x")) != legacy


def test_a_legacy_featrob_card_means_the_data_sets_normalisation(tmp_path: Path):
    data = featrob.load_data("digits")
    model = featrob.load_model("mlp", data, weights=None, train={"epochs": 1, "n_per_class": 5})
    state = {k: v for k, v in model.state_dict().items()}
    card = {"featrob": "0.1", "fingerprint": "abc"}  # a card of before: no normalization
    torch.save({"state_dict": state, "featrob": card}, tmp_path / "old.pt")
    loaded = featrob.load_model("mlp", data, weights=tmp_path / "old.pt")
    assert loaded.normalization.mean == pytest.approx(data.mean)
    assert "before cards recorded it" in loaded.normalization.source
    # a plain state_dict of the same network gets none; a checkpoint keeps what it had
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    plain = featrob.load_model("mlp", data, weights=tmp_path / "plain.pt")
    assert plain.normalization.identity and "plain state_dict" in plain.normalization.source
    save_checkpoint(model, tmp_path / "new.pt", {})
    kept = featrob.load_model("mlp", data, weights=tmp_path / "new.pt")
    assert kept.normalization.mean == pytest.approx(data.mean)
    assert kept.fingerprint() == model.fingerprint()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", (None, None)),
        ("NONE", (None, None)),
        ("imagenet", (IMAGENET_MEAN, IMAGENET_STD)),
        (
            "0.4914,0.4822,0.4465/0.2471,0.2435,0.2616",
            ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
        ),
        ("0.5/0.25", ((0.5,), (0.25,))),
        ("dataset", ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))),
    ],
)
def test_every_normalize_form(text: str, expected: tuple):
    got = resolve(
        parse_request(text),
        "--normalize",
        data_mean=(0.1, 0.2, 0.3),
        data_std=(0.4, 0.5, 0.6),
        channels=3,
    )
    assert (got.mean, got.std) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nome", "did you mean 'none'"),
        ("imagenett", "did you mean 'imagenet'"),
        ("0.5/0", "std must be positive"),
        ("0.5,x/1", "must be numbers"),
        ("0.1,0.2/0.3,0.4,0.5", "2 mean values but 3 std values"),
        ("nan/1", "must be finite"),
    ],
)
def test_bad_normalize_values_are_one_line(text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        parse_request(text)
    result = invoke(["run", "--normalize", text, "--check"])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_normalize_channel_count_must_fit_the_model():
    with pytest.raises(ConfigError, match="3 mean values; the model's inputs have 1"):
        resolve(
            Request("imagenet"), "--normalize imagenet", data_mean=None, data_std=None, channels=1
        )


def test_normalize_is_text_in_set_and_toml(tmp_path: Path):
    from featrob.config import RunConfig

    assert RunConfig.load(sets=["normalize=none"]).normalize == "none"
    assert RunConfig.load(sets=["normalize=0.5/0.5"]).normalize == "0.5/0.5"
    (tmp_path / "run.toml").write_text('normalize = "imagenet"\n')
    assert RunConfig.load(tmp_path / "run.toml").normalize == "imagenet"


def test_chance_threshold():
    assert chance_threshold(10, 50) == pytest.approx(0.1 + 2 * (0.09 / 50) ** 0.5)
    assert chance_threshold(10, 10_000) == pytest.approx(0.15)
    norm = Normalization("none", source="plain state_dict")
    assert near_chance_warning(0.9, 50, 10, norm) is None
    line = near_chance_warning(0.16, 50, 10, norm)
    assert line is not None and "\n" not in line
    assert all(w in line for w in ("normalisation", "class order", "weights", "--normalize"))


CIFAR_MODULE = """
from torch import nn


def cnn(num_classes):
    # a plain CIFAR network on [0, 1] pixels, no normalisation anywhere
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )
"""


@pytest.mark.slow
def test_the_issue_scenario_on_real_cifar_images(tmp_path: Path, user_module):
    """The user's road of the README on ../shared/data/cifar10_subset.npz: a small CNN trained
    there in plain PyTorch on [0, 1] pixels, saved as a plain state_dict, analysed with
    `--model mod:factory --weights`: featrob's clean accuracy is the network's own."""
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "cifar10_subset.npz"
    if not path.is_file():
        pytest.skip("../shared/data/cifar10_subset.npz is not here")
    import importlib

    name = user_module("cifar_user", CIFAR_MODULE)
    raw = np.load(path)
    x = torch.as_tensor(raw["x_train"]).float() / 255
    y = torch.as_tensor(raw["y_train"])
    torch.manual_seed(0)
    net = importlib.import_module(name).cnn(10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(12):
        for batch in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    net.eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")

    args = ["--model", f"{name}:cnn", "--weights", str(tmp_path / "model.pt"),
            "--dataset", f"npz:{path}"]  # fmt: skip
    results = _run(tmp_path / "ours", *args, "--n-per-class", "5")["results"]
    arrays = np.load(tmp_path / "ours" / "arrays.npz")
    indices = torch.as_tensor(arrays["clean_accuracy/indices"])
    x_test = torch.as_tensor(raw["x_test"])[indices].float() / 255
    with torch.no_grad():
        direct = net(x_test).argmax(1).numpy()
    np.testing.assert_array_equal(arrays["clean_accuracy/predictions"], direct)
    ours = results["metrics"]["clean_accuracy"]["summary"]["accuracy"]
    twice = _run(tmp_path / "twice", *args, "--n-per-class", "5", "--normalize", "dataset")
    before = twice["results"]["metrics"]["clean_accuracy"]["summary"]["accuracy"]
    moved = np.load(tmp_path / "twice" / "arrays.npz")["clean_accuracy/predictions"] != direct
    network = float((direct == raw["y_test"][indices.numpy()]).mean())
    print(f"clean accuracy on 50 CIFAR-10 test images: the network {network:.2f}, featrob "
          f"{ours:.2f}; with the data set's normalisation in front (featrob before) {before:.2f}, "
          f"{moved.mean():.0%} of the predictions moved")  # fmt: skip
    assert ours == network > 0.4
    assert before < ours and moved.mean() > 0.2

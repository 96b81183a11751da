"""Config precedence and the small spec languages (eps fractions, attack calls)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from featrob.config import RunConfig, to_toml
from featrob.errors import ConfigError
from featrob.specs import parse_call, parse_fraction, parse_value, split_spec


@pytest.mark.parametrize(
    ("text", "value"), [("8/255", 8 / 255), ("0.1", 0.1), (0.3, 0.3), ("0", 0.0)]
)
def test_eps_fractions(text, value):
    assert math.isclose(parse_fraction(text), value)


@pytest.mark.parametrize("bad", ["-0.1", "nan", "inf", "1/0", "abc", "-8/255"])
def test_bad_eps_is_one_line_config_error(bad):
    with pytest.raises(ConfigError) as err:
        parse_fraction(bad)
    assert "\n" not in str(err.value)


def test_parse_call_and_values():
    assert parse_call("pgd") == ("pgd", {})
    assert parse_call("pgd(steps=20, rel_step_size=0.1, random_start=false, eps_note='8/255')") == (
        "pgd",
        {"steps": 20, "rel_step_size": 0.1, "random_start": False, "eps_note": "8/255"},
    )
    assert parse_call("torchattacks:CW(c=1)") == ("torchattacks:CW", {"c": 1})
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("cifar10") == "cifar10"
    with pytest.raises(ConfigError):
        parse_call("pgd(20)")


def test_split_spec():
    assert split_spec("npz:/a/b.npz") == ("npz", "/a/b.npz")
    assert split_spec("tv:resnet18") == ("tv", "resnet18")
    assert split_spec("digits") == ("digits", None)


def test_precedence_defaults_toml_flags_set(tmp_path: Path):
    path = tmp_path / "run.toml"
    path.write_text(
        'model = "medium-cnn"\neps = "8/255"\nseed = 3\n'
        "[metrics.scale]\nsections = 10\n[train]\nepochs = 2\n"
    )
    cfg = RunConfig.load(
        path, {"seed": 5}, ["metrics.scale.sections=20", "train.method=pgd", "eps=0.2"]
    )
    assert cfg.model == "medium-cnn" and cfg.seed == 5 and cfg.eps == 0.2
    assert cfg.metrics == {"scale": {"sections": 20}}
    assert cfg.train.epochs == 2 and cfg.train.method == "pgd"
    assert RunConfig.load(path).eps == pytest.approx(8 / 255)


def test_unknown_keys_get_close_matches(tmp_path: Path):
    with pytest.raises(ConfigError, match="did you mean 'dataset'"):
        RunConfig.load(sets=["datset=mnist"])
    with pytest.raises(ConfigError, match=r"did you mean 'train\.epochs'"):
        RunConfig.load(sets=["train.epoch=3"])
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "bad.toml").write_text("model = ")
        RunConfig.load(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["eps=-1"], "eps must be >= 0"),
        (["eps=nan"], "eps"),
        (["eps=2"], "Linf eps must be in"),
        (["norm=l3"], "unknown norm"),
        (["seed=1.5"], "seed"),
        (["batch_size=0"], "batch_size must be positive"),
        (["split=val"], "split"),
        (["amp=fp8"], "amp"),
    ],
)
def test_invalid_values(sets, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.load(sets=sets)


def test_toml_round_trip():
    cfg = RunConfig.load(
        sets=["metrics.scale.sections=20", 'attacks=["pgd(steps=5)", "fgsm"]', "eps=8/255"]
    )
    data = tomllib.loads(to_toml(cfg.to_dict()))
    again = RunConfig.from_dict(data)
    assert again == cfg

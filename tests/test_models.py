"""Built-in architectures, heads, spec parsing, head swapping and checkpoints (CPU, fast)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from featrob.builtins.heads import featrob_register_heads
from featrob.builtins.models import featrob_register_models
from featrob.errors import ConfigError, ModelError, UnknownNameError
from featrob.models import (
    FeatrobModel,
    build_model,
    load_weights,
    save_checkpoint,
    warm_start,
)
from featrob.models.heads import L2Head
from featrob.registry import Registry

K = 10


def _registry(kind: str, hook) -> Registry:
    reg: Registry = Registry(kind)
    hook(lambda obj, name=None, **kw: reg.add(obj, name, plugin="builtin", **kw))
    return reg


@pytest.fixture(scope="module")
def models() -> Registry:
    return _registry("model", featrob_register_models)


@pytest.fixture(scope="module")
def heads() -> Registry:
    return _registry("head", featrob_register_heads)


def _build(models: Registry, spec: str, shape=(1, 28, 28), **kw) -> FeatrobModel:
    torch.manual_seed(0)
    return build_model(spec, models, shape, K, **kw).eval()


# ------------------------------------------------------------------ every architecture
CASES = [
    *[(s, shape) for s in ("mlp", "small-cnn", "medium-cnn", "large-cnn")
      for shape in ((1, 8, 8), (1, 28, 28), (3, 32, 32))],
    *[(s, shape) for s in ("vgg16", "resnet18", "resnet34")
      for shape in ((1, 28, 28), (3, 32, 32))],
    ("vgg16", (1, 8, 8)),
    ("tv:resnet18", (3, 32, 32)),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "shape"), CASES)
def test_architecture_forward_and_layers(models, spec, shape):
    model = _build(models, spec, shape)
    x = torch.rand(2, *shape)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, K)
        assert model.layers[-1] == "logits"
        for name in model.layers:
            model.resolve_layer(name)
        out = model.extract(x, [*model.layers, "features"])
        assert all(isinstance(t, torch.Tensor) and t.shape[0] == 2 for t in out.values())
        feats = model.features(x)
        assert out["features"].shape == (2, model.num_features)
        assert torch.allclose(out["features"], feats)
        assert torch.allclose(out["logits"], logits, atol=1e-6)
        first = model.layers[0]
        assert torch.equal(model.forward_to(x, first), out[first])
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_zoo_layer_names(models):
    assert _build(models, "small-cnn").layers == ["conv1", "conv2", "fc1", "logits"]
    assert _build(models, "medium-cnn").layers[-3:] == ["fc1", "fc2", "logits"]
    vgg = _build(models, "vgg16", (3, 32, 32))
    assert vgg.layers == [*(f"block{i}" for i in range(1, 6)), "fc1", "features", "logits"]
    assert vgg.resolve_layer("features") == "features"
    res = _build(models, "resnet18", (3, 32, 32))
    assert res.layers == ["stem", "layer1", "layer2", "layer3", "layer4", "pool", "logits"]
    assert res.resolve_layer("features") == "pool"
    assert res.resolve_layer("layer3.1.relu2") == "layer3.1.relu2"


# ------------------------------------------------------------------ Gowal et al. CNNs
def _shapes(model: FeatrobModel, shape) -> dict[str, tuple[int, ...]]:
    with torch.no_grad():
        out = model.extract(torch.rand(1, *shape), model.layers)
    return {k: tuple(v.shape[1:]) for k, v in out.items()}


def test_small_cnn_valid_matches_paper(models):
    model = _build(models, "small-cnn", (1, 28, 28), options={"padding": "valid"})
    bb = model.backbone
    assert bb.conv1.conv.weight.shape == (16, 1, 4, 4) and bb.conv1.conv.stride == (2, 2)
    assert bb.conv2.conv.weight.shape == (32, 16, 4, 4) and bb.conv2.conv.stride == (1, 1)
    assert bb.fc1.linear.weight.shape == (100, 32 * 10 * 10)
    assert model.head.weight.shape == (K, 100)
    assert _shapes(model, (1, 28, 28)) == {
        "conv1": (16, 13, 13),
        "conv2": (32, 10, 10),
        "fc1": (100,),
        "logits": (K,),
    }
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == (16 * 16 + 16) + (32 * 16 * 16 + 32) + (3200 * 100 + 100) + (100 * K + K)


def test_medium_and_large_cnn_valid_shapes(models):
    medium = _build(models, "medium-cnn", (1, 28, 28))  # auto = valid for 28x28
    assert _shapes(medium, (1, 28, 28)) == {
        "conv1": (32, 26, 26),
        "conv2": (32, 12, 12),
        "conv3": (64, 10, 10),
        "conv4": (64, 4, 4),
        "fc1": (512,),
        "fc2": (512,),
        "logits": (K,),
    }
    assert medium.backbone.conv2.conv.kernel_size == (4, 4)
    large = _build(models, "large-cnn", (1, 28, 28))
    sizes = _shapes(large, (1, 28, 28))
    assert [sizes[f"conv{i}"] for i in range(1, 6)] == [
        (64, 26, 26),
        (64, 24, 24),
        (128, 11, 11),
        (128, 9, 9),
        (128, 7, 7),
    ]
    assert large.backbone.fc1.linear.weight.shape == (512, 128 * 7 * 7)


def test_gowal_same_padding_on_digits(models):
    small = _build(models, "small-cnn", (1, 8, 8))  # auto = same below 16 pixels
    assert _shapes(small, (1, 8, 8))["conv1"] == (16, 4, 4)  # stride 2 halves
    assert _shapes(small, (1, 8, 8))["conv2"] == (32, 4, 4)  # stride 1 keeps (even kernel)
    medium = _build(models, "medium-cnn", (1, 8, 8), options={"padding": "same"})
    sizes = _shapes(medium, (1, 8, 8))
    assert [sizes[f"conv{i}"][1:] for i in range(1, 5)] == [(8, 8), (4, 4), (4, 4), (2, 2)]
    with pytest.raises(ModelError, match="padding='same'"):
        _build(models, "small-cnn", (1, 8, 8), options={"padding": "valid"})
    with pytest.raises(ConfigError, match="padding"):
        _build(models, "small-cnn", options={"padding": "full"})


# ------------------------------------------------------------------ MLP and VGG options
def test_mlp_options(models):
    linear_clf = _build(models, "mlp", (1, 8, 8), options={"hidden": []})
    assert linear_clf.layers == ["flatten", "logits"] and linear_clf.num_features == 64
    deep = _build(models, "mlp", options={"hidden": [32, 16], "activation": "linear"})
    assert deep.layers == ["fc1", "fc2", "logits"] and deep.num_features == 16
    a, b = torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    zero = torch.zeros(2, 1, 28, 28)
    with torch.no_grad():  # a linear network is affine
        assert torch.allclose(deep(a) + deep(b) - deep(zero), deep(a + b), atol=1e-5)
    no_bias = _build(models, "mlp", options={"bias": False})
    assert all("bias" not in n for n, _ in no_bias.named_parameters())
    with pytest.raises(ConfigError, match="valid: hidden, activation, bias"):
        _build(models, "mlp", options={"hiden": [3]})
    with pytest.raises(ConfigError, match="activation"):
        _build(models, "mlp", options={"activation": "tanh"})


def test_vgg_options(models):
    two_d = _build(models, "vgg16", (3, 32, 32), options={"feature_dim": 2})
    assert two_d.num_features == 2
    assert not any(isinstance(m, nn.ReLU) for m in two_d.backbone.features.modules())
    wide = _build(models, "vgg16", (3, 32, 32), options={"dropout": 0.5, "batch_norm": False})
    assert any(isinstance(m, nn.ReLU) for m in wide.backbone.features.modules())
    assert any(isinstance(m, nn.Dropout) for m in wide.backbone.fc1.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in wide.modules())
    with pytest.raises(ConfigError, match="feature_dim"):
        _build(models, "vgg16", options={"feature_dim": 0})


# ------------------------------------------------------------------ heads
def test_l2_head_logits_gradient_and_means(heads):
    torch.manual_seed(0)
    head = heads.get("l2")(5, 3)
    assert (head.in_features, head.num_classes) == (5, 3)
    z = torch.randn(4, 5)
    assert torch.allclose(head(z), -torch.cdist(z, head.prototypes), atol=1e-5)

    on_proto = head.prototypes[:1].detach().clone().requires_grad_(True)
    head(on_proto).sum().backward()
    assert torch.isfinite(on_proto.grad).all()
    assert torch.isfinite(head.prototypes.grad).all()

    feats = torch.tensor([[1.0, 0, 0, 0, 0], [3.0, 0, 0, 0, 0], [0, 2.0, 0, 0, 0]])
    before = head.prototypes[2].detach().clone()
    head.init_from_means(feats, torch.tensor([0, 0, 1]))
    assert torch.allclose(head.prototypes[0], torch.tensor([2.0, 0, 0, 0, 0]))
    assert torch.allclose(head.prototypes[1], torch.tensor([0, 2.0, 0, 0, 0]))
    assert torch.equal(head.prototypes[2], before)  # no samples: unchanged
    with pytest.raises(ModelError, match="shape"):
        head.init_from_means(torch.zeros(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ModelError, match="labels"):
        head.init_from_means(feats, torch.tensor([0, 1, 7]))


def test_fc_head_and_options(heads):
    fc = heads.get("fc")(7, 3, bias=False)
    assert isinstance(fc, nn.Linear) and fc.bias is None and fc.in_features == 7
    with pytest.raises(ConfigError, match="valid: init"):
        heads.get("l2")(7, 3, scale=2)


def test_head_swap(models, heads):
    model = _build(models, "mlp", (1, 8, 8), head="l2", head_registry=heads)
    assert isinstance(model.head, L2Head) and model.head.in_features == 256
    assert model.arch["head"] == "l2"
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        expected = -torch.cdist(model.features(x), model.head.prototypes)
        assert torch.allclose(model(x), expected, atol=1e-4)
    # without a head registry the built-in heads are used
    assert isinstance(_build(models, "mlp", (1, 8, 8), head="l2").head, L2Head)
    with pytest.raises(UnknownNameError, match="'l2'"):
        _build(models, "mlp", (1, 8, 8), head="l3", head_registry=heads)

    plain = _build(models, "small-cnn", (1, 8, 8))
    swapped = plain.with_head(L2Head(plain.num_features, K), head_options={"init": "normal"})
    assert swapped.backbone is plain.backbone
    assert swapped.arch["head_options"] == {"init": "normal"} and plain.arch["head_options"] == {}
    with torch.no_grad():
        assert torch.equal(swapped.features(x), plain.features(x))


# ------------------------------------------------------------------ specs
def test_tv_models(models):
    model = _build(models, "tv:resnet18", (3, 32, 32))
    assert model.arch["head_name"] == "fc"
    assert isinstance(model.head, nn.Linear) and model.head.in_features == 512
    assert isinstance(model.backbone.fc, nn.Identity)
    with pytest.raises(UnknownNameError, match="resnet18"):
        _build(models, "tv:resnt18", (3, 32, 32))
    with pytest.raises(ModelError, match="3-channel"):
        _build(models, "tv:resnet18", (1, 28, 28))
    with pytest.raises(ConfigError, match="no ':ARG'"):
        _build(models, "mlp:wide")


def test_spec_errors(models):
    with pytest.raises(UnknownNameError, match="small-cnn"):
        _build(models, "smal-cnn")
    with pytest.raises(ModelError, match=r"cannot import module 'no_such_pkg\.nets'") as info:
        _build(models, "no_such_pkg.nets:build")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("mlp", models, (28, 28), K)
    with pytest.raises(ConfigError, match="mean"):
        build_model("mlp", models, (1, 28, 28), K, mean=[0.5, 0.5, 0.5])


USER_MODULE = """
from torch import nn

def build(num_classes, width=16):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, width), nn.ReLU(inplace=True), nn.Linear(width, num_classes)
    )

class Split(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        c, h, w = input_shape
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 8))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))

NOT_CALLABLE = 3
"""


def test_module_factory_specs(models, tmp_path, monkeypatch):
    (tmp_path / "featrob_usernets.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "featrob_usernets", raising=False)

    model = _build(models, "featrob_usernets:build", (1, 8, 8), options={"width": 12})
    assert model.arch["head_name"] == "3" and model.num_features == 12
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, K)

    split = _build(models, "featrob_usernets:Split", (1, 8, 8))
    assert split.num_features == 8 and split.arch["head_name"] == "head"

    with pytest.raises(ConfigError, match="valid: width"):
        _build(models, "featrob_usernets:build", (1, 8, 8), options={"depth": 2})
    with pytest.raises(ModelError, match="no attribute"):
        _build(models, "featrob_usernets:missing", (1, 8, 8))
    with pytest.raises(ModelError, match="not callable"):
        _build(models, "featrob_usernets:NOT_CALLABLE", (1, 8, 8))


# ------------------------------------------------------------------ weights
def test_checkpoint_round_trip(models, tmp_path):
    src = _build(models, "small-cnn", (1, 8, 8))
    torch.manual_seed(1)
    dst = build_model("small-cnn", models, (1, 8, 8), K).eval()
    x = torch.rand(2, 1, 8, 8)
    assert not torch.equal(src(x), dst(x))
    path = save_checkpoint(src, tmp_path / "sub" / "m.pt", {"epochs": 3, "eps": (1, 2)})
    card = load_weights(dst, path)
    assert card.pop("normalization") == src.normalization.to_json()  # kept for loading
    assert card == {"epochs": 3, "eps": [1, 2]}
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    assert src.fingerprint() == dst.fingerprint()
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert set(loaded) == {"state_dict", "featrob"}

    with pytest.raises(ModelError, match="JSON"):
        save_checkpoint(src, tmp_path / "bad.pt", {"x": object()})


def test_raw_state_dicts_and_prefix(models, tmp_path):
    src = _build(models, "mlp", (1, 8, 8))
    dst = build_model("mlp", models, (1, 8, 8), K)
    raw = tmp_path / "raw.pt"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, raw)
    assert load_weights(dst, raw) == {}
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_original_network_state_dict(models, tmp_path):
    import torchvision

    torch.manual_seed(3)
    net = torchvision.models.resnet18(num_classes=K).eval()
    path = tmp_path / "tv.pt"
    torch.save(net.state_dict(), path)
    model = _build(models, "tv:resnet18", (3, 32, 32))
    load_weights(model, path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)


class _AdoptingHead(nn.Module):
    """A head that, like HPM's, can start its linear part from a trained classifier."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, k)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, z):
        return self.scale * self.fc(z)

    @torch.no_grad()
    def adopt_fc(self, linear: nn.Module) -> bool:
        if linear.weight.shape != self.fc.weight.shape:
            return False
        self.fc.weight.copy_(linear.weight)
        self.fc.bias.copy_(linear.bias)
        return True


def test_warm_start_loads_adopts_or_keeps_a_fresh_head(models, heads, tmp_path):
    src = _build(models, "small-cnn", (1, 8, 8))
    path = save_checkpoint(src, tmp_path / "m.pt", {"method": "pgd"})
    x = torch.rand(3, 1, 8, 8)

    def fresh(seed: int) -> FeatrobModel:
        torch.manual_seed(seed)
        return build_model("small-cnn", models, (1, 8, 8), K).eval()

    same = fresh(1)
    assert warm_start(same, path) == {"from": str(path), "head": "loaded", "method": "pgd"}
    with torch.no_grad():
        assert torch.equal(same(x), src(x))

    adopting = fresh(2)
    adopting = adopting.with_head(_AdoptingHead(adopting.num_features, K))
    assert warm_start(adopting, path)["head"] == "adopted"
    with torch.no_grad():
        assert torch.allclose(adopting(x), src(x))  # scale 1: the adopted FC is the old head

    l2 = fresh(3)
    l2 = l2.with_head(L2Head(l2.num_features, K))
    before = {k: v.clone() for k, v in l2.head.state_dict().items()}
    assert warm_start(l2, path)["head"] == "fresh"
    assert all(torch.equal(before[k], v) for k, v in l2.head.state_dict().items())
    with torch.no_grad():
        assert torch.equal(l2.features(x), src.features(x))  # the backbone always loads

    other_k = build_model("small-cnn", models, (1, 8, 8), K - 1)
    assert warm_start(other_k, path)["head"] == "fresh"
    with pytest.raises(ModelError, match="do not fit the model"):
        warm_start(build_model("mlp", models, (1, 8, 8), K), path)
    with pytest.raises(ModelError, match="not found"):
        warm_start(same, tmp_path / "missing.pt")


def test_mismatch_and_bad_files(models, tmp_path):
    small = _build(models, "small-cnn", (1, 8, 8))
    path = save_checkpoint(small, tmp_path / "small.pt", {})
    medium = _build(models, "medium-cnn", (1, 8, 8))
    with pytest.raises(ModelError) as info:
        load_weights(medium, path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "missing" in msg and "backbone.conv3.conv.weight" in msg
    assert "shape mismatch" in msg and "backbone.fc1.linear.weight (file [100, 512]" in msg
    five = build_model("small-cnn", models, (1, 8, 8), 5)
    with pytest.raises(ModelError, match=r"shape mismatch.*head\.weight"):
        load_weights(five, path)

    mlp = _build(models, "mlp", (1, 8, 8))
    with pytest.raises(ModelError) as info:
        load_weights(mlp, path)
    assert "backbone.fc1.linear.weight" in str(info.value)  # missing
    assert "backbone.conv1.conv.weight" in str(info.value)  # unexpected

    with pytest.raises(ModelError, match=r"not found: .*nowhere\.pt"):
        load_weights(small, tmp_path / "nowhere.pt")
    pickled = tmp_path / "pickled.pt"
    torch.save(nn.Linear(2, 2), pickled)
    with pytest.raises(ModelError, match="weights_only"):
        load_weights(small, pickled)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"")
    with pytest.raises(ModelError, match=r"garbage\.pt"):
        load_weights(small, garbage)
    listing = tmp_path / "list.pt"
    torch.save([1, 2], listing)
    with pytest.raises(ModelError, match="no state_dict"):
        load_weights(small, listing)


def test_fingerprint_tracks_weights(models):
    model = _build(models, "small-cnn", (1, 8, 8))
    fp = model.fingerprint()
    assert model.fingerprint() == fp
    with torch.no_grad():
        model.head.bias[0] += 1.0
    assert model.fingerprint() != fp
    with torch.no_grad():
        model.head.bias[0] -= 1.0
    assert model.fingerprint() == fp


# ------------------------------------------------------------------ plugins
def test_builtin_plugins_register_everything(models, heads):
    assert models.names() == sorted(
        ["mlp", "small-cnn", "medium-cnn", "large-cnn", "vgg16", "resnet18", "resnet34", "tv"]
    )
    assert heads.names() == ["fc", "l2"]
    code = (
        "import sys, featrob.builtins.models, featrob.builtins.heads; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

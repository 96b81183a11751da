"""Checkpoints: writing them, loading them into a model, and warm starts.

Checkpoints written by :func:`save_checkpoint` are ``{"state_dict": ..., "featrob": card}``
and load with ``torch.load(..., weights_only=True)``; :func:`load_weights` also takes a raw
state_dict of the wrapped model or of the original, unwrapped network. :func:`warm_start`
starts a model from a checkpoint whose head may differ (``featrob train --init``).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from featrob.errors import ModelError
from featrob.models.base import FeatrobModel
from featrob.models.loading import _first_line

#: Prefixes that wrappers add to state_dict keys (DataParallel, torch.compile).
_PREFIXES = ("module.", "_orig_mod.")
#: Keys under which training scripts commonly nest the state_dict.
_NESTED = ("state_dict", "model_state_dict", "model", "net")


def save_checkpoint(model: FeatrobModel, path: str | os.PathLike[str], card: dict) -> Path:
    """Write ``{"state_dict": ..., "featrob": card}`` loadable with ``weights_only=True``.

    The card is round-tripped through JSON first (tuples become lists), so it must hold
    only JSON values; it gains the model's ``normalization`` unless it has one (the
    normalisation is not part of the state_dict). Tensors are moved to the CPU. The file is
    written atomically.

    Raises:
        ModelError: the card is not JSON-able or the file cannot be written.
    """
    try:
        clean = json.loads(json.dumps(dict(card)))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model card must hold only JSON values: {exc}") from None
    # what the model normalises with is not in its state_dict: the card keeps it
    clean.setdefault("normalization", model.normalization.to_json())
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": state, "featrob": clean}, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise ModelError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
    return path


def load_weights(model: FeatrobModel, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load weights into ``model`` in place; return the checkpoint's card (or ``{}``).

    Accepts a featrob checkpoint, a raw state_dict of the :class:`FeatrobModel`
    (``backbone.*``, ``head.*``) or a raw state_dict of the original network (e.g. a
    torchvision checkpoint with ``conv1.weight`` and ``fc.weight``): its head
    (``model.arch["head_name"]``) maps to ``head.*`` and everything else to
    ``backbone.*``. Leading ``module.`` (DataParallel) and ``_orig_mod.`` prefixes are
    stripped. Only tensors and plain data are read (``weights_only=True``).

    Raises:
        ModelError: missing or unreadable file, or keys/shapes that do not fit the model
            (one message listing missing and unexpected keys and shape mismatches).
    """
    state, card = read_state(model, path)
    _check_fit(state, model.state_dict(), Path(path))
    model.load_state_dict(state, strict=True)
    return card


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The featrob card of a checkpoint (``{}`` for a plain state_dict).

    Raises:
        ModelError: missing or unreadable file, or no state_dict in it.
    """
    return _load(Path(path))[1]


def read_state(
    model: FeatrobModel, path: str | os.PathLike[str]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The checkpoint's tensors under ``model``'s key names, and its card (or ``{}``).

    Of the key namings a file may use (the wrapped model's, or the original network's with
    its head under ``model.arch["head_name"]``), the one sharing most keys with ``model``
    wins; nothing is checked against the model here.

    Raises:
        ModelError: missing or unreadable file, or no state_dict in it.
    """
    state, card = _load(Path(path))
    state = {_strip_prefixes(k): v for k, v in state.items()}
    target = model.state_dict()
    candidates = [state]
    head_name = model.arch.get("head_name")
    if head_name:
        candidates.append(_map_original(state, head_name))
    best = max(candidates, key=lambda c: len(c.keys() & target.keys()))  # first on ties
    return best, card


def _load(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, card)`` of a checkpoint file, read with ``weights_only=True``."""
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"torch cannot load {path} with weights_only=True ({_unpickler_detail(exc)}); "
            "featrob reads only tensors and plain data: re-save the network's state_dict"
        ) from None
    except Exception as exc:
        raise ModelError(f"cannot read weights file {path}: {_first_line(exc)}") from None

    state, card = _unwrap(obj, path)
    return state, dict(card) if isinstance(card, Mapping) else {}


@torch.no_grad()
def warm_start(model: FeatrobModel, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Start ``model`` from a checkpoint that may have been trained with another head.

    The backbone must fit the file exactly. The head is, in this order of preference:

    * ``"loaded"``: the file's head fits the model's head (keys and shapes);
    * ``"adopted"``: the file's head is linear (``head.weight`` ``[K, D]``, optional
      ``head.bias``) and the model's head defines ``adopt_fc(linear) -> bool`` and accepts
      it (an HPM head starts its FC from the trained classifier, as the paper's plug-in
      fine-tuning does);
    * ``"fresh"``: anything else (another class count, a head of another kind): the head
      keeps its initialisation and training starts it from scratch.

    Returns:
        ``{"from": path, "head": "loaded" | "adopted" | "fresh", "method": the file's
        training method when its card says}`` for the new model's card.

    Raises:
        ModelError: unreadable file or a backbone that does not fit (one line).
    """
    path = Path(path)
    state, card = read_state(model, path)
    backbone = _under(state, "backbone.")
    _check_fit(backbone, model.backbone.state_dict(), path)
    model.backbone.load_state_dict(backbone, strict=True)
    head_state, head_target = _under(state, "head."), model.head.state_dict()
    fits = head_state.keys() == head_target.keys() and all(
        head_state[k].shape == head_target[k].shape for k in head_target
    )
    if fits:
        model.head.load_state_dict(head_state, strict=True)
        how = "loaded"
    else:
        how = "adopted" if _adopt_linear(model.head, head_state) else "fresh"
    return {"from": str(path), "head": how, "method": card.get("method")}


def _under(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _adopt_linear(head: nn.Module, head_state: Mapping[str, Tensor]) -> bool:
    adopt = getattr(head, "adopt_fc", None)
    weight = head_state.get("weight")
    if not callable(adopt) or weight is None or weight.dim() != 2:
        return False
    if set(head_state) - {"weight", "bias"}:
        return False
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in head_state)
    linear.weight.copy_(weight)
    if "bias" in head_state:
        linear.bias.copy_(head_state["bias"])
    return bool(adopt(linear))


def _unpickler_detail(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            detail = line.split("WeightsUnpickler error:", 1)[-1].strip()
            detail = detail or (lines[i + 1] if i + 1 < len(lines) else "unsupported content")
            return detail.split(". ", 1)[0].rstrip(".")
    return "it holds pickled Python objects, not just tensors"


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Tensor], Any]:
    """``(state_dict, card)`` from what torch.load returned."""
    card: Any = {}
    if isinstance(obj, Mapping):
        if isinstance(obj.get("featrob"), Mapping):
            card = obj["featrob"]
        for key in _NESTED:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and _all_tensors(inner):
                return dict(inner), card
        if obj and _all_tensors(obj):
            return dict(obj), card
    raise ModelError(
        f"{path} holds no state_dict (got {type(obj).__name__}); expected a mapping of "
        "parameter names to tensors or a featrob checkpoint"
    )


def _all_tensors(mapping: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in mapping.items())


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _map_original(state: Mapping[str, Tensor], head_name: str) -> dict[str, Tensor]:
    """Keys of the unwrapped network -> keys of the FeatrobModel."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(head_name + "."):
            out["head." + key[len(head_name) + 1 :]] = value
        else:
            out["backbone." + key] = value
    return out


def _few(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def _check_fit(state: Mapping[str, Tensor], target: Mapping[str, Tensor], path: Path) -> None:
    missing = sorted(target.keys() - state.keys())
    unexpected = sorted(state.keys() - target.keys())
    shapes = [
        f"{k} (file {list(state[k].shape)}, model {list(target[k].shape)})"
        for k in sorted(target.keys() & state.keys())
        if state[k].shape != target[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_few(shapes)}")
    if problems:
        raise ModelError(f"weights in {path} do not fit the model: " + "; ".join(problems))

"""featrob-timm: every timm classifier as a featrob model ``timm:NAME``.

``featrob run --model timm:resnet18 ...`` builds the network with ``timm.create_model``:
randomly initialised (featrob trains it, as any architecture it builds), from a local file
with ``--weights FILE`` (timm's own state_dict), or with timm's pretrained weights
(``--set model_options.pretrained=true``; timm fetches them from the Hugging Face hub, so
this needs a network or a filled hub cache). Other ``model_options`` go to
``timm.create_model`` (``drop_rate``, ``img_size``, ...).

The input normalisation is the model's pretrained config (``mean``/``std``, e.g. ImageNet's
for ``resnet18``, 0.5 for many ViTs), declared on the network as ``featrob_normalize``; for
grey (1-channel) data featrob averages the three values. ``--normalize`` overrides it.

* The input channels and class count come from the data set (``in_chans``, ``num_classes``).
* Models with a fixed input size (ViTs) get the data set's image size (``img_size``).
* Pretrained weights whose classifier fits the data set's classes are analysed as they are;
  with another class count timm starts a fresh classifier and featrob fine-tunes the model
  (``[train]`` settings), caching it like any model it trains.
"""

from __future__ import annotations

from typing import Any

import featrob

__version__ = "0.1.0"


def timm_model(
    input_shape: tuple[int, int, int],
    num_classes: int,
    arg: str | None = None,
    pretrained: bool = False,
    **options: Any,
) -> Any:
    """The timm classifier ``timm:NAME`` for ``input_shape`` images and ``num_classes``.

    Raises:
        featrob.ConfigError: no name given.
        featrob.UnknownNameError: not a timm model (with close matches).
        featrob.ModelError: timm cannot build it or fetch its pretrained weights.
    """
    import timm
    from timm.models import get_pretrained_cfg

    from featrob import ConfigError, ModelError, UnknownNameError

    if not arg:
        raise ConfigError("model 'timm' needs a timm model name, e.g. 'timm:resnet18'")
    if not timm.is_model(arg):
        import difflib

        close = difflib.get_close_matches(arg, timm.list_models(), n=3, cutoff=0.6)
        if close:
            raise UnknownNameError("timm model", arg, close)
        raise ConfigError(f"unknown timm model {arg!r}; timm.list_models() lists them all")
    channels, height, width = input_shape
    cfg = get_pretrained_cfg(arg)
    if cfg is not None and cfg.fixed_input_size and "img_size" not in options:
        options["img_size"] = height if height == width else (height, width)
    try:
        net = timm.create_model(
            arg, pretrained=bool(pretrained), num_classes=num_classes, in_chans=channels, **options
        )
    except Exception as exc:
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0] if text else ''}"
        if pretrained:
            raise ModelError(
                f"timm could not build {arg!r} with its pretrained weights ({reason}); "
                "without a network, fill the Hugging Face cache or pass --weights FILE"
            ) from None
        raise ModelError(f"timm could not build {arg!r}: {reason}") from None
    config = getattr(net, "pretrained_cfg", None) or {}
    mean, std = config.get("mean"), config.get("std")
    if mean is not None and std is not None:
        if channels != len(mean):  # grey inputs: one value for the one channel
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        net.featrob_normalize = {
            "mean": list(mean),
            "std": list(std),
            "source": f"timm's pretrained config of {arg}",
        }
    if pretrained and config.get("num_classes") == num_classes:
        source = config.get("hf_hub_id") or config.get("url") or "timm"
        net.featrob_pretrained = f"timm {arg} pretrained ({source})"
    return net


@featrob.hookimpl
def featrob_register_models(register: Any) -> None:
    """Register ``timm``."""
    register(
        timm_model,
        name="timm",
        description="a timm classifier: timm:NAME (random init; --weights FILE, or "
        "model_options.pretrained=true with a network); timm's normalisation",
    )

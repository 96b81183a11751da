"""Rendering a :class:`~featrob.results.Figure` (data plus labels) to PNG with matplotlib.

Every figure kind a metric may return is drawn here: ``line``, ``scatter``, ``hist``,
``box`` (raw values or precomputed ``bxp`` statistics), ``bar`` and ``image``. Options the
plugins use: ``logx``/``logy``, ``hline`` (a horizontal reference line, e.g. ``log 2``),
``diagonal`` (``y = x``). Rendering runs headless (Agg, through matplotlib's object API: no
pyplot, so the caller's backend and figures are left alone) with the settings matplotlib
read from its rc files (``rcParamsOrig``: settings changed in the process do not reach the
report, so a figure looks the same whichever process drew it).

:func:`render_png` reads a figure drawn before from the figure cache
(:mod:`featrob.figure_cache`, under ``$FEATROB_HOME/figures``) and draws only new ones, with
:func:`draw_png`; a run whose figures are all cached never imports matplotlib.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from featrob.figure_cache import FigureCache, default_cache
from featrob.results import Figure

#: Figure size in inches and resolution of the embedded PNGs.
SIZE = (6.0, 3.8)
DPI = 100


def render_png(fig: Figure, cache: FigureCache | None = None) -> bytes:
    """The figure as PNG bytes: the bytes :func:`draw_png` returns, read from ``cache``
    (default: ``$FEATROB_HOME/figures``) when the same figure was drawn before by the same
    renderer (:func:`renderer_stamp`), else drawn and kept there.

    Raises:
        ValueError: an unknown kind or series data it cannot draw.
    """
    cache = cache if cache is not None else default_cache()
    return cache.get_or_draw(fig, draw_png, renderer_stamp())


def renderer_stamp() -> dict[str, Any]:
    """Everything besides the figure that determines :func:`draw_png`'s bytes: format, size,
    resolution, the versions of matplotlib, Pillow and numpy, this module's code and the
    matplotlibrc files matplotlib may read (found without importing matplotlib)."""
    return {**_fixed_stamp(), "rc": _rc_digest()}


@functools.cache
def _fixed_stamp() -> dict[str, Any]:
    versions = {}
    for dist in ("matplotlib", "pillow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "format": "png",
        "size": list(SIZE),
        "dpi": DPI,
        **versions,
        "numpy": np.__version__,
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }


def _rc_digest() -> str:
    """A digest of every matplotlibrc file matplotlib could read (``matplotlib_fname``'s
    places: ``$MATPLOTLIBRC``, ``./matplotlibrc``, the user's config folder)."""
    home = Path.home()
    env = os.environ
    places = [Path("matplotlibrc")]
    if env.get("MATPLOTLIBRC"):
        places += [Path(env["MATPLOTLIBRC"]), Path(env["MATPLOTLIBRC"]) / "matplotlibrc"]
    if env.get("MPLCONFIGDIR"):
        places.append(Path(env["MPLCONFIGDIR"]) / "matplotlibrc")
    xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    places += [xdg / "matplotlib" / "matplotlibrc", home / ".matplotlib" / "matplotlibrc"]
    digest = hashlib.sha256()
    for place in places:
        try:
            data = place.read_bytes() if place.is_file() else None
        except OSError:
            data = None
        if data is not None:
            digest.update(str(place.absolute()).encode() + b"\0" + data + b"\0")
    return digest.hexdigest()


def draw_png(fig: Figure) -> bytes:
    """The figure drawn anew as PNG bytes (no cache).

    Raises:
        ValueError: an unknown kind or series data it cannot draw.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    rc = {k: v for k, v in matplotlib.rcParamsOrig.items() if k != "backend"}
    with matplotlib.rc_context(rc):
        figure = MplFigure(figsize=SIZE, dpi=DPI)
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        _draw(ax, fig)
        ax.set_title(fig.title, fontsize=10)
        ax.set_xlabel(fig.xlabel)
        ax.set_ylabel(fig.ylabel)
        options = fig.options or {}
        if options.get("logx"):
            ax.set_xscale("log")
        if options.get("logy"):
            ax.set_yscale("log")
        if options.get("hline") is not None:
            ax.axhline(float(options["hline"]), color="grey", linestyle="--", linewidth=1)
        if options.get("diagonal"):
            low, high = ax.get_xlim()
            ax.plot([low, high], [low, high], color="grey", linestyle=":", linewidth=1)
        if any(s.get("label") for s in fig.series) and fig.kind not in ("image", "box", "bar"):
            ax.legend(fontsize=8)
        figure.tight_layout()
        buf = io.BytesIO()
        figure.savefig(buf, format="png")
        return buf.getvalue()


def _draw(ax: Any, fig: Figure) -> None:
    series = fig.series
    if fig.kind == "line":
        for s in series:
            x, y = _floats(s["x"]), _floats(s["y"])
            ax.plot(x, y, marker="o", markersize=3, label=s.get("label"))
    elif fig.kind == "scatter":
        for s in series:
            ax.scatter(_floats(s["x"]), _floats(s["y"]), s=6, alpha=0.6, label=s.get("label"))
    elif fig.kind == "hist":  # one set of bin edges for every series, so they compare
        values = [_floats(s["values"]) for s in series]
        values = [v[np.isfinite(v)] for v in values]
        pooled = np.concatenate(values) if values else np.zeros(0)
        bins = max((int(s.get("bins", 20)) for s in series), default=20)
        edges = np.histogram_bin_edges(pooled, bins=bins) if len(pooled) else bins
        for s, v in zip(series, values, strict=True):
            ax.hist(v, bins=edges, alpha=0.5, label=s.get("label"))
    elif fig.kind == "box":
        _draw_box(ax, series, fig.options or {})
    elif fig.kind == "bar":
        count = max(len(series), 1)
        width = 0.8 / count
        for i, s in enumerate(series):
            x = np.arange(len(s["y"])) + i * width
            ax.bar(x, _floats(s["y"]), width=width, label=s.get("label"))
        if series:
            ax.set_xticks(np.arange(len(series[0]["y"])) + 0.4 - width / 2)
            ax.set_xticklabels([str(v) for v in series[0].get("x", range(len(series[0]["y"])))])
        if count > 1:
            ax.legend(fontsize=8)
    elif fig.kind == "image":
        ax.imshow(np.asarray(series[0]["values"], dtype=float), cmap="viridis")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        raise ValueError(f"unknown figure kind {fig.kind!r}")


BXP_KEYS = ("med", "q1", "q3", "whislo", "whishi")


def _draw_box(ax: Any, series: list[dict[str, Any]], options: dict[str, Any]) -> None:
    count = 0
    for s in series:
        if "stats" in s:
            labels = s.get("x", range(len(s["stats"])))
            stats = [
                {"label": str(label), **{k: _float(st.get(k)) for k in BXP_KEYS}}
                for st, label in zip(s["stats"], labels, strict=False)
            ]
            ax.bxp(stats, showfliers=False)
            count = max(count, len(stats))
        else:
            groups = [_floats(v) for v in s["values"]]
            ax.boxplot([g[np.isfinite(g)] for g in groups], showfliers=False)
            count = max(count, len(groups))
    second = options.get("secondary")
    if isinstance(second, dict) and second.get("y") is not None:
        twin = ax.twinx()  # e.g. the scale plugin's error rate per section
        y = _floats(second["y"])
        twin.plot(np.arange(1, len(y) + 1), y, color="tab:red", marker="o", markersize=3)
        twin.set_ylabel(str(second.get("ylabel", second.get("label", ""))), color="tab:red")


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _floats(values: Any) -> np.ndarray:
    """Numbers as floats; None (JSON's NaN) becomes NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)

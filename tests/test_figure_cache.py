"""The figure cache: a figure drawn before is read back byte for byte, a changed one is drawn
anew, and a cache that cannot be written costs one warning line, never a figure."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from featrob.builtins import figures
from featrob.builtins.figures import draw_png, render_png, renderer_stamp
from featrob.figure_cache import FigureCache, default_cache, figure_digest
from featrob.results import Figure, MetricResult, Results
from featrob.run_warnings import collected

STATS = [{"med": 0.5, "q1": 0.4, "q3": 0.6, "whislo": 0.2, "whishi": 0.8}]


def _zoo() -> dict[str, Figure]:
    return {
        "line": Figure("line", [{"label": "a", "x": [0, 1, 2], "y": [1, None, 3]}],
                       title="t", options={"hline": 0.69, "logy": True}),
        "scatter": Figure("scatter", [{"label": "s", "x": [1, 2], "y": [2, 1]}],
                          options={"diagonal": True}),
        "hist": Figure("hist", [{"label": "h", "values": [1, 2, 2, 3], "bins": 3}]),
        "box": Figure("box", [{"label": "c", "x": [1], "stats": STATS}],
                      options={"secondary": {"label": "error", "x": [1], "y": [0.3]}}),
        "bar": Figure("bar", [{"label": "b", "x": ["cat", "dog"], "y": [1, 2]}]),
        "image": Figure("image", [{"values": [[0, 1], [1, 0]]}]),
    }  # fmt: skip


class Counting:
    """draw_png, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fig: Figure) -> bytes:
        self.calls += 1
        return draw_png(fig)


def test_a_cached_figure_is_the_fresh_render_byte_for_byte(tmp_path: Path):
    cache = FigureCache(tmp_path / "figures")
    for name, fig in _zoo().items():
        first = render_png(fig, cache)
        again = render_png(fig, cache)
        assert first == again == draw_png(fig), name
        assert first.startswith(b"\x89PNG")
    assert (cache.drawn, cache.hits) == (len(_zoo()), len(_zoo()))
    assert len(list(cache.root.glob("*.png"))) == len(_zoo())


def test_a_hit_does_not_draw_and_a_changed_figure_is_drawn_anew(tmp_path: Path):
    cache, draw = FigureCache(tmp_path), Counting()
    fig = _zoo()["line"]
    stamp = renderer_stamp()
    before = cache.get_or_draw(fig, draw, stamp)
    assert cache.get_or_draw(fig, draw, stamp) == before and draw.calls == 1
    changed = [
        Figure("line", [{"label": "a", "x": [0, 1, 2], "y": [1, None, 4]}], title="t",
               options={"hline": 0.69, "logy": True}),  # a number
        Figure("line", fig.series, title="other title", options=fig.options),
        Figure("line", fig.series, title="t", options={"hline": 0.69}),  # an option
        Figure("scatter", fig.series, title="t", options=fig.options),  # the kind
    ]  # fmt: skip
    for i, other in enumerate(changed, start=2):
        assert cache.get_or_draw(other, draw, stamp) != before
        assert draw.calls == i
    # the same figure under another renderer (size, versions, code, matplotlibrc) too
    cache.get_or_draw(fig, draw, {**stamp, "dpi": stamp["dpi"] + 1})
    assert draw.calls == len(changed) + 2


def test_the_digest_covers_content_and_renderer_and_takes_numpy_data():
    import numpy as np

    stamp = renderer_stamp()
    a = Figure("line", [{"x": [0, 1], "y": [0.5, 1.0]}])
    b = Figure("line", [{"x": np.arange(2), "y": np.array([0.5, 1.0], dtype=np.float32)}])
    assert figure_digest(a, stamp) == figure_digest(b, stamp)  # same numbers, same figure
    nan = Figure("box", [{"x": [1], "stats": [{**STATS[0], "med": np.float32("nan")}]}])
    null = Figure("box", [{"x": [1], "stats": [{**STATS[0], "med": None}]}])
    assert figure_digest(nan, stamp) == figure_digest(null, stamp)  # as results.json has it
    inf = Figure("line", [{"x": [0, 1], "y": [0.5, float("inf")]}])
    assert figure_digest(inf, stamp) != figure_digest(null, stamp)
    assert figure_digest(a, stamp) != figure_digest(a, {**stamp, "matplotlib": "0.0"})
    with pytest.raises(TypeError):
        figure_digest(Figure("line", [{"x": [object()], "y": [1]}]), stamp)


def test_a_report_drawn_again_from_the_run_folder_finds_the_run_s_figures(tmp_path: Path):
    """``featrob report RUN_DIR`` draws from results.json, where NaN is null: no new figure."""
    import numpy as np

    figs = {
        **_zoo(),
        "nan": Figure("box", [{"x": [1, 2], "stats": [{**STATS[0], "q1": np.nan}, STATS[0]]}]),
        "np": Figure("line", [{"x": np.arange(3), "y": np.array([1, np.nan, 2], np.float32)}]),
    }
    results = Results(featrob="0", config={}, plugins={}, metrics={"m": MetricResult(figures=figs)})
    results.save(tmp_path / "run")
    loaded = Results.load(tmp_path / "run").metrics["m"].figures
    cache, draw = FigureCache(tmp_path / "figures"), Counting()
    for name, fig in figs.items():
        assert cache.get_or_draw(loaded[name], draw, renderer_stamp()) == cache.get_or_draw(
            fig, draw, renderer_stamp()
        ), name
        assert draw_png(loaded[name]) == draw_png(fig), name  # one digest, one picture
    assert draw.calls == len(figs) and cache.hits == len(figs)


def test_figure_data_that_is_not_plain_is_drawn_not_cached(tmp_path: Path):
    cache, draw = FigureCache(tmp_path), Counting()
    fig = Figure("line", [{"x": [0, 1], "y": [1, 2], "extra": {1, 2}}])  # a set: no digest
    assert cache.get_or_draw(fig, draw, renderer_stamp()) == draw_png(fig)
    assert cache.drawn == 0 and not any(tmp_path.iterdir())


def test_a_figure_that_cannot_be_drawn_raises_and_is_not_kept(tmp_path: Path):
    cache = FigureCache(tmp_path)
    with pytest.raises(ValueError, match="unknown figure kind"):
        render_png(Figure("pie", [{"x": [1]}]), cache)
    assert not list(tmp_path.glob("*.png"))


def test_a_damaged_cache_file_is_drawn_again_and_replaced(tmp_path: Path):
    cache, draw = FigureCache(tmp_path), Counting()
    fig, stamp = _zoo()["bar"], renderer_stamp()
    good = cache.get_or_draw(fig, draw, stamp)
    path = cache.path(figure_digest(fig, stamp))
    path.write_bytes(good[: len(good) // 2])  # truncated
    assert cache.get_or_draw(fig, draw, stamp) == good and draw.calls == 2
    assert path.read_bytes() == good


def _unwritable(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """os.access says ``root`` and what is under it cannot be written (tests run as root)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path).absolute().is_relative_to(root.absolute()) and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_a_read_only_cache_still_renders_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    filled = FigureCache(tmp_path / "figures")
    kept = render_png(_zoo()["hist"], filled)  # a figure drawn while it was writable
    _unwritable(monkeypatch, tmp_path)
    cache, lines, shown = FigureCache(tmp_path / "figures"), [], []
    with collected(lines, shown.append):
        pngs = {name: render_png(fig, cache) for name, fig in _zoo().items()}
    assert pngs == {name: draw_png(fig) for name, fig in _zoo().items()}
    assert pngs["hist"] == kept and cache.hits == 1  # read back all the same
    assert cache.drawn == len(_zoo()) - 1
    assert len(lines) == 1 and len(shown) == 1
    assert "not cached" in lines[0] and "is not writable" in lines[0]
    assert len(list((tmp_path / "figures").glob("*.png"))) == 1  # nothing new written


def test_a_failed_write_is_one_warning_line_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    cache, lines = FigureCache(tmp_path), []
    with collected(lines, lambda _line: None):
        for fig in _zoo().values():
            assert render_png(fig, cache) == draw_png(fig)
    assert len(lines) == 1 and "Permission denied" in lines[0]
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def test_a_cache_root_that_is_a_file_still_renders(tmp_path: Path):
    (tmp_path / "figures").write_text("not a folder")
    cache, lines = FigureCache(tmp_path / "figures"), []
    with collected(lines, lambda _line: None):
        assert render_png(_zoo()["bar"], cache) == draw_png(_zoo()["bar"])
    assert len(lines) == 1 and "is a file" in lines[0]


def test_warnings_raised_while_drawing_are_raised_again_on_a_hit(tmp_path: Path):
    def noisy(fig: Figure) -> bytes:
        warnings.warn("no positive values to scale", UserWarning, stacklevel=1)
        return draw_png(fig)

    cache, stamp, fig = FigureCache(tmp_path), renderer_stamp(), _zoo()["scatter"]
    for _ in range(2):  # drawn, then read back: the same warning both times
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache.get_or_draw(fig, noisy, stamp)
        assert [str(w.message) for w in caught] == ["no positive values to scale"]
        assert caught[0].category is UserWarning and caught[0].filename == __file__
    assert cache.hits == 1


def test_the_html_report_reads_its_figures_from_featrob_home(featrob_home: Path):
    from featrob.builtins.report_html import render_html

    results = Results(
        featrob="0",
        plugins={},
        config={"model": "m", "dataset": "d"},
        metrics={"mine": MetricResult(summary={"x": 1.0}, figures=_zoo())},
    )
    first = render_html(results)
    cache = default_cache()
    assert cache.root == featrob_home / "figures"
    hits = cache.hits
    assert render_html(results) == first
    assert cache.hits - hits == len(_zoo())


def test_the_html_report_with_a_read_only_home_has_every_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from featrob.builtins.report_html import render_html

    home = tmp_path / "home"
    monkeypatch.setenv("FEATROB_HOME", str(home))
    _unwritable(monkeypatch, tmp_path)
    results = Results(
        featrob="0", config={}, plugins={}, metrics={"mine": MetricResult(figures=_zoo())}
    )
    lines: list[str] = []
    with collected(lines, lambda _line: None):
        text = render_html(results)
    assert text.count("data:image/png;base64,") == len(_zoo())
    assert len(lines) == 1 and not home.exists()


def test_the_folder_is_kept_under_its_size_least_recently_used_first(tmp_path: Path):
    cache = FigureCache(tmp_path)
    for i in range(10):
        path = tmp_path / f"{i:02d}.png"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "00.warnings.json").write_text("[]")
    cache.prune(max_bytes=500)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i:02d}.png" for i in range(7, 10)]


def test_a_run_whose_figures_are_cached_does_not_import_matplotlib(featrob_home: Path):
    fig = _zoo()["box"]
    render_png(fig)  # now in $FEATROB_HOME/figures
    code = (
        "import sys\n"
        "from featrob.builtins.figures import render_png\n"
        "from tests.test_figure_cache import _zoo\n"
        "png = render_png(_zoo()['box'])\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
        "sys.stdout.buffer.write(png)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "FEATROB_HOME": str(featrob_home), "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, cwd=root, check=True
    )
    assert out.stdout == draw_png(fig)


def test_the_renderer_stamp_follows_the_matplotlibrc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    before = renderer_stamp()
    (tmp_path / "matplotlibrc").write_text("axes.grid: True\n")
    assert renderer_stamp()["rc"] != before["rc"]
    assert renderer_stamp()["dpi"] == figures.DPI

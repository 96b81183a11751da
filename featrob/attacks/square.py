"""Square Attack (Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020) as AutoAttack runs it (Croce &
Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020), for the Linf and L2 threat models.

Square is a score-based black-box attack: it never takes a gradient, only the model's logits
at proposed points. Starting from a structured point of the eps ball's surface (Linf:
vertical stripes; L2: a grid of ``eta`` patterns), it repeatedly changes the perturbation in
a random square window and keeps the change when the margin ``z_y - max_{i != y} z_i``
drops or the sample becomes misclassified. The window side shrinks with AutoAttack's
``p_selection`` schedule (``resc_schedule=False``, as in AutoAttack's standard version).

Unlike AutoAttack, which draws one window per iteration for the whole batch from torch's
global generator, every random number here is drawn per sample from :mod:`featrob.seeding`
with a stream made of (restart, iteration, purpose): a sample's trajectory depends only on
its own seed, never on the other samples of its batch.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, ClassVar

import torch
from torch import Tensor

from featrob.attacks.base import (
    Attack,
    Forward,
    LossFn,
    SuccessFn,
    margin_loss,
    retire,
    take_rows,
)
from featrob.errors import ConfigError
from featrob.options import float_param, int_param
from featrob.plan import Passes
from featrob.seeding import signs, uniform

#: Iterations after which p halves (AutoAttack's ``p_selection`` without rescaling).
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

# Random-number purposes at the starting point (the low bits of the stream).
_STRIPES, _TILE_SIGNS, _TILE_TRANSPOSES = 0, 1, 2

# Iterations whose random numbers (and Linf window rows and columns) are made in one go: one
# hash call per chunk instead of ~15 small kernels per query. The factors are small
# ([K, B, c, h] and [K, B, w]), so the chunk needs no cap for large images.
_CHUNK = 32


def _stream(restart: int, iteration: int, purpose: int) -> int:
    """Stream id of one draw; ``iteration`` -1 is the starting point."""
    return (restart << 40) | ((iteration + 1) << 3) | purpose


def p_selection(p_init: float, iteration: int) -> float:
    """Fraction of the image a square covers at ``iteration`` (0-based), as in AutoAttack."""
    return p_init / 2 ** sum(iteration > it for it in P_HALVINGS)


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """True logit minus best other logit (<= 0: misclassified); NaN counts as +inf (robust)."""
    m = -margin_loss(logits.detach().double(), y)
    return torch.where(torch.isnan(m), torch.full_like(m, math.inf), m)


def _rectangle(rows: int, cols: int) -> Tensor:
    """AutoAttack's ``eta_rectangles`` for L2: nested squares centred at ``(rows//2, cols//2)``.

    The square of Chebyshev radius k adds ``1 / (k + 1)^2``, so a pixel at distance d holds
    ``sum_{k >= d} 1 / (k + 1)^2``; the result has unit L2 norm.
    """
    if rows == 0:
        return torch.zeros(0, cols, dtype=torch.float64)
    n_rings = max(rows // 2 + 1, cols // 2 + 1)
    weights = 1.0 / torch.arange(1, n_rings + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)
    dist = torch.maximum(
        (torch.arange(rows) - rows // 2).abs()[:, None],
        (torch.arange(cols) - cols // 2).abs()[None, :],
    )
    out = tail[dist]
    return out / out.norm()


def eta(s: int) -> Tensor:
    """AutoAttack's L2 ``eta(s)`` pattern ``[s, s]`` (before its random transposition):
    positive nested squares on the top half, negative ones on the bottom half, unit L2 norm."""
    out = torch.cat([_rectangle(s // 2, s), -_rectangle(s - s // 2, s)])
    return out / out.norm()


@lru_cache(maxsize=64)
def _eta_on(s: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """:func:`eta` cached on a device (read-only: callers never modify it in place)."""
    return eta(s).to(device=device, dtype=dtype)


def _windows(top: Tensor, left: Tensor, s: int, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    """``s x s`` windows at ``(top, left)`` (``[B]`` each): mask ``[B, 1, h, w]`` and the
    clamped in-window row ``[B, h]`` and column ``[B, w]`` offsets (for placing a
    pattern)."""
    mask = _span(top, s, h)[:, :, None] & _span(left, s, w)[:, None, :]
    rows = torch.arange(h, device=top.device) - top[:, None]
    cols = torch.arange(w, device=top.device) - left[:, None]
    return mask[:, None], rows.clamp(0, s - 1), cols.clamp(0, s - 1)


def _span(start: Tensor, side: int | Tensor, size: int) -> Tensor:
    """0/1 (bool) ``[..., size]``: positions ``start <= i < start + side`` (``side`` one
    for all or a tensor broadcastable to ``start``)."""
    offset = torch.arange(size, device=start.device) - start[..., None]
    return (offset >= 0) & (offset < (side[..., None] if isinstance(side, Tensor) else side))


def _place(patterns: Tensor, rows: Tensor, cols: Tensor, mask: Tensor) -> Tensor:
    """Per-sample ``[B, s, s]`` patterns placed in their windows: ``[B, 1, h, w]``."""
    batch = torch.arange(len(patterns), device=patterns.device)[:, None, None]
    return patterns[batch, rows[:, :, None], cols[:, None, :]][:, None] * mask


def _l2_normalise(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    return t / (t.square().sum(dims, keepdim=True).sqrt() + 1e-12)


class SquareAttack(Attack):
    """Andriushchenko et al.'s Square Attack with AutoAttack's settings (margin loss).

    Per restart and still-robust sample: query the starting point, then for each of
    ``n_queries`` iterations propose one candidate, query it and accept it when its margin
    is lower than the best so far or <= 0. A sample stops as soon as its margin is <= 0;
    each iteration queries ``forward`` once, batched over the still-robust samples.

    * Linf start: ``x + eps * sign`` with a random sign per sample, channel and column
      (vertical stripes). Update: a random ``s x s`` window moves by ``+-2 eps`` (one sign
      per channel), then everything is projected onto the ball and [0, 1].
    * L2 start: a grid of ``eta`` patterns (tiles of side ``h // 5``, each with a random sign
      per channel and a random transposition), scaled to norm eps. Update: the perturbation
      mass of a second random window and of the first window is moved into the first one,
      as a fresh ``eta`` pattern plus the old window content; the result is rescaled to
      norm eps and clipped to [0, 1].
    * Window side ``s = round(sqrt(p * h * w))`` (Linf at least 1; L2 at least 3 and odd),
      at most ``min(h, w)``; ``p = p_init / 2^k`` after k of the iterations in
      :data:`P_HALVINGS` (AutoAttack's ``p_selection``, ``resc_schedule=False``). Window
      corners are drawn, as in AutoAttack and the original code, in ``[0, h - s)``: the
      last offset is never drawn.

    Parameters (``defaults``):
        n_queries (5000): iterations per restart (AutoAttack's standard version: 5000).
        restarts (1): runs; each later run (fresh start, new random streams) attacks only
            the samples that are still robust.
        p_init (0.8): initial fraction of the image a square covers; AutoAttack's standard
            version uses 0.8 for Linf and L2 alike.

    Random numbers: per sample from ``sample_seeds`` with streams derived from (restart,
    iteration, purpose), so results do not depend on batching.

    After each :meth:`perturb`, :attr:`last_queries` holds the queries per sample ``[B]``
    (int64), counted as AutoAttack does: the starting point plus one per iteration, summed
    over restarts; at most ``restarts * (n_queries + 1)``. The clean check that decides which
    samples to attack is charged only to the samples it stops (already misclassified: 1).
    """

    name: ClassVar[str] = "square"
    description: ClassVar[str] = "Square Attack (Andriushchenko et al. 2020), black box (Linf, L2)"
    defaults: ClassVar[dict[str, Any]] = {"n_queries": 5000, "restarts": 1, "p_init": 0.8}
    uses_gradients: ClassVar[bool] = False

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        super().__init__(eps, norm, seed, **params)
        p = self.params
        p["n_queries"] = int_param(self.name, "n_queries", p["n_queries"], 0)
        p["restarts"] = int_param(self.name, "restarts", p["restarts"], 1)
        p["p_init"] = float_param(self.name, "p_init", p["p_init"], positive=True)
        if p["p_init"] > 1:
            raise ConfigError(f"{self.name}: p_init must be in (0, 1], got {p['p_init']!r}")
        self.last_queries: Tensor | None = None

    def passes(self, n_classes: int) -> Passes:
        """One forward pass per query and restart, no gradients."""
        return Passes(forward=self.params["n_queries"] * self.params["restarts"] + 1)

    def perturb(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        success: SuccessFn | None = None,
        sample_seeds: Tensor | None = None,
    ) -> Tensor:
        """Run Square on the batch ``x`` ``[B, C, H, W]`` with labels ``y``.

        Args:
            forward: the model, returning logits (only evaluated, never differentiated).
            x: clean images in [0, 1].
            y: true labels.
            loss: must be None: Square minimises the logit margin.
            success: ignored; success is Square's own test, margin <= 0.
            sample_seeds: per-sample seeds (see :class:`Attack`).

        Returns:
            Per sample the best point queried: a misclassified one where found, else the one
            of lowest margin (the clean input included). Inside the eps ball and [0, 1].

        Raises:
            ConfigError: a loss was given, or ``x`` is not a batch of images.
        """
        if loss is not None:
            raise ConfigError(
                f"{self.name}: Square minimises the margin on logits; it takes no loss"
            )
        if x.dim() != 4:
            raise ConfigError(f"{self.name}: needs images [B, C, H, W], got {tuple(x.shape)}")
        x = x.detach()
        queries = torch.zeros(len(x), dtype=torch.int64, device=x.device)
        self.last_queries = queries
        if len(x) == 0 or self.eps == 0:
            return x.clamp(0, 1)
        seeds = self._seeds(x, sample_seeds).to(device=x.device, dtype=torch.int64)

        with torch.no_grad():
            best_x = x.clamp(0, 1)
            best_m = _margin(forward(best_x), y)
            queries = (best_m <= 0).long()
            for restart in range(self.params["restarts"]):
                idx = (best_m > 0).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                adv, m, q = self._run(forward, x[idx], y[idx], seeds[idx], restart)
                better = (m < best_m[idx]) | (m <= 0)
                best_m[idx] = torch.where(better, m, best_m[idx])
                best_x[idx] = torch.where(better[:, None, None, None], adv, best_x[idx])
                queries[idx] += q
        self.last_queries = queries
        return best_x

    # ------------------------------------------------------------------ one run
    def _run(
        self, forward: Forward, x: Tensor, y: Tensor, seeds: Tensor, restart: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One Square run on every sample of ``x``: best point, its margin, queries used.

        The samples still robust are kept in their own compact tensors (their inputs, box
        bounds, seeds, labels, best points and margins), indexed down only when a sample
        breaks: an iteration costs the query and the candidate, not a gather and a scatter
        of every per-sample tensor.
        """
        x_best = self._start(x, seeds, restart)
        margin = _margin(forward(x_best), y)
        queries = torch.ones(len(x), dtype=torch.int64, device=x.device)
        propose = self._linf_candidate if self.norm == "linf" else self._l2_candidate
        rows = (margin > 0).nonzero().squeeze(1)
        xa, ba, sa, ya, ma = x[rows], x_best[rows], seeds[rows], y[rows], margin[rows]
        box = self._box(xa)
        done_its, n_queries = 0, self.params["n_queries"]
        draws: tuple[Tensor, ...] = ()
        for it in range(n_queries):
            if rows.numel() == 0:  # known on the host after nonzero(): no extra sync
                break
            k = it % _CHUNK
            if k == 0:
                draws = self._draws(sa, restart, it, min(_CHUNK, n_queries - it), x)
            x_new = propose(xa, ba, tuple(t[k] for t in draws), it, box)
            m_new = _margin(forward(x_new), ya)
            accept = (m_new < ma) | (m_new <= 0)
            ma = torch.where(accept, m_new, ma)
            ba = take_rows(accept, x_new, ba, in_place=True)  # ba: compact copies
            done_its = it + 1
            broken = ma <= 0
            if bool(broken.any()):  # one sync per iteration, as the nonzero() it replaces
                queries[rows[broken]] += done_its
                rows, keep = retire(broken, rows, (x_best, margin), (ba, ma))
                xa, ba, sa, ya, ma = (t[keep] for t in (xa, ba, sa, ya, ma))
                box = tuple(t[keep] for t in box) if box else box
                draws = tuple(t[:, keep] for t in draws)
        x_best[rows], margin[rows] = ba, ma
        queries[rows] += done_its
        return x_best, margin, queries

    def _box(self, x: Tensor) -> tuple[Tensor, ...]:
        """Linf: the bounds ``[max(x - eps, 0), min(x + eps, 1)]`` of a candidate (one clamp
        per candidate instead of four operations); L2: nothing."""
        if self.norm != "linf":
            return ()
        return (x - self.eps).clamp_(min=0), (x + self.eps).clamp_(max=1)

    def _start(self, x: Tensor, seeds: Tensor, restart: int) -> Tensor:
        """The starting point: Linf vertical stripes, L2 a grid of signed ``eta`` tiles."""
        _, c, h, w = x.shape
        stream = _stream(restart, -1, 0)
        if self.norm == "linf":
            stripes = signs(seeds, (c, 1, w), stream + _STRIPES).to(x.dtype)
            return (x + self.eps * stripes).clamp(0, 1)
        s = max(h // 5, 1)  # AutoAttack: h // 5 (which fails below 5 pixels)
        start = max((h - 5 * s) // 2, 0)  # the grid's first row and column (both from h)
        n_rows, n_cols = h // s, w // s
        pix_r = torch.arange(h, device=x.device) - start
        pix_c = torch.arange(w, device=x.device) - start
        tile_r, tile_c = pix_r.div(s, rounding_mode="floor"), pix_c.div(s, rounding_mode="floor")
        valid = ((pix_r >= 0) & (tile_r < n_rows))[:, None] & ((pix_c >= 0) & (tile_c < n_cols))
        tile_r, tile_c = tile_r.clamp(0, n_rows - 1), tile_c.clamp(0, n_cols - 1)
        pattern = _eta_on(s, x.device, x.dtype)
        local = (pix_r % s)[:, None], (pix_c % s)[None, :]
        plain, flipped = pattern[local], pattern.T[local]  # [h, w] each
        tile_signs = signs(seeds, (c, n_rows, n_cols), stream + _TILE_SIGNS).to(x.dtype)
        transpose = uniform(seeds, (n_rows, n_cols), stream + _TILE_TRANSPOSES) > 0.5
        tile_signs = tile_signs[:, :, tile_r][:, :, :, tile_c]  # [B, c, h, w]
        transpose = transpose[:, tile_r][:, :, tile_c][:, None]  # [B, 1, h, w]
        delta = torch.where(transpose, flipped, plain) * tile_signs * valid
        return (x + self.eps * _l2_normalise(delta, (1, 2, 3))).clamp(0, 1)

    def _side(self, it: int, h: int, w: int) -> int:
        """Window side at iteration ``it`` (AutoAttack's rounding and bounds)."""
        s = round(math.sqrt(p_selection(self.params["p_init"], it) * h * w))
        if self.norm == "l2":
            s = max(s, 3)
            s += 1 - s % 2  # odd
        return min(max(s, 1), h, w)

    def _draws(
        self, seeds: Tensor, restart: int, first: int, count: int, like: Tensor
    ) -> tuple[Tensor, ...]:
        """The random numbers of iterations ``first .. first + count - 1``, iteration-major.

        Per sample and iteration one stream (:func:`_stream`), ``2n + c + 1`` uniforms
        (float64): ``n`` window corners (top, left, ...) in ``[0, h - s) x [0, w - s)``, a
        sign per channel and a transposition flag (L2's ``eta``); ``n`` is 1 for Linf, 2 for
        L2. Drawing a chunk at once gives the same numbers as drawing each iteration alone.
        ``like``: the images (shape, dtype).

        Returns:
            Linf: ``(rows [K, B, c, h, 1], cols [K, B, 1, 1, w])``, the window's rows
            times its ``+-2 eps`` move per channel and its columns as 0/1 (their product is
            the move, built per iteration in one pass; a chunk of full masks would cost
            more than the queries' own arithmetic); L2: ``(u [K, B, 2n + c + 1],)``.
        """
        _, c, h, w = like.shape
        its = range(first, first + count)
        n = 1 if self.norm == "linf" else 2
        streams = [_stream(restart, it, 0) for it in its]
        u = uniform(seeds, (2 * n + c + 1,), streams).to(torch.float64).transpose(0, 1)
        if self.norm != "linf":
            return (u,)
        side = torch.tensor([self._side(it, h, w) for it in its], device=u.device)[:, None]
        top = (u[:, :, 0] * (h - side)).long()  # [K, B]
        left = (u[:, :, 1] * (w - side)).long()
        sign = torch.where(u[:, :, 2 : 2 + c] < 0.5, -1.0, 1.0).to(like.dtype)  # [K, B, c]
        in_rows = _span(top, side, h).to(like.dtype)[:, :, None, :, None]  # [K, B, 1, h, 1]
        in_cols = _span(left, side, w).to(like.dtype)[:, :, None, None, :]  # [K, B, 1, 1, w]
        return in_rows * (2 * self.eps * sign)[..., None, None], in_cols

    @staticmethod
    def _corners(u: Tensor, n: int, s: int, h: int, w: int) -> list[Tensor]:
        """``n`` window corners ``[top, left, top, left, ...]`` (``[B]`` each) from one
        iteration's uniforms ``u`` ``[B, 2n + c + 1]``."""
        top = (u[:, 0 : 2 * n : 2] * (h - s)).long()
        left = (u[:, 1 : 2 * n : 2] * (w - s)).long()
        return [t for pair in zip(top.unbind(1), left.unbind(1), strict=True) for t in pair]

    def _linf_candidate(
        self, x: Tensor, x_best: Tensor, draws: tuple[Tensor, ...], it: int, box: tuple[Tensor, ...]
    ) -> Tensor:
        """Move one random ``s x s`` window by ``+-2 eps`` per channel (``draws``: this
        iteration's window rows and columns from :meth:`_draws`), then project onto ``box``
        (:meth:`_box` of ``x``)."""
        rows, cols = draws
        lo, hi = box
        return torch.addcmul(x_best, rows, cols).clamp_(lo, hi)

    def _l2_candidate(
        self, x: Tensor, x_best: Tensor, draws: tuple[Tensor, ...], it: int, box: tuple[Tensor, ...]
    ) -> Tensor:
        """AutoAttack's two-window L2 update: empty window 2, refill window 1 with a signed
        ``eta`` plus its old content, carrying both windows' mass and the unused budget
        (``draws``: this iteration's uniforms from :meth:`_draws`)."""
        _, c, h, w = x.shape
        s = self._side(it, h, w)
        (u,) = draws
        top, left, top2, left2 = self._corners(u, 2, s, h, w)
        sign = torch.where(u[:, 4 : 4 + c] < 0.5, -1.0, 1.0)[:, :, None, None]
        transpose = u[:, -1] > 0.5
        mask1, rows, cols = _windows(top, left, s, h, w)
        mask2, _, _ = _windows(top2, left2, s, h, w)
        pattern = _eta_on(s, x.device, x.dtype)
        patterns = torch.where(transpose[:, None, None], pattern.T, pattern)
        placed = _place(patterns, rows, cols, mask1)  # [B, 1, h, w]

        delta = x_best - x
        norm_window1 = (delta * mask1).square().sum((2, 3), keepdim=True).sqrt()  # [B, c, 1, 1]
        norm_image = delta.square().sum((1, 2, 3), keepdim=True).sqrt()  # [B, 1, 1, 1]
        norm_windows = (delta * (mask1 | mask2)).square().sum((2, 3), keepdim=True).sqrt()
        new = placed * sign.to(x.dtype) + delta * mask1 / (1e-12 + norm_window1)
        budget = (
            (self.eps**2 - norm_image.square()).clamp_min(0) / c + norm_windows.square()
        ).sqrt()
        new = _l2_normalise(new, (2, 3)) * budget
        delta = torch.where(mask1, new, torch.where(mask2, torch.zeros_like(delta), delta))
        return (x + self.eps * _l2_normalise(delta, (1, 2, 3))).clamp(0, 1)

"""The ``collision`` metric: layer-by-layer collision distances and optimal-loss lower bounds
(paper 003).

For two classes, ``per_class`` samples each from the training split (the paper: digits 3 and
7, 100 each, so 10^4 pairs), every layer (the input, each top-level block, the logits) and
``projections`` Gaussian matrices ``A`` (``m x n_j``): the collision distance of every
cross-class pair (Algorithm 1), then for each eps the optimal cross-entropy and 0-1 loss of
the conflict graph ``d <= eps`` (Algorithm 2), averaged over the projections. With
``no_projection`` the distance is Bhagoji et al.'s (``A = I``): wide layers give no
non-trivial collisions (Figure 7). At the logits the curve is compared with the error the
model actually has under FAB (L2) at each eps (Figure 5). Everything is L2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from featrob import (
    ConfigError,
    Metric,
    MetricResult,
    Passes,
    PlanInfo,
    bool_param,
    float_param,
    int_param,
)
from featrob_collision.curves import curve_figures, default_eps_grid, layer_curves, layer_summary
from featrob_collision.distances import extractor, layer_distances
from featrob_collision.findings import collision_findings
from featrob_collision.search import SearchConfig, collision_search

if TYPE_CHECKING:
    from featrob import RunContext

#: Searches (pairs x projections) per batch without a memory budget.
BATCH_SEARCHES = 512


class LayerCollisions(Metric):
    """Collision distances and optimal-loss curves, layer by layer.

    Options (``defaults``):
        classes (None): the two classes (indices or names); default the first two.
        split ("train"): where the samples come from (the paper uses training samples).
        per_class (10): samples per class (``per_class^2`` pairs; the paper uses 100).
        layers ("all"): ``"all"`` (input, the model's layers, logits) or a list of names.
        m (10): projection dimension; projections (2): matrices per layer (N; the paper
            uses 10). The small defaults keep a default ``featrob run`` (every installed
            metric) at minutes on a CPU; ``examples/collision_mnist.toml`` has the paper's.
        no_projection (False): ``A = I`` (Bhagoji et al. 2023) instead of projections.
        eps (None): the eps grid; default ``eps_points`` values up to the largest half
            input distance of the pairs.
        eps_points (20): size of the default grid.
        solver ("auto"): cross-entropy solver (``flow``, ``clarabel``, ``scs``).
        alpha (0.5), gamma (0.9), max_iter (50), tol (1e-4): Algorithm 1's settings.
        box (False): keep colliding inputs in [0, 1].
        batch_searches (None): searches (pairs x projections) per batch; None is what fits
            the run's ``--max-memory`` at each layer (two points per search, each holding
            its forward pass, ``m`` backward passes and an ``m x n0`` Jacobian), or 512
            without a budget.
        fab (True): FAB's error curve at the logits beside the collision curve.
    """

    name: ClassVar[str] = "collision"
    description: ClassVar[str] = (
        "layer-by-layer collision distances and optimal-loss lower bounds (paper 003)"
    )
    defaults: ClassVar[dict[str, Any]] = {
        "classes": None,
        "split": "train",
        "per_class": 10,
        "layers": "all",
        "m": 10,
        "projections": 2,
        "no_projection": False,
        "eps": None,
        "eps_points": 20,
        "solver": "auto",
        "alpha": 0.5,
        "gamma": 0.9,
        "max_iter": 50,
        "tol": 1e-4,
        "box": False,
        "batch_searches": None,
        "fab": True,
    }
    budgets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"per_class": 6, "eps_points": 12},
        "paper": {"per_class": 100, "projections": 10},  # Section 4: 100 per class, N = 10
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o, n = self.options, self.name
        for key, low in (("per_class", 1), ("m", 1), ("projections", 1), ("eps_points", 1)):
            o[key] = int_param(n, key, o[key], low)
        o["max_iter"] = int_param(n, "max_iter", o["max_iter"], 1)
        if o["batch_searches"] is not None:
            o["batch_searches"] = int_param(n, "batch_searches", o["batch_searches"], 1)
        for key in ("no_projection", "box", "fab"):
            o[key] = bool_param(n, key, o[key])
        for key in ("alpha", "gamma", "tol"):
            o[key] = float_param(n, key, o[key], positive=True)
        if not (o["alpha"] < 1 and o["gamma"] < 1):
            raise ConfigError(f"{n}: alpha and gamma must lie in (0, 1)")
        if o["solver"] not in ("auto", "flow", "clarabel", "scs"):
            raise ConfigError(f"{n}: solver must be auto, flow, clarabel or scs")
        if o["eps"] is not None:
            grid = [float_param(n, "eps", e) for e in o["eps"]]
            if not grid or any(e < 0 or e != e for e in grid):
                raise ConfigError(f"{n}: eps must be a non-empty list of values >= 0")
            o["eps"] = sorted(grid)

    # ------------------------------------------------------------------ setup
    def search_config(self) -> SearchConfig:
        """Algorithm 1's settings from the options."""
        o = self.options
        return SearchConfig(
            alpha=o["alpha"],
            gamma=o["gamma"],
            max_iter=o["max_iter"],
            tol=o["tol"],
            box=(0.0, 1.0) if o["box"] else None,
        )

    def pick_classes(self, ctx: RunContext) -> tuple[int, int]:
        """The two classes, by index or name."""
        chosen = self.options["classes"]
        if chosen is None:
            return 0, 1
        if not isinstance(chosen, list | tuple) or len(chosen) != 2:
            raise ConfigError(f"{self.name}: classes must be two classes, e.g. [3, 7]")
        names = ctx.class_names
        out = []
        for c in chosen:
            if isinstance(c, int) and 0 <= c < ctx.num_classes:
                out.append(c)
            elif str(c) in names:
                out.append(names.index(str(c)))
            else:
                raise ConfigError(f"{self.name}: unknown class {c!r}; classes are {names}")
        if out[0] == out[1]:
            raise ConfigError(f"{self.name}: the two classes must differ")
        return out[0], out[1]

    @staticmethod
    def searches_per_batch(ctx: RunContext, layer: str, m: int | None) -> int:
        """Searches per batch at ``layer`` under the run's ``--max-memory``
        (:data:`BATCH_SEARCHES` without): two iterations of the real search measured at two
        batch sizes."""
        if ctx.memory_budget is None:
            return BATCH_SEARCHES
        f = extractor(ctx.model, layer)
        probe = ctx.split.float_images(torch.arange(2)).to(ctx.device)
        with torch.no_grad():
            dim = int(f(probe[:1]).shape[1])
        mats = None if m is None else torch.randn(1, m, dim, device=ctx.device)
        short = SearchConfig(max_iter=2, polish=0)

        def searches(n: int) -> None:
            x = probe[:1].repeat(n, *([1] * (probe.dim() - 1)))
            xp = probe[1:2].repeat(n, *([1] * (probe.dim() - 1)))
            which = None if mats is None else torch.zeros(n, dtype=torch.long, device=ctx.device)
            collision_search(f, x, xp, mats, which, short)

        # fallback without a measurable peak: two points per search, each a forward pass
        # kept for ``m`` backward passes, its m x n0 Jacobian and ~8 iterate tensors
        n0 = int(probe[0].numel())
        rows = dim if m is None else m
        return ctx.chunk_size(
            f,
            BATCH_SEARCHES,
            work=searches,
            per_item_factor=1 + rows,
            extra_per_item=2 * (rows + 8) * n0 * 4,
        )

    def pick_layers(self, ctx: RunContext) -> list[str]:
        """``input``, then the requested layers (resolved; unknown names fail with matches)."""
        wanted = self.options["layers"]
        if wanted == "all":
            return ["input", *ctx.model.layers]
        if isinstance(wanted, str):
            wanted = [wanted]
        return [name if name == "input" else ctx.model.resolve_layer(name) for name in wanted]

    # ------------------------------------------------------------------ compute
    def passes(self, plan: PlanInfo) -> Passes | None:
        """Per layer, pair and projection: Algorithm 1's iterations (and its polish), each
        a forward and ``m`` backward passes at both points; FAB at the logits."""
        o = self.options
        if o["no_projection"]:
            return None  # m is each layer's width
        layers = plan.layers if o["layers"] == "all" else list(o["layers"])
        searched = [name for name in layers if name != "input"]
        pairs = o["per_class"] ** 2
        step = Passes(forward=2, backward=2 * o["m"])
        total = len(searched) * pairs * o["projections"] * (o["max_iter"] + 5) * step
        total = total + Passes(forward=2 * o["per_class"] * len(layers))
        if o["fab"]:
            fab = plan.make_attack("fab", norm="l2")
            total = total + 2 * o["per_class"] * fab.passes(plan.n_classes)
        return total

    def compute(self, ctx: RunContext) -> MetricResult:
        """Distances at every layer, optimal-loss curves, FAB at the logits."""
        o = self.options
        ca, cb = self.pick_classes(ctx)
        split = ctx.data.split(o["split"])
        subset = split.balanced_subset(o["per_class"], ctx.config.seed)
        pos_a = torch.nonzero(subset.labels == ca).flatten()
        pos_b = torch.nonzero(subset.labels == cb).flatten()
        if len(pos_a) == 0 or len(pos_b) == 0:
            raise ConfigError(f"{self.name}: the {o['split']} split lacks class {ca} or {cb}")
        xa, xb = subset.float_images(pos_a), subset.float_images(pos_b)
        ia, ib = subset.indices[pos_a].numpy(), subset.indices[pos_b].numpy()
        stride = int(split.indices.max()) + 1
        pair_keys = (ia[:, None].astype(np.int64) * stride + ib[None, :]).reshape(-1)
        half = (xa[:, None] - xb[None]).flatten(2).double().norm(dim=2).numpy().ravel() / 2
        eps_grid = o["eps"] or default_eps_grid(half, o["eps_points"])
        m = None if o["no_projection"] else o["m"]
        cfg = self.search_config()
        params = {"split": o["split"], "seed": ctx.config.seed}

        rows, summary, warnings, arrays = [], {}, [], {}
        layers = self.pick_layers(ctx)
        for layer in layers:
            dist = layer_distances(
                ctx,
                layer,
                xa,
                xb,
                pair_keys,
                m=m,
                count=o["projections"],
                config=cfg,
                batch_searches=o["batch_searches"] or self.searches_per_batch(ctx, layer, m),
                params=params,
            )
            curve = layer_curves(dist, len(xa), len(xb), eps_grid, o["solver"])
            for key in ("distance", "objective", "residual"):
                arrays[f"{layer}.{key}"] = dist.values[key]  # [pairs, projections]
            rows += curve
            for key, value in layer_summary(dist, curve).items():
                summary[f"{layer}.{key}"] = value
            if m is not None and dist.dim <= m:
                warnings.append(
                    f"layer {layer} has {dist.dim} <= m = {m} features: the projection is "
                    "injective there (the distance is Bhagoji et al.'s)"
                )
        searched = sum(summary[f"{name}.searched_pairs"] for name in layers)
        seconds = sum(summary[f"{name}.seconds"] for name in layers)
        n_proj = 1 if m is None else o["projections"]
        summary.update(
            {
                "classes": f"{ctx.class_names[ca]} vs {ctx.class_names[cb]}",
                "pairs": len(pair_keys),
                "projections": n_proj,
                "m": m,
                "layers": ", ".join(layers),
                "eps_max": eps_grid[-1],
                "eps_points": len(eps_grid),
                "search_seconds": round(seconds, 3),
                "searches_per_second": round(searched * n_proj / seconds, 2) if seconds else None,
                "saturation": float(np.log(2.0)),
            }
        )
        keys = np.concatenate([ia, ib])
        fab = self.fab_curve(ctx, xa, xb, ca, cb, eps_grid, keys) if o["fab"] else None
        if fab is not None:
            summary["fab.clean_error"] = fab["error"][0] if fab["eps"][0] == 0 else None
            summary["fab.median_norm"] = fab["median_norm"]
        return MetricResult(
            summary=summary,
            tables={"curves": rows},
            arrays={"pair_keys": pair_keys, "half_input_distance": half, **arrays},
            figures=curve_figures(rows, fab),
            warnings=warnings,
            findings=collision_findings(summary),
        )

    def fab_curve(
        self,
        ctx: RunContext,
        xa: torch.Tensor,
        xb: torch.Tensor,
        ca: int,
        cb: int,
        eps: list,
        keys: np.ndarray,
    ) -> dict[str, Any]:
        """The model's error under untargeted FAB (L2) at each eps, on the pairs' samples
        (``keys``: their sample indices): each sample's smallest perturbation is stored, so
        a warm run reads it back. FAB starts at the sample (one restart), so a row does not
        depend on the batch that computed it."""
        x = torch.cat([xa, xb])
        y = torch.cat([torch.full((len(xa),), ca), torch.full((len(xb),), cb)])
        attack = ctx.make_attack("fab", eps=float(np.sqrt(x[0].numel())), norm="l2")

        def compute(positions: np.ndarray) -> dict[str, np.ndarray]:
            rows = torch.as_tensor(positions)
            xs, ys = x[rows].to(ctx.device), y[rows].to(ctx.device)
            found = attack.minimize(ctx.model, xs, ys)
            with torch.no_grad():
                wrong = ctx.model(xs).argmax(1) != ys
            norm = torch.where(found.success, found.norm, torch.full_like(found.norm, np.inf))
            norm = torch.where(wrong, torch.zeros_like(norm), norm)
            return {"norm": norm.double().cpu().numpy()}

        rows = ctx.cached_rows(
            "collision-fab",
            {"split": self.options["split"], "attack": attack.spec(), "version": 1},
            keys.astype(np.int64),
            compute,
            batch_size=ctx.config.batch_size,
            label="collision FAB",
            precision=False,  # FAB runs in float32 whatever --amp says, as before
        )
        norm = np.asarray(rows["norm"], dtype=np.float64)
        grid = [0.0, *eps]
        return {
            "eps": grid,
            "error": [float(np.mean(norm <= e)) for e in grid],
            "median_norm": float(np.median(norm)),
        }

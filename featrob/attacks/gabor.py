"""Gabor noise: one structured, input-agnostic perturbation for a whole data set.

Park & Lee ("The Role of Feature Vector Scale in the Adversarial Vulnerability of CNNs",
section 4.6) apply the SAME Gabor noise to every image to compare vulnerability across
feature-scale sections. The noise follows Co et al. ("Procedural Noise Adversarial Examples
for Black-Box Attacks on Deep Convolutional Networks", CCS 2019) and Muñoz-González & Lupu
("Sensitivity of Deep Convolutional Networks to Gabor Noise", 2019): sparse-convolution
noise (random impulses convolved with a Gabor kernel), normalised and binarised to
``+-eps`` for an Linf budget.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from featrob.attacks.base import Attack, Forward, LossFn, SuccessFn
from featrob.errors import ConfigError
from featrob.options import float_param, int_param
from featrob.plan import Passes


def gabor_kernel(
    size: int,
    sigma: float,
    theta: float,
    wavelength: float,
    aspect: float = 1.0,
    phase: float = 0.0,
) -> Tensor:
    """A Gabor kernel laid out exactly like OpenCV's ``getGaborKernel`` (float64).

    ``g(x, y) = exp(-(x'^2 + aspect^2 y'^2) / (2 sigma^2)) cos(2 pi x' / wavelength + phase)``
    with ``x' = x cos(theta) + y sin(theta)``, ``y' = -x sin(theta) + y cos(theta)``, and,
    as in OpenCV, entry ``[i, j]`` holds ``g(half - j, half - i)`` with ``half = size // 2``.
    The kernel is ``2 * (size // 2) + 1`` wide (an even ``size`` grows by one, like OpenCV).
    """
    half = int(size) // 2
    coords = half - torch.arange(2 * half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    xr = x * c + y * s
    yr = -x * s + y * c
    envelope = torch.exp(-(xr**2 + aspect**2 * yr**2) / (2 * sigma**2))
    return envelope * torch.cos(2 * math.pi * xr / wavelength + phase)


class GaborNoise(Attack):
    """Binarised sparse-convolution Gabor noise, the same pattern for every sample.

    The H x W image is tiled by ``grid`` x ``grid`` cells (the last row/column of cells is
    cut at the border); each cell gets ``num_kernels`` impulses at uniform random positions
    inside it with uniform weights in [-1, 1] (impulses landing on the same pixel add). The
    impulse image is convolved (zero padding, same-size output) with the sum of ``sides``
    Gabor kernels at orientations ``orientation + k pi / sides``, divided by its largest
    absolute value, and binarised: ``delta = eps * sign(noise)`` with zeros mapped to
    ``+eps``, so every pixel moves by exactly eps. The 2-D pattern is added to every channel
    of every sample and the result clipped to [0, 1]. Randomness comes from
    ``numpy.random.default_rng(seed)``: the pattern depends only on the attack seed and the
    image size. ``forward``, ``y``, ``loss``, ``success`` and ``sample_seeds`` are ignored.

    Parameters (``defaults``, tuned for 28-32 px images; scale them with the image):
        kernel_size (23): Gabor kernel width in pixels (OpenCV convention, odd).
        sigma (4.0): Gaussian envelope width in pixels.
        orientation (pi/4): kernel orientation theta in radians.
        wavelength (8.0): period of the cosine carrier in pixels.
        aspect (1.0): y/x ratio of the envelope (OpenCV's gamma).
        sides (1): number of orientations summed (``sides > 1`` gives crossing stripes).
        grid (8): cell size in pixels.
        num_kernels (1): impulses per cell.
    """

    name: ClassVar[str] = "gabor"
    description: ClassVar[str] = "Gabor noise (Co et al.), one universal +-eps pattern (Linf)"
    norms: ClassVar[tuple[str, ...]] = ("linf",)
    uses_gradients: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {
        "kernel_size": 23,
        "sigma": 4.0,
        "orientation": math.pi / 4,
        "wavelength": 8.0,
        "aspect": 1.0,
        "sides": 1,
        "grid": 8,
        "num_kernels": 1,
    }

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        super().__init__(eps, norm, seed, **params)
        p = self.params
        for key in ("kernel_size", "sides", "grid", "num_kernels"):
            p[key] = int_param(self.name, key, p[key], 1)
        for key in ("sigma", "wavelength", "aspect"):
            p[key] = float_param(self.name, key, p[key], positive=True)
        theta = p["orientation"]
        if (
            isinstance(theta, bool)
            or not isinstance(theta, (int, float))
            or not math.isfinite(theta)
        ):
            raise ConfigError(
                f"{self.name}: orientation must be a finite number (radians), got {theta!r}"
            )
        p["orientation"] = float(theta)
        self._noise: dict[tuple[int, int], Tensor] = {}
        self._patterns: dict[tuple[int, int, str, torch.dtype], Tensor] = {}

    def passes(self, n_classes: int) -> Passes:
        """None: the noise does not look at the model."""
        return Passes()

    def kernel(self) -> Tensor:
        """The Gabor kernel (sum over ``sides`` orientations), float64 on the CPU."""
        p = self.params
        return sum(
            gabor_kernel(
                p["kernel_size"],
                p["sigma"],
                p["orientation"] + k * math.pi / p["sides"],
                p["wavelength"],
                p["aspect"],
            )
            for k in range(p["sides"])
        )

    def noise(self, height: int, width: int) -> Tensor:
        """The continuous noise before binarisation: ``[height, width]`` float64 in [-1, 1]."""
        key = (int(height), int(width))
        if key not in self._noise:
            self._noise[key] = self._make_noise(*key)
        return self._noise[key]

    def _make_noise(self, height: int, width: int) -> Tensor:
        if height < 1 or width < 1:
            raise ConfigError(f"{self.name}: image size must be positive, got {height}x{width}")
        grid, k = self.params["grid"], self.params["num_kernels"]
        rng = np.random.default_rng(self.seed)
        rows, cols = math.ceil(height / grid), math.ceil(width / grid)
        top = np.arange(rows)[:, None, None] * grid
        left = np.arange(cols)[None, :, None] * grid
        ext_y = np.minimum(grid, height - top)  # cells at the border are cut
        ext_x = np.minimum(grid, width - left)
        u = rng.random((2, rows, cols, k))
        py = top + np.floor(u[0] * ext_y).astype(np.int64)
        px = left + np.floor(u[1] * ext_x).astype(np.int64)
        weights = rng.uniform(-1.0, 1.0, (rows, cols, k))
        impulses = np.zeros((height, width))
        np.add.at(impulses, (py.ravel(), px.ravel()), weights.ravel())

        kern = self.kernel()
        half = kern.shape[-1] // 2
        # conv2d is a correlation: flip the kernel for a true convolution.
        noise = F.conv2d(
            torch.from_numpy(impulses)[None, None],
            kern.flip(0, 1)[None, None],
            padding=half,
        )[0, 0]
        peak = noise.abs().max()
        return noise / peak if peak > 0 else noise

    def pattern(
        self,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """The perturbation ``delta``: ``[height, width]`` with values +-eps (CPU by default).

        Cached per (height, width, device, dtype); the same for every call with the same seed.
        """
        dev = torch.device(device) if device is not None else torch.device("cpu")
        key = (int(height), int(width), str(dev), dtype)
        if key not in self._patterns:
            noise = self.noise(height, width)
            sign = torch.where(noise >= 0, 1.0, -1.0).to(noise.dtype)  # float64, exact eps
            self._patterns[key] = (self.eps * sign).to(device=dev, dtype=dtype)
        return self._patterns[key]

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
        """``clamp(x + pattern, 0, 1)`` with the pattern broadcast over batch and channels."""
        if x.dim() < 3:
            raise ConfigError(
                f"{self.name}: expected images [B, (C,) H, W], got shape {tuple(x.shape)}"
            )
        delta = self.pattern(x.shape[-2], x.shape[-1], x.device, x.dtype)
        return (x.detach() + delta).clamp(0, 1)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_noise"], state["_patterns"] = {}, {}  # caches are rebuilt on demand
        return state

"""Seeds and noise: reproducible, batch-independent initial and per-step noise.

Image ``i`` of a batch owns a ``torch.Generator`` seeded with its own seed. The initial noise is the first draw of
that generator and every later draw (the per-step noise of ancestral samplers and the like) continues the same
generator, so an image comes out the same whether it is generated alone or inside any batch. Noise is drawn on the
CPU by default and then moved, which reproduces across GPUs and vendors (A1111's "CPU" RNG source draws the same
initial noise for the same seed and latent shape). The SDE samplers get their per-step noise from one Brownian
tree per image seed instead (:class:`BrownianNoise`), as in A1111.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torchsde

MAX_SEED = 4294967294  # A1111 draws random seeds from [0, 2**32 - 2)
NoiseSource = Literal["cpu", "device"]
_TREE_TOLERANCE = 1e-6  # torchsde's default for BrownianTree, which A1111's trees use


def resolve_seed(seed: int, rng: random.Random | None = None) -> int:
    """``seed`` itself, or a fresh random seed when it is -1 (or any negative number)."""
    if seed is None or seed < 0:
        return (rng or random.Random()).randrange(MAX_SEED)
    return int(seed)


def batch_seeds(seed: int, subseed: int, subseed_strength: float, count: int) -> tuple[list[int], list[int]]:
    """Seeds and subseeds of ``count`` images, as A1111 assigns them.

    Without variation (strength 0) image i gets ``seed + i``; with a variation strength every image keeps ``seed``
    and the subseed counts up instead (``subseed + i``), so a batch explores variations of one image.
    """
    if subseed_strength == 0:
        return [seed + i for i in range(count)], [subseed + i for i in range(count)]
    return [seed] * count, [subseed + i for i in range(count)]


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``low`` (t = 0) to ``high`` (t = 1), as A1111 does for variation seeds.

    Like A1111 the vectors are taken along dim 1 (the latent's height axis of a ``[C, H, W]`` tensor): each
    (channel, column) pair is interpolated on its own. Nearly parallel vectors fall back to linear interpolation.
    """
    dim = 1 if low.ndim > 1 else 0
    low_n = low / low.norm(dim=dim, keepdim=True)
    high_n = high / high.norm(dim=dim, keepdim=True)
    dot = (low_n * high_n).sum(dim)
    if dot.mean() > 0.9995:
        return low * (1 - t) + high * t
    omega = torch.acos(dot.clamp(-1, 1))
    so = torch.sin(omega)
    w_low = (torch.sin((1.0 - t) * omega) / so).unsqueeze(dim)
    w_high = (torch.sin(t * omega) / so).unsqueeze(dim)
    return w_low * low + w_high * high


def paste_centered(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Copy of ``target`` with ``source`` pasted at its centre, cropped where ``source`` is larger (last 2 dims)."""
    out = target.clone()
    th, tw = target.shape[-2:]
    sh, sw = source.shape[-2:]
    h, w = min(th, sh), min(tw, sw)
    ty, tx = max((th - sh) // 2, 0), max((tw - sw) // 2, 0)
    sy, sx = max((sh - th) // 2, 0), max((sw - tw) // 2, 0)
    out[..., ty:ty + h, tx:tx + w] = source[..., sy:sy + h, sx:sx + w]
    return out


@dataclass(frozen=True)
class NoiseSettings:
    """How noise is made for one batch (A1111 request fields, already resolved to per-image lists).

    ``shape``: one image's latent shape, e.g. ``(4, 64, 64)``. ``seed_resize_from``: (width, height) in pixels of
    the image size whose noise should be reproduced (0 or None: off); ``latent_factor`` converts it to latent size.
    ``source``: "cpu" draws on the CPU and moves the result to ``device``; "device" draws on ``device`` directly.
    ``eta_noise_seed_delta``: A1111's ENSD; when non-zero the per-step noise comes from ``seed + delta``.
    """

    shape: tuple[int, ...]
    seeds: Sequence[int]
    subseeds: Sequence[int] | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    latent_factor: int = 8
    source: NoiseSource = "cpu"
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32
    eta_noise_seed_delta: int = 0


class SeededNoise:
    """Per-image generators: :meth:`initial` gives the starting noise, calling the object gives per-step noise.

    Usable directly as a sampler's ``noise_sampler``: ``noise(sigma, sigma_next)`` returns one fresh standard normal
    tensor of shape ``[batch, *shape]`` (the sigmas are ignored: every call is independent noise). Call
    :meth:`initial` first; per-step draws continue each image's generator after its initial noise.
    :meth:`brownian` gives the SDE samplers' noise for the same images.
    """

    def __init__(self, settings: NoiseSettings) -> None:
        if not settings.seeds:
            raise ValueError("at least one seed is needed")
        self.settings = settings
        self.generators = [self._generator(seed) for seed in settings.seeds]

    def _generator_device(self) -> torch.device:
        return torch.device("cpu") if self.settings.source == "cpu" else torch.device(self.settings.device)

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self._generator_device()).manual_seed(int(seed))

    def _randn(self, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=generator, device=self._generator_device(), dtype=torch.float32)

    def _finish(self, per_image: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(per_image).to(self.settings.device, self.settings.dtype)

    def _old_shape(self) -> tuple[int, ...]:
        s = self.settings
        if not s.seed_resize_from or s.seed_resize_from[0] <= 0 or s.seed_resize_from[1] <= 0:
            return tuple(s.shape)
        width, height = s.seed_resize_from
        return tuple(s.shape[:-2]) + (height // s.latent_factor, width // s.latent_factor)

    def initial(self) -> torch.Tensor:
        """The starting noise (unit variance) for every image: seed, variation and resize-from applied."""
        s = self.settings
        shape, old_shape = tuple(s.shape), self._old_shape()
        resized = old_shape != shape
        images = []
        for i, (seed, generator) in enumerate(zip(s.seeds, self.generators)):
            noise = self._randn(old_shape, self._generator(seed) if resized else generator)
            if s.subseeds is not None and s.subseed_strength != 0:
                subseed = s.subseeds[i] if i < len(s.subseeds) else 0
                noise = slerp(s.subseed_strength, noise, self._randn(old_shape, self._generator(subseed)))
            if resized:
                noise = paste_centered(self._randn(shape, generator), noise)
            images.append(noise)
        if s.eta_noise_seed_delta:
            self.generators = [self._generator(seed + s.eta_noise_seed_delta) for seed in s.seeds]
        return self._finish(images)

    def __call__(self, sigma: float | None = None, sigma_next: float | None = None,
                 rows: Sequence[bool] | None = None) -> torch.Tensor:
        """Fresh per-step noise for every image, each from its own generator.

        ``rows`` (one flag per image) limits the draw to the flagged images; the others' generators do not advance
        and their rows are zero (DPM adaptive, whose images accept steps at different times, uses it)."""
        flags = [True] * len(self.generators) if rows is None else [bool(r) for r in rows]
        shape = tuple(self.settings.shape)
        return self._finish([self._randn(shape, g) if on else torch.zeros(shape, device=self._generator_device())
                             for g, on in zip(self.generators, flags)])

    def brownian(self, sigmas: torch.Tensor) -> BrownianNoise:
        """The Brownian-tree noise of these images for a run over ``sigmas`` (A1111's SDE samplers' noise)."""
        positive = sigmas[sigmas > 0]
        s = self.settings
        return BrownianNoise(s.seeds, s.shape, float(positive.min()), float(sigmas.max()), s.device, s.dtype)


class BrownianNoise:
    """Per-step noise from one Brownian motion W(sigma) per image, as A1111 gives its SDE samplers.

    ``noise(sigma, sigma_next)`` is ``(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)``: standard normal for
    every step, but the steps' noises are increments of one path, so a finer schedule refines the same path
    instead of drawing new noise. Image i's path is a ``torchsde.BrownianTree`` over [sigma_min, sigma_max]
    seeded with ``entropy=seeds[i]`` and torchsde's defaults (tolerance 1e-6, no Lévy area), float32 on the
    latents' device: the trees k-diffusion's ``BrownianTreeNoiseSampler`` builds for A1111 from the batch's seeds,
    so the same seed gives A1111's noise (on CUDA, the tree draws on the GPU as A1111's does). Trees are built at
    the first call, so a one-step run (sigma_min == sigma_max) that never asks for noise needs none.
    """

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], sigma_min: float, sigma_max: float,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if not seeds:
            raise ValueError("at least one seed is needed")
        self.seeds = [int(seed) for seed in seeds]
        self.shape = tuple(shape)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.device, self.dtype = torch.device(device), dtype
        self._trees: list[torchsde.BrownianTree] | None = None

    def _paths(self) -> list[torchsde.BrownianTree]:
        if self._trees is None:
            start = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
            self._trees = [torchsde.BrownianTree(self.sigma_min, start, self.sigma_max, entropy=seed,
                                                 tol=_TREE_TOLERANCE) for seed in self.seeds]
        return self._trees

    def __call__(self, sigma: float, sigma_next: float, rows: Sequence[bool] | None = None) -> torch.Tensor:
        """The normalised increment of every image's path from ``sigma`` to ``sigma_next`` (``rows``: as
        :meth:`SeededNoise.__call__`; the tree has no stream to advance, so it only zeroes the other rows)."""
        lo, hi = sorted((float(sigma), float(sigma_next)))
        scale = (1.0 if sigma_next > sigma else -1.0) / math.sqrt(hi - lo)
        # torchsde rounds the tree's ends to its tolerance and clamps (with a warning) queries outside them; clamping
        # here first gives the same increments without the warning
        digits = -round(math.log10(_TREE_TOLERANCE))
        lo, hi = max(lo, round(self.sigma_min, digits)), min(hi, round(self.sigma_max, digits))
        flags = [True] * len(self.seeds) if rows is None else [bool(r) for r in rows]
        increments = [tree(lo, hi) * scale if on else torch.zeros(self.shape, device=self.device)
                      for tree, on in zip(self._paths(), flags)]
        return torch.stack(increments).to(self.dtype)

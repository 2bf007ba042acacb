"""Aspect-ratio buckets: training sizes of about the same area as the square training resolution, so images of any
shape train without cropping most of them away (the scheme kohya's trainers call bucketing).

A bucket is a (width, height) pair, both multiples of the UNet's size step, each side between half and twice the
resolution, with an area no larger than resolution². An image goes to the bucket whose aspect ratio is nearest to
its own (compared as log ratios, so 2:1 and 1:2 are equally far from square).
"""
from __future__ import annotations

import math


def size_step(model) -> int:
    """The pixel multiple a training size must keep: 8 (the VAE) × 2 per UNet down-sampling."""
    return 8 * 2 ** (len(model.unet.config.block_out_channels) - 1)


def bucket_sizes(resolution: int, step: int) -> list[tuple[int, int]]:
    """Every bucket for a square training ``resolution``, sizes multiples of ``step``, sorted by width."""
    area = resolution * resolution
    low, high = max(step, resolution // 2), resolution * 2
    sizes = set()
    for width in range(low - low % step or step, high + 1, step):
        height = area // width // step * step
        if low <= height <= high and width >= low:
            sizes.add((width, height))
    sizes.add((resolution, resolution))
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest to that of ``size`` = (width, height); the larger one on a tie."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))

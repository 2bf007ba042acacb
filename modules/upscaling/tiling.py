"""Running an upscaling model over an image in overlapping tiles, so memory stays bounded by the tile size.

Tiles of ``tile`` input pixels start every ``tile - overlap`` pixels (the last one flush with the edge). Where two
tiles overlap, their outputs are blended with linear weights that fall from the inner edge of one to the other's,
so no seam shows. The output is assembled one band of tile rows at a time straight into 8-bit pixels: besides the
result, only one band of float values is held.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side of ``length`` pixels start."""
    if tile <= 0 or length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    return [*range(0, length - tile, stride), length - tile]


def _ramp(size: int, lead: int, trail: int) -> torch.Tensor:
    """Weights along one side of a tile's output: rising over its first ``lead`` values, falling over its last
    ``trail`` (the parts a neighbour covers too), 1 elsewhere; never 0."""
    weights = torch.ones(size)
    if lead:
        weights[:lead] = torch.arange(1, lead + 1) / (lead + 1)
    if trail:
        weights[size - trail:] = torch.minimum(weights[size - trail:], torch.arange(trail, 0, -1) / (trail + 1))
    return weights


def _overlaps(starts: list[int], extent: int, scale: int, i: int) -> tuple[int, int]:
    """Output pixels tile ``i`` shares with the tile before it and with the tile after it."""
    lead = (starts[i - 1] + extent - starts[i]) * scale if i > 0 else 0
    trail = (starts[i] + extent - starts[i + 1]) * scale if i + 1 < len(starts) else 0
    return lead, trail


def _to_uint8(values: torch.Tensor) -> np.ndarray:
    """(C, H, W) floats in [0, 1] as (H, W, C) bytes; ``values`` is overwritten (no further band of floats)."""
    with torch.inference_mode():  # a model's output is an inference tensor: changed in place only in this mode
        return values.clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def upscale_tiled(run: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scale: int, tile: int,
                  overlap: int, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Upscale ``image`` ((1, C, H, W), values in [0, 1]) by the model ``run`` (which multiplies sizes by
    ``scale``), ``tile`` input pixels at a time (0: the whole image at once) with ``overlap`` pixels shared by
    neighbours. Returns (H·scale, W·scale, C) uint8. ``on_tile(done, total)`` is called after each tile (it may
    raise to stop)."""
    _, channels, height, width = image.shape
    ys = tile_starts(height, tile, overlap)
    xs = tile_starts(width, tile, overlap)
    tile_h, tile_w = min(tile or height, height), min(tile or width, width)
    if len(ys) == len(xs) == 1:  # one tile: nothing to blend, no band of floats besides the model's output
        whole = _to_uint8(run(image)[0].float().cpu())
        if on_tile is not None:
            on_tile(1, 1)
        return whole
    out = np.empty((height * scale, width * scale, channels), dtype=np.uint8)
    total, done = len(ys) * len(xs), 0
    band_top = 0  # first output row not written to ``out`` yet; ``acc`` starts there
    acc = torch.zeros(channels, 0, width * scale)
    weight = torch.zeros(1, 0, width * scale)
    for j, y in enumerate(ys):
        bottom = (y + tile_h) * scale
        grow = bottom - band_top - acc.shape[1]
        acc = torch.cat([acc, torch.zeros(channels, grow, width * scale)], dim=1)
        weight = torch.cat([weight, torch.zeros(1, grow, width * scale)], dim=1)
        wy = _ramp(tile_h * scale, *_overlaps(ys, tile_h, scale, j))
        for i, x in enumerate(xs):
            piece = run(image[:, :, y:y + tile_h, x:x + tile_w])[0].float().cpu()
            wx = _ramp(tile_w * scale, *_overlaps(xs, tile_w, scale, i))
            w = wy[:, None] * wx[None, :]
            rows = slice(y * scale - band_top, bottom - band_top)
            cols = slice(x * scale, (x + tile_w) * scale)
            acc[:, rows, cols] += piece * w
            weight[:, rows, cols] += w
            done += 1
            if on_tile is not None:
                on_tile(done, total)
        final = ys[j + 1] * scale if j + 1 < len(ys) else height * scale  # rows no later tile touches
        keep = final - band_top
        out[band_top:final] = _to_uint8(acc[:, :keep] / weight[:, :keep])
        acc, weight, band_top = acc[:, keep:].clone(), weight[:, keep:].clone(), final  # frees the band
    return out

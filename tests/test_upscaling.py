"""Model upscaling in tiles: a real spandrel model gives the same pixels tiled as untiled away from the seams, and
a 2048² 4× upscale holds one band of float values, not the whole enlarged image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from modules.upscaling.loading import load_upscaler
from modules.upscaling.tiling import tile_starts, upscale_tiled
from modules.upscaling.upscale import Tiling, run_model
from tests.upscaler_fixtures import write_compact

NUM_CONV = 4
REACH = NUM_CONV + 2  # input pixels a compact net's output pixel depends on, each way (one per 3×3 convolution)


class FloatsHeld(TorchDispatchMode):
    """Counts the float values in tensor storages that are alive at once while it is active, but those of
    ``inputs`` (the caller's); ``peak`` is the most."""

    def __init__(self, *inputs: torch.Tensor):
        super().__init__()
        self.ignored = {t.untyped_storage().data_ptr() for t in inputs}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.live = {key: held for key, held in self.live.items() if not held[0].expired()}
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                storage = value.untyped_storage()
                key = storage.data_ptr()
                if key not in self.ignored:
                    self.live.setdefault(key, (StorageWeakRef(storage), storage.nbytes() // value.element_size()))
        self.peak = max(self.peak, sum(count for _, count in self.live.values()))
        return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_compact(tmp_path_factory.mktemp("compact") / "compact-4x.safetensors", num_conv=NUM_CONV)
    return load_upscaler(path)


def _far_from_inner_edges(length: int, tile: int, overlap: int) -> np.ndarray:
    """Input positions along one side that every tile covering them sees with ``REACH`` pixels of context (edges of
    the image itself do not count: the untiled run has no context there either)."""
    keep = np.ones(length, bool)
    for start in tile_starts(length, tile, overlap):
        end = min(start + tile, length)
        if start > 0:
            keep[start:start + REACH] = False
        if end < length:
            keep[end - REACH:end] = False
    return keep


def test_tiled_equals_untiled_away_from_the_seams(model):
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).resize((96, 80), Image.BICUBIC)
    whole = np.asarray(run_model(model, smooth, Tiling(tile=0)), np.int16)
    tiled = np.asarray(run_model(model, smooth, Tiling(tile=32, overlap=16)), np.int16)
    assert whole.shape == tiled.shape == (320, 384, 3)
    rows = np.repeat(_far_from_inner_edges(80, 32, 16), 4)
    cols = np.repeat(_far_from_inner_edges(96, 32, 16), 4)
    assert rows.mean() > 0.2 and cols.mean() > 0.2  # a fair share of the image is compared
    difference = np.abs(whole - tiled)
    assert difference[rows][:, cols].max() <= 1  # equal but for rounding to 8 bits
    assert difference.mean() < 0.5 and difference.max() <= 16  # near seams: blended, never a hard edge
    shifted = np.asarray(run_model(model, smooth.transform(smooth.size, Image.AFFINE, (1, 0, 1, 0, 1, 0)),
                                   Tiling(tile=0)), np.int16)
    assert np.abs(whole - shifted)[rows][:, cols].mean() > 5  # a misplaced tile would show


def test_a_2048_square_4x_upscale_holds_one_band_of_floats():
    side, scale, tile, overlap = 2048, 4, 192, 8
    image = torch.rand(1, 3, side, side)

    def enlarge(piece: torch.Tensor) -> torch.Tensor:  # a stand-in model: 4× nearest neighbour
        return torch.nn.functional.interpolate(piece, scale_factor=scale, mode="nearest")

    done = []
    with FloatsHeld(image) as held:
        out = upscale_tiled(enlarge, image, scale, tile, overlap, lambda k, total: done.append((k, total)))
    assert out.shape == (side * scale, side * scale, 3) and out.dtype == np.uint8
    assert done[-1] == (144, 144)  # 12 × 12 tiles
    expected = (image[0].permute(1, 2, 0) * 255).round().to(torch.int16).numpy()
    assert np.abs(out[::scale, ::scale].astype(np.int16) - expected).max() <= 1  # blended seams: rounding only
    whole = (side * scale) ** 2 * 3  # the enlarged image as floats
    band = tile * scale * side * scale * (3 + 1)  # one row of tiles: values and weights
    assert held.peak <= 2.5 * band and held.peak < whole / 3

"""Upscaling an image by name, as every part of the app does it (Extras, hires fix, SD upscale, the API).

Names are A1111's: "None", "Lanczos", "Nearest", or a model file's name. A model runs at its own scale, again (up
to 3 passes, as A1111) until the image is at least the wanted size; the result is then resized to that exact size
with Lanczos. Models run in tiles of the ``ESRGAN_tile`` setting with ``ESRGAN_tile_overlap`` pixels of overlap.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .catalog import UpscalerCatalog, UpscalerFile
from .loading import load_upscaler, probe
from .tiling import upscale_tiled

BUILTIN = ("None", "Lanczos", "Nearest")
MAX_MODEL_PASSES = 3


class UnknownUpscaler(ValueError):
    """A name that is neither a built-in upscaler nor a usable model file."""


@dataclass(frozen=True)
class Tiling:
    """Tile size and overlap in input pixels (``tile`` 0: the whole image at once)."""

    tile: int = 192
    overlap: int = 8


class Upscalers:
    """The app's upscalers: the catalog of model files and the one model kept loaded (the last used)."""

    def __init__(self, folders: dict[str, Path], device: str = "cpu", allow_pickle: bool = False,
                 half: bool = False):
        self.catalog = UpscalerCatalog(folders, lambda path: probe(path, allow_pickle), allow_pickle)
        self.device = device
        self.allow_pickle = allow_pickle
        self.half = half
        self._loaded: tuple[Path, object] | None = None
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Every choice: the built-ins, then the usable model files."""
        return [*BUILTIN, *(i.name for i in self.catalog.usable())]

    def find(self, name: str) -> UpscalerFile | None:
        """The model file called ``name``; None for a built-in; UnknownUpscaler for anything else."""
        if name in BUILTIN:
            return None
        info = self.catalog.find(name)
        if info is None:
            raise UnknownUpscaler(f"unknown upscaler {name!r}; valid: {', '.join(self.names())}")
        return info

    def scale_of(self, name: str) -> int | None:
        """A model's own scale (None for the built-ins)."""
        info = self.find(name)
        return info.scale if info is not None else None

    def model(self, info: UpscalerFile):
        """The spandrel model of ``info`` on the device (the previous one is released)."""
        with self._lock:
            if self._loaded is None or self._loaded[0] != info.path:
                self._loaded = None
                model = load_upscaler(info.path, self.allow_pickle).to(torch.device(self.device))
                if self.half and model.supports_half:
                    model = model.half()
                self._loaded = (info.path, model)
            return self._loaded[1]

    def upscale(self, image: Image.Image, name: str, size: tuple[int, int], tiling: Tiling = Tiling(),
                on_tile: Callable[[int, int], None] | None = None) -> Image.Image:
        """``image`` made ``size`` (width, height) with upscaler ``name``; the image itself when already that size
        and ``name`` is "None"."""
        info = self.find(name)
        size = (max(1, int(size[0])), max(1, int(size[1])))
        if info is None:
            if name == "None" and image.size == size:
                return image
            resample = Image.Resampling.NEAREST if name == "Nearest" else Image.Resampling.LANCZOS
            return image.resize(size, resample=resample)
        model = self.model(info)
        mode = image.mode
        image = image.convert("RGB")
        for _ in range(MAX_MODEL_PASSES):
            if image.width >= size[0] and image.height >= size[1]:
                break
            image = run_model(model, image, tiling, on_tile)
        if image.size != size:
            image = image.resize(size, resample=Image.Resampling.LANCZOS)
        return image.convert(mode) if mode in ("RGBA", "L") else image


def run_model(model, image: Image.Image, tiling: Tiling = Tiling(),
              on_tile: Callable[[int, int], None] | None = None) -> Image.Image:
    """One pass of a spandrel upscaling model over an RGB image, in tiles."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    batch = pixels.permute(2, 0, 1).unsqueeze(0)

    def run(piece: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(piece.to(model.device, model.dtype))

    out = upscale_tiled(run, batch, int(model.scale), tiling.tile, tiling.overlap, on_tile)
    return Image.fromarray(out, "RGB")

"""SD upscale (A1111's img2img script): enlarge the init image, redraw it tile by tile with img2img, blend the tiles.

The image is enlarged ``scale_factor`` times (each side floored to a multiple of 8, as A1111) by one of the app's
upscalers (``state.upscalers``; "None" keeps the image as it is, as in A1111), cut into tiles of the job's width ×
height that share at least ``overlap`` pixels with their neighbours (as few tiles as that takes, spread evenly: A1111's
layout), and each batch of ``batch_size`` tiles runs as an img2img job of the request (prompt, denoising, sampler,
always-on scripts) through :func:`modules.scripts.run_generation`, its steps counted in the job's progress. Batch
``k`` of image ``n`` (batch count) gets seed ``seed + n + k``, as in A1111. The redrawn tiles are blended with
weights that fall linearly across every shared strip, so no seam shows. The result's infotext is its first tile's
("Size" is the tile size, as in A1111) with "SD upscale overlap" and "SD upscale upscaler".

Arguments in A1111's order: ``info`` (A1111's unused info line), ``overlap``, ``upscaler`` (a name, or an index into
the list as A1111 clients send), ``scale_factor``.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from PIL import Image

from modules.hooks import HookPoint
from modules.processing import script_results
from modules.processing.params import MAX_SIZE
from modules.processing.runner import JobResult
from modules.sampling import resolve_seed
from modules.sampling.schedules import img2img_sigmas
from modules.scripts import Control, Script, run_generation
from modules.upscaling.upscale import Tiling

TITLE = "SD upscale"
INFO = "Enlarges the image by the scale factor; width and height set the size of the tiles that are redrawn"
DEFAULT_UPSCALER = "Lanczos"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the tiles of an upscaled image lie: ``xs`` × ``ys`` tile origins over ``size`` (the image padded up
    to one tile where it is smaller) and the part of it that is the image, ``image_size``."""

    image_size: tuple[int, int]
    tile: tuple[int, int]
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @property
    def size(self) -> tuple[int, int]:
        return max(self.image_size[0], self.tile[0]), max(self.image_size[1], self.tile[1])

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """The tiles' boxes, row by row."""
        w, h = self.tile
        return [(x, y, x + w, y + h) for y in self.ys for x in self.xs]


def tile_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile origins along a side of ``length`` pixels: as few tiles of ``tile`` pixels as cover it with neighbours
    sharing at least ``overlap`` pixels, spread evenly, the first at 0 and the last flush with the end."""
    if length <= tile:
        return (0,)
    count = math.ceil((length - overlap) / (tile - overlap))
    return tuple(i * (length - tile) // (count - 1) for i in range(count))


def upscaled_size(size: tuple[int, int], upscaler: str, scale: float) -> tuple[int, int]:
    """The enlarged image's size as A1111 makes it: sides × ``scale`` floored to multiples of 8; "None" keeps it."""
    if upscaler == "None":
        return size
    return int(size[0] * scale // 8 * 8), int(size[1] * scale // 8 * 8)


def _ramp(size: int, lead: int, trail: int) -> np.ndarray:
    """A tile's weights along one side: rising across the ``lead`` pixels shared with the tile before, falling
    across the ``trail`` pixels shared with the tile after, 1 between; never 0."""
    weights = np.ones(size, np.float32)
    if lead:
        weights[:lead] = np.arange(1, lead + 1) / (lead + 1)
    if trail:
        weights[size - trail:] = np.minimum(weights[size - trail:], np.arange(trail, 0, -1) / (trail + 1))
    return weights


def _side_weights(starts: tuple[int, ...], tile: int) -> list[np.ndarray]:
    out = []
    for i, start in enumerate(starts):
        lead = starts[i - 1] + tile - start if i > 0 else 0
        trail = start + tile - starts[i + 1] if i + 1 < len(starts) else 0
        out.append(_ramp(tile, max(0, lead), max(0, trail)))
    return out


def blend(tiles: list[Image.Image], layout: Layout) -> Image.Image:
    """The tiles (row by row, each the tile size) put together over ``layout``, shared strips blended linearly."""
    width, height = layout.size
    tile_w, tile_h = layout.tile
    total = np.zeros((height, width, 3), np.float32)
    weight = np.zeros((height, width, 1), np.float32)
    wxs, wys = _side_weights(layout.xs, tile_w), _side_weights(layout.ys, tile_h)
    boxes = [(x, y, wx, wy) for y, wy in zip(layout.ys, wys) for x, wx in zip(layout.xs, wxs)]
    for tile, (x, y, wx, wy) in zip(tiles, boxes):
        w = (wy[:, None] * wx[None, :])[:, :, None]
        total[y:y + tile_h, x:x + tile_w] += np.asarray(tile.convert("RGB"), np.float32) * w
        weight[y:y + tile_h, x:x + tile_w] += w
    pixels = np.clip(np.rint(total / weight), 0, 255).astype(np.uint8)
    image_w, image_h = layout.image_size
    return Image.fromarray(pixels[:image_h, :image_w], "RGB")


def _padded(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` grown to ``size`` by repeating its last row and column (for an image smaller than a tile)."""
    if image.size == size:
        return image
    pixels = np.asarray(image)
    pad = ((0, size[1] - image.height), (0, size[0] - image.width), (0, 0))
    return Image.fromarray(np.pad(pixels, pad, mode="edge"), "RGB")


def _batches(count: int, batch_size: int) -> list[range]:
    return [range(lo, min(lo + batch_size, count)) for lo in range(0, count, batch_size)]


class _Stopped(Exception):
    """The job was interrupted while a model enlarged the image."""


class SdUpscale(Script):
    title = TITLE
    alwayson = False
    kinds = ("img2img",)

    def __init__(self, state):
        self.upscalers = state.upscalers
        self._fields: dict[int, dict] = {}  # id(tile job params) -> the infotext fields its images get

    def controls(self, kind: str) -> list[Control]:
        self.upscalers.catalog.refresh()  # a model file added since the last request is offered at once
        return [
            Control("info", "info", INFO, ""),  # A1111's first argument is this line; not used
            Control("overlap", "slider", "Tile overlap", 64, minimum=0, maximum=256, step=16),
            Control("upscaler", "radio", "Upscaler", DEFAULT_UPSCALER, choices=tuple(self.upscalers.names())),
            Control("scale_factor", "slider", "Scale Factor", 2.0, minimum=1.0, maximum=4.0, step=0.05),
        ]

    def infotext_fields(self, event) -> None:
        """App-wide INFOTEXT hook: the tile jobs of a running upscale get its fields."""
        event.fields.update(self._fields.get(id(event.params), {}))

    def _prepare(self, params, args: dict):
        """The request checked and normalised (a copy), its warnings, and the tile layout (ValueError when unusable)."""
        base = dataclasses.replace(params)
        warnings = base.validate()
        tile, overlap = (base.width, base.height), int(args["overlap"])
        if overlap >= min(tile):
            raise ValueError(f"{TITLE}: a tile overlap of {overlap} px needs tiles (width and height) larger than "
                             f"that; they are {tile[0]}×{tile[1]}")
        size = upscaled_size(base.init_images[0].size, args["upscaler"], float(args["scale_factor"]))
        if max(size) > MAX_SIZE:
            raise ValueError(f"{TITLE}: the upscaled image would be {size[0]}×{size[1]}; at most {MAX_SIZE} px a "
                             "side")
        layout = Layout(size, tile, tile_starts(max(size[0], tile[0]), tile[0], overlap),
                        tile_starts(max(size[1], tile[1]), tile[1], overlap))
        return base, layout, warnings

    def planned_jobs(self, state, params, args: dict, alwayson: dict) -> list[tuple[object, dict]]:
        """One img2img job per batch of tiles, per image of the batch count."""
        base, layout, _ = self._prepare(params, args)
        batches = _batches(len(layout.boxes), base.batch_size)
        return [(dataclasses.replace(base, batch_size=len(batch), n_iter=1), alwayson)
                for _ in range(base.n_iter) for batch in batches]

    def run(self, state, params, args: dict, progress, alwayson: dict | None = None):
        base, layout, warnings = self._prepare(params, args)
        base.seed, base.subseed = resolve_seed(int(base.seed)), resolve_seed(int(base.subseed))
        settings = state.settings.current.with_overrides(base.override_settings)
        batches = _batches(len(layout.boxes), base.batch_size)
        fix_steps = settings.img2img_fix_steps
        steps = base.steps if fix_steps else len(img2img_sigmas(torch.zeros(base.steps + 1),
                                                                 float(base.denoising_strength))) - 1
        jobs = len(batches) * base.n_iter
        progress.begin(steps, jobs)
        result = JobResult(warnings=warnings)
        try:
            image = self._enlarge(base.init_images[0].convert("RGB"), args, layout, settings, progress)
        except _Stopped:
            result.interrupted = True
            progress.finish()
            return result
        tiles = [image.crop(box) for box in layout.boxes]
        fields = {"SD upscale overlap": args["overlap"], "SD upscale upscaler": args["upscaler"]}
        unsaved = script_results.unsaved_images(settings)
        for n in range(base.n_iter):
            seed, redrawn, first = base.seed + n, list(tiles), None
            for k, batch in enumerate(batches):
                if progress.control.interrupted:
                    break
                job = n * len(batches) + k
                progress.start_batch(job)
                tile_params = dataclasses.replace(
                    base, init_images=[tiles[i] for i in batch], batch_size=len(batch), n_iter=1, seed=seed,
                    mask=None, do_not_save_samples=True, do_not_save_grid=True)
                self._fields[id(tile_params)] = fields
                try:
                    child = progress.nested(f"{TITLE}: batch {job + 1}/{jobs}, step {{step}}/{steps}")
                    one = run_generation(state, tile_params, child, alwayson=alwayson)
                finally:
                    del self._fields[id(tile_params)]
                seed = one.seeds[0] + 1
                for i, tile in zip(batch, one.images):
                    redrawn[i] = tile
                first = one if first is None else first
                result.warnings.extend(w for w in one.warnings if w not in result.warnings)
            if first is None:
                break
            combined = blend(redrawn, layout)
            script_results.add_image(state, settings, base, result, first, 0, combined, unsaved)
            progress.images.append(combined)
        result.interrupted = progress.control.interrupted
        result.warnings.extend(unsaved.report())
        if result.images:
            script_results.finish_info(result, seed=result.seeds[0], subseed=result.subseeds[0])
        progress.finish()
        return result

    def _enlarge(self, image: Image.Image, args: dict, layout: Layout, settings, progress) -> Image.Image:
        """The init image at the layout's size (padded to one tile where smaller), by the chosen upscaler."""
        name = args["upscaler"]

        def on_tile(done: int, total: int) -> None:
            if progress.control.interrupted:
                raise _Stopped()
            progress.textinfo = f"{TITLE}: upscaling with {name}, tile {done}/{total}"

        if name != "None":
            tiling = Tiling(settings.ESRGAN_tile, settings.ESRGAN_tile_overlap)
            image = self.upscalers.upscale(image, name, layout.image_size, tiling, on_tile)
        return _padded(image, layout.size)


def register(api) -> None:
    """The script (its upscaler list is the app's) and the hook that writes its infotext fields."""
    script = SdUpscale(api.state)
    api.add_script(script)
    api.add_hook(HookPoint.INFOTEXT, script.infotext_fields)

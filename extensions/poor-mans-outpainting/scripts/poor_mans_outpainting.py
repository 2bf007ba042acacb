"""Poor man's outpainting (A1111's img2img script): extend the init image on the chosen sides and inpaint the new
border tile by tile.

Sizes as in A1111: ``pixels`` on each chosen side, the new width and height rounded up to multiples of 64 and that
growth shared between opposite sides (a side not extended is padded to a multiple of 64 as well, painted, then
cropped off, where A1111 leaves a black strip). The image is put on that canvas under a mask that is white outside it
and reaches 2 × ``mask_blur`` px into it on the extended sides (blurred by 2 × ``mask_blur``, at most 64 px). The
canvas is cut into tiles of the request's width × height (the whole canvas where it is smaller) that share at least
``pixels`` px with their neighbours, spread evenly (A1111's layout); every tile that reaches outside the image is
inpainted as one img2img job of the request (batch size 1, ``inpainting_fill`` as chosen) through
:func:`run_generation` with the request's always-on scripts, tile ``k`` with seed + k, as in A1111. The tiles are
put together with weights falling linearly across their shared strips; the image's own pixels outside the mask stay
as they were. One image results (A1111 makes one whatever the batch settings), saved as a sample, with the first
tile's infotext.

Arguments in A1111's order: ``pixels``, ``mask_blur``, ``inpainting_fill`` (fill, original, latent noise, latent
nothing; or its index, as A1111 clients send), ``direction`` (the sides, a list of "left", "right", "up",
"down").
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

from modules.processing import script_results
from modules.processing.outpaint_sides import SIDES, chosen_sides, side_amounts
from modules.processing.params import steps_per_batch
from modules.processing.runner import JobResult
from modules.sampling import resolve_seed
from modules.scripts import Control, Script, run_generation

TITLE = "Poor man's outpainting"
FILLS = ("fill", "original", "latent noise", "latent nothing")  # A1111's masked content, by index
MAX_MASK_BLUR = 64  # the engine's limit for a job's mask blur


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of ``tile`` px start along ``length`` px: as few as cover it with neighbours sharing at least
    ``overlap`` px, spread evenly from 0 to the end."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [i * (length - tile) // (count - 1) for i in range(count)]


def _weights(starts: list[int], tile: int) -> list[np.ndarray]:
    """Per tile along one axis: 1, falling linearly towards its ends across the strips it shares with its
    neighbours (never 0)."""
    out = []
    for i, start in enumerate(starts):
        w = np.ones(tile, np.float32)
        if i > 0:
            shared = starts[i - 1] + tile - start
            w[:shared] = np.minimum(w[:shared], np.arange(1, shared + 1) / (shared + 1))
        if i + 1 < len(starts):
            shared = start + tile - starts[i + 1]
            w[tile - shared:] = np.minimum(w[tile - shared:], np.arange(shared, 0, -1) / (shared + 1))
        out.append(w)
    return out


@dataclasses.dataclass(frozen=True)
class Layout:
    """The extended image's size, the canvas of multiples of 64 px it is painted on, where the image sits there,
    and the tiles (their boxes, row by row)."""

    size: tuple[int, int]
    canvas: tuple[int, int]
    image_box: tuple[int, int, int, int]
    tile: tuple[int, int]
    xs: list[int]
    ys: list[int]

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        w, h = self.tile
        return [(x, y, x + w, y + h) for y in self.ys for x in self.xs]

    def inside_image(self, box) -> bool:
        x0, y0, x1, y1 = self.image_box
        return box[0] >= x0 and box[1] >= y0 and box[2] <= x1 and box[3] <= y1

    def blend(self, tiles: list[Image.Image]) -> Image.Image:
        """The tiles (one per box) put together, shared strips blended linearly."""
        total = np.zeros((self.canvas[1], self.canvas[0], 3), np.float32)
        weight = np.zeros((self.canvas[1], self.canvas[0], 1), np.float32)
        wxs, wys = _weights(self.xs, self.tile[0]), _weights(self.ys, self.tile[1])
        placed = [(x, y, wx, wy) for y, wy in zip(self.ys, wys) for x, wx in zip(self.xs, wxs)]
        for tile, (x, y, wx, wy) in zip(tiles, placed):
            w = np.outer(wy, wx)[..., None]
            total[y:y + self.tile[1], x:x + self.tile[0]] += np.asarray(tile.convert("RGB"), np.float32) * w
            weight[y:y + self.tile[1], x:x + self.tile[0]] += w
        return Image.fromarray(np.clip(np.rint(total / weight), 0, 255).astype(np.uint8), "RGB")


def layout(size: tuple[int, int], amounts: dict[str, int], job_size: tuple[int, int], overlap: int) -> Layout:
    """The canvas and tiles for an image of ``size`` extended by ``amounts`` (ValueError when tiles of
    ``job_size`` cannot share ``overlap`` px). A side not extended is padded to a multiple of 64 on the canvas too
    (painted, then cropped off)."""
    extended = (size[0] + amounts["left"] + amounts["right"], size[1] + amounts["up"] + amounts["down"])
    canvas = (math.ceil(extended[0] / 64) * 64, math.ceil(extended[1] / 64) * 64)
    tile = (min(job_size[0], canvas[0]), min(job_size[1], canvas[1]))
    for field, length, side in (("width", canvas[0], tile[0]), ("height", canvas[1], tile[1])):
        if side < length and side <= overlap:
            raise ValueError(f"{TITLE}: tiles of {side} px ({field}) cannot overlap by {overlap} px (pixels to "
                             f"expand); set {field} to more than {overlap} or to at least {length}")
    box = (amounts["left"], amounts["up"], amounts["left"] + size[0], amounts["up"] + size[1])
    return Layout(extended, canvas, box, tile, tile_starts(canvas[0], tile[0], overlap),
                  tile_starts(canvas[1], tile[1], overlap))


def repaint_mask(plan: Layout, amounts: dict[str, int], inset: int) -> Image.Image:
    """White (repaint) outside the image, reaching ``inset`` px into it on the extended sides."""
    x0, y0, x1, y1 = plan.image_box
    mask = Image.new("L", plan.canvas, 255)
    ImageDraw.Draw(mask).rectangle((x0 + (inset if amounts["left"] else 0), y0 + (inset if amounts["up"] else 0),
                                    x1 - (inset if amounts["right"] else 0) - 1,
                                    y1 - (inset if amounts["down"] else 0) - 1), fill=0)
    return mask


class PoorMansOutpainting(Script):
    title = TITLE
    alwayson = False
    kinds = ("img2img",)

    def controls(self, kind: str) -> list[Control]:
        return [
            Control("pixels", "slider", "Pixels to expand", 128, minimum=8, maximum=256, step=8),
            Control("mask_blur", "slider", "Mask blur", 4, minimum=0, maximum=64, step=1),
            Control("inpainting_fill", "radio", "Masked content", "fill", choices=FILLS),
            Control("direction", "checkboxes", "Outpainting direction", list(SIDES), choices=SIDES),
        ]

    @staticmethod
    def _plan(params, args: dict):
        """The request checked (a copy), its warnings, the side amounts and the layout (ValueError when unusable)."""
        base = dataclasses.replace(params)
        warnings = base.validate()
        size = base.init_images[0].size
        amounts = side_amounts(size, int(args["pixels"]), chosen_sides(args["direction"]))
        return base, warnings, amounts, layout(size, amounts, (base.width, base.height), int(args["pixels"]))

    @staticmethod
    def _job(base, plan: Layout, image, mask, seed: int, args: dict):
        return dataclasses.replace(
            base, init_images=[image], mask=mask, width=plan.tile[0], height=plan.tile[1], batch_size=1, n_iter=1,
            seed=seed, mask_blur=min(2 * int(args["mask_blur"]), MAX_MASK_BLUR),
            inpainting_fill=FILLS.index(args["inpainting_fill"]), inpaint_full_res=False, resize_mode=0,
            do_not_save_samples=True, do_not_save_grid=True)

    def planned_jobs(self, state, params, args: dict, alwayson: dict) -> list[tuple[object, dict]]:
        """One job per tile that reaches outside the image."""
        base, _, _, plan = self._plan(params, args)
        job = self._job(base, plan, base.init_images[0], None, 0, args)
        return [(job, alwayson) for box in plan.boxes if not plan.inside_image(box)]

    def run(self, state, params, args: dict, progress, alwayson: dict | None = None):
        base, warnings, amounts, plan = self._plan(params, args)
        settings = state.settings.current.with_overrides(base.override_settings)
        base.subseed = resolve_seed(int(base.subseed))
        canvas = Image.new("RGB", plan.canvas)
        canvas.paste(base.init_images[0].convert("RGB"), plan.image_box[:2])
        mask = repaint_mask(plan, amounts, 2 * int(args["mask_blur"]))
        work = [k for k, box in enumerate(plan.boxes) if not plan.inside_image(box)]
        progress.begin(steps_per_batch(base, settings), len(work))
        tiles = [canvas.crop(box) for box in plan.boxes]
        seed, first, result = resolve_seed(int(base.seed)), None, JobResult(warnings=warnings)
        for n, k in enumerate(work):
            if progress.control.interrupted:
                break
            progress.start_batch(n)
            box = plan.boxes[k]
            job = self._job(base, plan, tiles[k], mask.crop(box), seed, args)
            one = run_generation(state, job, progress.nested(f"{TITLE}: tile {n + 1}/{len(work)}, step {{step}}"),
                                 alwayson=alwayson)
            result.warnings += [w for w in one.warnings if w not in result.warnings]
            if not one.images:
                break
            tiles[k], seed, first = one.images[0], one.seeds[0] + 1, first or one
        result.interrupted = progress.control.interrupted
        if first is not None:
            unsaved = script_results.unsaved_images(settings)
            image = plan.blend(tiles).crop((0, 0, *plan.size))
            script_results.add_image(state, settings, base, result, first, 0, image, unsaved)
            result.warnings.extend(unsaved.report())
            script_results.finish_info(result, seed=first.seeds[0])
            progress.images.extend(result.images)
        progress.finish()
        return result

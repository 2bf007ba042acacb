"""Outpainting mk2 (A1111's img2img script): extend the init image on the chosen sides, then inpaint the new border.

Sizes as in A1111: ``pixels`` on each chosen side, the new width and height rounded up to multiples of 64 and that
growth shared between opposite sides. The sides are done one after another (left, right, up, down), each as one
img2img job of the request (batch size images, through :func:`run_generation` with the request's always-on scripts):
the image so far on a canvas of multiples of 64 px, its new border filled, then inpainted with "original" content
under a mask that reaches ``mask_blur`` px into the image, blurred by 4 × ``mask_blur`` (at most 64). A side's job
is the request's width (left/right) or height (up/down) at the growing edge, or the whole image when that is
smaller, and the canvas's full other side; it must reach across the new border (ValueError otherwise).

The new border's fill (this project's own method): the edge colours smeared outwards (the "fill" of masked content),
plus noise with a power-law spectrum, amplitude ∝ 1 / f^``noise_q`` (0: white noise, higher: smoother), whose colour
is ``color_variation`` per channel and the rest grey, scaled to the image's own spread of values per channel. The
noise is drawn from each image's seed, so a seed gives the same result.

Images of the batch count use the request's seed + n × batch size. Results are saved as samples (the side jobs are
not), led by a grid when there are several; each image's infotext is its first side job's, as in A1111.

Arguments in A1111's order: ``info`` (A1111's unused recommendation line), ``pixels``, ``mask_blur``, ``direction``
(the sides, a list of "left", "right", "up", "down"), ``noise_q``,
``color_variation``.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

from modules.processing import image_ops, outputs, script_results
from modules.processing.outpaint_sides import SIDES, chosen_sides, side_amounts
from modules.processing.params import steps_per_batch
from modules.processing.runner import JobResult
from modules.sampling import resolve_seed
from modules.scripts import Control, Script, run_generation

TITLE = "Outpainting mk2"
INFO = "Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: 0.8"
MAX_MASK_BLUR = 64  # the engine's limit for a job's mask blur


def _up64(n: int) -> int:
    return math.ceil(n / 64) * 64


@dataclasses.dataclass(frozen=True)
class SideStep:
    """One side's expansion of an image of ``size``: the canvas it is put on, where it goes there, the size it
    has afterwards, and the job's box on the canvas."""

    side: str
    amount: int
    size: tuple[int, int]
    canvas: tuple[int, int]
    offset: tuple[int, int]
    result: tuple[int, int]
    box: tuple[int, int, int, int]

    @property
    def horizontal(self) -> bool:
        return self.side in ("left", "right")


def side_steps(size: tuple[int, int], amounts: dict[str, int], job_size: tuple[int, int]) -> list[SideStep]:
    """The expansions one after another, each with its job box (ValueError when the job cannot reach across the
    new border)."""
    steps = []
    for side in (s for s in SIDES if amounts[s]):
        amount, horizontal = amounts[side], side in ("left", "right")
        result = (size[0] + amount, size[1]) if horizontal else (size[0], size[1] + amount)
        canvas = (_up64(result[0]), _up64(result[1]))
        offset = (amount if side == "left" else 0, amount if side == "up" else 0)
        axis = 0 if horizontal else 1
        length = min(job_size[axis], result[axis]) // 8 * 8
        needed = amount if side in ("left", "up") else canvas[axis] - size[axis]
        if length < needed:
            field = "width" if horizontal else "height"
            raise ValueError(f"{TITLE}: a {field} of {job_size[axis]} px cannot reach across the {amount} px added "
                             f"on the {side}; set {field} to at least {needed}")
        start = 0 if side in ("left", "up") else canvas[axis] - length
        box = (start, 0, start + length, canvas[1]) if horizontal else (0, start, canvas[0], start + length)
        steps.append(SideStep(side, amount, size, canvas, offset, result, box))
        size = result
    return steps


def _power_law(shape: tuple[int, int], exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise of unit spread whose amplitude falls as 1 / f^``exponent`` with the spatial frequency f."""
    spectrum = np.fft.rfft2(rng.standard_normal(shape))
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]
    frequency = np.hypot(fy, fx)
    frequency[0, 0] = np.inf  # no constant part: the mean comes from the edge colours
    noise = np.fft.irfft2(spectrum / frequency ** exponent, s=shape)
    return noise / max(float(noise.std()), 1e-8)


def filled_canvas(image: Image.Image, step: SideStep, seed: int, noise_q: float, color_variation: float):
    """The image on its canvas with everything outside it filled: edge colours smeared outwards plus matched noise."""
    canvas = Image.new("RGB", step.canvas)
    canvas.paste(image.convert("RGB"), step.offset)
    outside = Image.new("L", step.canvas, 255)
    ImageDraw.Draw(outside).rectangle((*step.offset, step.offset[0] + image.width - 1,
                                       step.offset[1] + image.height - 1), fill=0)
    smeared = np.asarray(image_ops.fill_masked(canvas, outside), np.float32) / 255
    own = np.asarray(image.convert("RGB"), np.float32) / 255
    spread = np.maximum(own.reshape(-1, 3).std(axis=0), 0.04)  # a flat image still gets some texture to work on
    rng = np.random.default_rng(seed)
    shape = (step.canvas[1], step.canvas[0])
    grey = _power_law(shape, noise_q, rng)[..., None]
    colour = np.stack([_power_law(shape, noise_q, rng) for _ in range(3)], axis=-1)
    noise = (1 - color_variation) * grey + color_variation * colour
    filled = np.clip(smeared + noise / max(float(noise.std()), 1e-8) * spread, 0, 1)
    where = np.asarray(outside, bool)[..., None]
    pixels = np.where(where, np.rint(filled * 255), np.asarray(canvas)).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def repaint_mask(step: SideStep, blur: int) -> Image.Image:
    """White (repaint) on the canvas except the image, whose edge at the new border is repainted ``blur`` px deep."""
    mask = Image.new("L", step.canvas, 255)
    x0, y0 = step.offset
    x1, y1 = x0 + step.size[0], y0 + step.size[1]
    inset = {"left": (blur, 0, 0, 0), "right": (0, 0, blur, 0), "up": (0, blur, 0, 0), "down": (0, 0, 0, blur)}
    dl, du, dr, dd = inset[step.side]
    ImageDraw.Draw(mask).rectangle((x0 + dl, y0 + du, x1 - dr - 1, y1 - dd - 1), fill=0)
    return mask


class OutpaintingMk2(Script):
    title = TITLE
    alwayson = False
    kinds = ("img2img",)

    def controls(self, kind: str) -> list[Control]:
        return [
            Control("info", "info", INFO, ""),
            Control("pixels", "slider", "Pixels to expand", 128, minimum=8, maximum=256, step=8),
            Control("mask_blur", "slider", "Mask blur", 8, minimum=0, maximum=64, step=1),
            Control("direction", "checkboxes", "Outpainting direction", list(SIDES), choices=SIDES),
            Control("noise_q", "slider", "Fall-off exponent (lower=higher detail)", 1.0, minimum=0.0, maximum=4.0,
                    step=0.01),
            Control("color_variation", "slider", "Color variation", 0.05, minimum=0.0, maximum=1.0, step=0.01),
        ]

    @staticmethod
    def _plan(params, args: dict):
        """The request checked (a copy) with its warnings, and the side steps (ValueError when unusable)."""
        base = dataclasses.replace(params)
        warnings = base.validate()
        amounts = side_amounts(base.init_images[0].size, int(args["pixels"]), chosen_sides(args["direction"]))
        return base, warnings, side_steps(base.init_images[0].size, amounts, (base.width, base.height))

    @staticmethod
    def _job(base, step: SideStep, images: list, seed: int, args: dict):
        return dataclasses.replace(
            base, init_images=images, width=step.box[2] - step.box[0], height=step.box[3] - step.box[1],
            batch_size=len(images), n_iter=1, seed=seed, mask=repaint_mask(step, int(args["mask_blur"])).crop(step.box),
            mask_blur=min(4 * int(args["mask_blur"]), MAX_MASK_BLUR), inpainting_fill=1, inpaint_full_res=False,
            resize_mode=0, do_not_save_samples=True, do_not_save_grid=True)

    def planned_jobs(self, state, params, args: dict, alwayson: dict) -> list[tuple[object, dict]]:
        """One job per side per image of the batch count."""
        base, _, steps = self._plan(params, args)
        images = [base.init_images[0]] * int(base.batch_size)
        return [(self._job(base, step, images, 0, args), alwayson) for _ in range(base.n_iter) for step in steps]

    def run(self, state, params, args: dict, progress, alwayson: dict | None = None):
        base, warnings, steps = self._plan(params, args)
        settings = state.settings.current.with_overrides(base.override_settings)
        seed, batch = resolve_seed(int(base.seed)), int(base.batch_size)
        base.subseed = resolve_seed(int(base.subseed))
        progress.begin(steps_per_batch(base, settings), len(steps) * base.n_iter)
        result, unsaved = JobResult(warnings=warnings), script_results.unsaved_images(settings)
        for n in range(base.n_iter):
            first_seed, images, first = seed + n * batch, [base.init_images[0].convert("RGB")] * batch, None
            for k, step in enumerate(steps):
                if progress.control.interrupted:
                    break
                progress.start_batch(n * len(steps) + k)
                canvases = [filled_canvas(image, step, first_seed + i, float(args["noise_q"]),
                                          float(args["color_variation"])) for i, image in enumerate(images)]
                job = self._job(base, step, [c.crop(step.box) for c in canvases], first_seed, args)
                text = f"{TITLE}: {step.side} ({k + 1}/{len(steps)}), batch {n + 1}/{base.n_iter}, step {{step}}"
                one = run_generation(state, job, progress.nested(text), alwayson=alwayson)
                result.warnings += [w for w in one.warnings if w not in result.warnings]
                if len(one.images) < len(canvases):  # interrupted: this side is not done
                    break
                for canvas, painted in zip(canvases, one.images):
                    canvas.paste(painted, step.box[:2])
                images = [canvas.crop((0, 0, *step.result)) for canvas in canvases]
                first = first or one
            if first is None or images[0].size != steps[-1].result:
                break
            for i, image in enumerate(images):
                script_results.add_image(state, settings, base, result, first, i, image, unsaved)
                progress.images.append(image)
        result.interrupted = progress.control.interrupted
        if len(result.images) > 1:
            script_results.lead_with_grid(state, settings, base, result, outputs.make_grid(result.images), unsaved)
        result.warnings.extend(unsaved.report())
        script_results.finish_info(result)
        progress.finish()
        return result

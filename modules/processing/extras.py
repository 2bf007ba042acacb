"""A1111's Extras (postprocessing) as a job: images upscaled by a factor ("Scale by") or to a size ("Scale to",
optionally cropped to fit), with a second upscaler blended in, saved with A1111's postprocessing text.

As in A1111: with Upscaler 1 "None" an image is left as it is; "Scale to" scales by the larger of the two ratios,
so the image covers the size (with crop to fit, it is then cut to it around the centre); upscaler 2 upscales the
original image as well and is blended in with its visibility. Unlike A1111, sizes are not floored to multiples of 8
(that is a latent-space constraint, not a pixel one). Face restoration (GFPGAN, CodeFormer) is not available
offline: asking for it gives a warning, not an error.

The postprocessing text ("Postprocess upscale by: 2, Postprocess upscaler: X, Postprocess upscaler 2: Y") goes
into the PNG chunks ``postprocessing`` and ``extras``; the source's own ``parameters`` stay as they are.
"""
from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .. import infotext as infotext_mod
from .. import requester
from ..image_io import read_infotext
from ..remote_limits import RemoteLimits
from ..upscaling.tiling import tile_starts
from ..upscaling.upscale import MAX_MODEL_PASSES, Tiling, UnknownUpscaler
from . import outputs
from .params import ParamError
from .progress import JobProgress
from .saving import UnsavedImages

MAX_OUTPUT_PIXELS = 8192 * 8192  # one result image: 192 MiB of RGB bytes, with room for the blend beside it
MAX_OUTPUT_SIDE = 16383  # WebP's largest side, the smallest of the save formats'
MAX_SCALE = 16.0  # "Scale by"; the pixel caps above decide first for all but tiny images
TEXT_CHUNKS = ("postprocessing", "extras")  # the PNG chunks A1111 writes the postprocessing text into
FACE_RESTORATION_UNAVAILABLE = ("face restoration (GFPGAN, CodeFormer) is not available: this offline app cannot "
                                "ship its face detector's weights; the images are upscaled only")
NO_UPSCALER = "Upscaler 1 is None: the images are left at their size"


class Interrupted(Exception):
    """Raised from a tile callback to stop the job; the images finished before are kept."""


@dataclass(frozen=True)
class ExtrasParams:
    """A1111's extras request fields, with the defaults of its API."""

    resize_mode: int = 0  # 0: Scale by ``upscaling_resize``; 1: Scale to ``upscaling_resize_w`` × ``_h``
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = False  # the order of upscaling and face restoration; nothing to order here

    @property
    def size_field(self) -> str:
        return "upscaling_resize_w" if self.resize_mode == 1 else "upscaling_resize"

    @property
    def uses_upscaler_2(self) -> bool:
        return self.upscaler_1 != "None" and self.upscaler_2 != "None" and self.extras_upscaler_2_visibility > 0

    def check(self, upscalers) -> list[str]:
        """ParamError naming the field of a value that cannot be used; else the warnings for the user."""
        if self.resize_mode not in (0, 1):
            raise ParamError("resize_mode", f"{self.resize_mode!r}: 0 (scale by) or 1 (scale to)")
        if self.resize_mode == 0 and not 0 < self.upscaling_resize <= MAX_SCALE:
            raise ParamError("upscaling_resize", f"{self.upscaling_resize} is outside 0..{MAX_SCALE:g}")
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            if self.resize_mode == 1 and not 1 <= getattr(self, name) <= MAX_OUTPUT_SIDE:
                raise ParamError(name, f"{getattr(self, name)} is outside 1..{MAX_OUTPUT_SIDE}")
        for name in ("extras_upscaler_2_visibility", "gfpgan_visibility", "codeformer_visibility",
                     "codeformer_weight"):
            if not 0 <= getattr(self, name) <= 1:
                raise ParamError(name, f"{getattr(self, name)} is outside 0..1")
        for name in ("upscaler_1", "upscaler_2"):
            try:
                upscalers.find(getattr(self, name))
            except UnknownUpscaler as e:
                raise ParamError(name, str(e)) from None
        warnings = [FACE_RESTORATION_UNAVAILABLE] if self.gfpgan_visibility or self.codeformer_visibility else []
        return warnings + ([NO_UPSCALER] if self.upscaler_1 == "None" else [])


@dataclass(frozen=True)
class SizePlan:
    """What the upscalers make of one image (``scaled``), then the size it is cut to around the centre."""

    scaled: tuple[int, int]
    crop: tuple[int, int] | None = None

    @property
    def final(self) -> tuple[int, int]:
        return self.crop or self.scaled


def plan_size(params: ExtrasParams, size: tuple[int, int]) -> SizePlan:
    """The sizes an image of ``size`` is made (its own when Upscaler 1 is "None")."""
    width, height = size
    if params.upscaler_1 == "None":
        return SizePlan(size)
    if params.resize_mode == 1:
        target = (int(params.upscaling_resize_w), int(params.upscaling_resize_h))
        by = max(target[0] / width, target[1] / height)
        scaled = (max(target[0], round(width * by)), max(target[1], round(height * by)))
        return SizePlan(scaled, target if params.upscaling_crop else None)
    by = float(params.upscaling_resize)
    return SizePlan((max(1, round(width * by)), max(1, round(height * by))))


def check_size(params: ExtrasParams, size: tuple[int, int], name: str | None = None,
               max_pixels: int | None = None, why: str = "the Extras limit") -> SizePlan:
    """The plan for an image of ``size``; ParamError naming the size field (and the image ``name``) when the
    result would be larger than the caps (``max_pixels`` lower, e.g. a remote client's, says ``why``)."""
    plan = plan_size(params, size)
    cap = min(MAX_OUTPUT_PIXELS, max_pixels or MAX_OUTPUT_PIXELS)
    width, height = plan.scaled
    if width * height > cap or max(width, height) > MAX_OUTPUT_SIDE:
        which = f"{name}: " if name else ""
        raise ParamError(params.size_field, f"{which}{size[0]}×{size[1]} would become {width}×{height} "
                         f"({width * height} pixels); at most {cap} pixels and {MAX_OUTPUT_SIDE} a side "
                         f"({why if cap < MAX_OUTPUT_PIXELS else 'the Extras limit'})")
    return plan


def work_units(upscalers, params: ExtrasParams, size: tuple[int, int], tiling: Tiling) -> int:
    """Progress steps for one image: each model tile over all passes, 1 for each built-in upscale."""
    if params.upscaler_1 == "None":
        return 1
    target = plan_size(params, size).scaled
    units = 0
    for name in (params.upscaler_1, params.upscaler_2) if params.uses_upscaler_2 else (params.upscaler_1,):
        scale = upscalers.scale_of(name)
        (width, height), tiles = size, 0
        for _ in range(MAX_MODEL_PASSES if scale else 0):
            if width >= target[0] and height >= target[1]:
                break
            tiles += len(tile_starts(width, tiling.tile, tiling.overlap)) * len(
                tile_starts(height, tiling.tile, tiling.overlap))
            width, height = width * scale, height * scale
        units += max(1, tiles)
    return units


def _number(value: float) -> float | int:
    """2.0 as 2 (as A1111's slider gives it), 2.5 as 2.5."""
    return int(value) if float(value).is_integer() else round(float(value), 4)


def postprocess(upscalers, image: Image.Image, params: ExtrasParams, tiling: Tiling = Tiling(),
                on_tile: Callable[[int, int], None] | None = None) -> tuple[Image.Image, dict[str, object]]:
    """``image`` (as RGB) upscaled as ``params`` say, and its postprocessing fields in A1111's keys and order."""
    image = image.convert("RGB")
    info: dict[str, object] = {}
    if params.upscaler_1 == "None":
        return image, info
    plan = plan_size(params, image.size)

    def upscale(name: str) -> Image.Image:
        if params.resize_mode == 1:
            info["Postprocess upscale to"] = f"{params.upscaling_resize_w}x{params.upscaling_resize_h}"
        else:
            info["Postprocess upscale by"] = _number(params.upscaling_resize)
        out = upscalers.upscale(image, name, plan.scaled, tiling, on_tile).convert("RGB")
        if plan.crop is not None:
            left, top = (out.width - plan.crop[0]) // 2, (out.height - plan.crop[1]) // 2
            out = out.crop((left, top, left + plan.crop[0], top + plan.crop[1]))
            info["Postprocess crop to"] = f"{out.width}x{out.height}"
        return out

    result = upscale(params.upscaler_1)
    info["Postprocess upscaler"] = params.upscaler_1
    if params.uses_upscaler_2:
        result = Image.blend(result, upscale(params.upscaler_2), float(params.extras_upscaler_2_visibility))
        info["Postprocess upscaler 2"] = params.upscaler_2
    return result, info


def postprocessing_text(info: dict[str, object]) -> str:
    """A1111's one-line postprocessing text: ``Key: value`` pairs (a key equal to its value alone)."""
    return ", ".join(key if key == value else f"{key}: {infotext_mod.quote(value)}" for key, value in info.items())


@dataclass(frozen=True)
class ExtrasSource:
    """One input image: decoded already (an upload), or a file opened when its turn comes (a folder's)."""

    name: str = ""  # the file name, for a batch's output names ("" for a single image)
    image: Image.Image | None = None
    path: Path | None = None

    def size(self) -> tuple[int, int]:
        """Width and height (a file's from its header)."""
        if self.image is not None:
            return self.image.size
        with Image.open(self.path) as image:
            return image.size

    def load(self) -> Image.Image:
        if self.image is not None:
            return self.image
        with Image.open(self.path) as image:
            image.load()
            return image


def safe_stem(name: str) -> str:
    """A file name's stem usable in an output name: no folders, only letters, digits, ``.``, ``_``, ``-``."""
    stem = Path(name.replace("\\", "/")).stem if name else ""
    return re.sub(r"[^\w.-]+", "_", stem).strip("._")[:80]


@dataclass
class ExtrasImage:
    """One result: the image, its postprocessing text, the source's generation parameters and the saved file."""

    image: Image.Image | None  # None when results are not kept (a folder batch without "show result images")
    infotext: str
    parameters: str = ""
    path: Path | None = None


@dataclass
class ExtrasResult:
    images: list[ExtrasImage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def html_info(self) -> str:
        """A1111's ``html_info``: the last image's postprocessing text as a paragraph, then the warnings."""
        lines = [self.images[-1].infotext] if self.images and self.images[-1].infotext else []
        lines += self.warnings + (["Interrupted: the images finished so far are kept"] if self.interrupted else [])
        return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


@dataclass(frozen=True)
class ExtrasJob:
    """What one Extras job does: ``params`` over ``sources`` (which came in request field ``field``), saved into
    ``save_to`` (None: not saved), the images kept in the result when ``keep`` (a folder of thousands need not be
    held). ``max_pixels`` and ``why``: a lower cap on one result's pixels and its reason (set by
    :func:`submit_extras` for remote clients)."""

    params: ExtrasParams
    sources: Sequence[ExtrasSource]
    save_to: Path | None = None
    keep: bool = True
    field: str = "image"
    max_pixels: int | None = None
    why: str = "the Extras limit"
    warnings: tuple[str, ...] = ()

    def check_source(self, size: tuple[int, int], name: str, max_upload: int) -> SizePlan:
        """ParamError naming ``field`` (too many pixels to take) or the size field (too many to make)."""
        if size[0] * size[1] > max_upload:
            raise ParamError(self.field, f"{name or 'the image'}: {size[0]}×{size[1]} is more than {max_upload} "
                             "pixels (setting limit_upload_pixels)")
        return check_size(self.params, size, name, self.max_pixels, self.why)


def _save(unsaved: UnsavedImages, folder: Path, fmt: str, item: ExtrasImage, name: str) -> Path | None:
    """Save into ``folder`` itself (A1111's flat Extras folder): in a PNG the source's parameters stay the
    infotext and the postprocessing text goes beside them; JPEG/WebP hold one text, the parameters if any."""
    stem = safe_stem(name)

    def reserve(target: Path) -> Path:
        return outputs.next_extras_path(target, stem, fmt)

    if fmt != "png":
        return unsaved.save(item.image, folder, reserve, item.parameters or item.infotext, dated=False)
    chunks = {key: item.infotext for key in TEXT_CHUNKS} if item.infotext else None
    return unsaved.save(item.image, folder, reserve, item.parameters or None, chunks, dated=False)


def _usable(job: ExtrasJob, max_upload: int, warnings: list[str]) -> list[tuple[ExtrasSource, tuple[int, int]]]:
    """The sources that can be done, with their sizes (a file's from its header); one warning lists the others."""
    usable, skipped = [], []
    for source in job.sources:
        try:
            size = source.size()
            job.check_source(size, source.name, max_upload)
        except ParamError as e:
            skipped.append(f"{source.name} ({str(e).split(': ', 2)[-1]})")
            continue
        except (OSError, ValueError, Image.DecompressionBombError):
            skipped.append(f"{source.name} (not an image)")
            continue
        usable.append((source, size))
    if skipped:
        more = f", and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.append(f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''}: {', '.join(skipped[:5])}{more}")
    return usable


def run_extras(upscalers, settings, job: ExtrasJob, progress: JobProgress | None = None) -> ExtrasResult:
    """Run ``job`` with ``upscalers`` (:class:`~modules.upscaling.upscale.Upscalers`) under ``settings`` (tiles,
    limits, save format); the caller serialises jobs. A source that cannot be read or is too large is skipped with
    a warning. Progress counts tiles; Interrupt stops within a tile and keeps the images finished before."""
    progress = progress or JobProgress()
    params, tiling = job.params, Tiling(settings.ESRGAN_tile, settings.ESRGAN_tile_overlap)
    result = ExtrasResult(warnings=list(job.warnings))
    sources = _usable(job, settings.limit_upload_pixels, result.warnings)
    units = [work_units(upscalers, params, size, tiling) for _, size in sources]
    progress.begin(max(1, sum(units)), 1)
    unsaved, done_units = UnsavedImages(), 0
    for index, ((source, _), count) in enumerate(zip(sources, units)):
        label = f"image {index + 1}/{len(sources)}"

        def on_tile(done: int, total: int, label: str = label) -> None:
            if progress.control.interrupted:
                raise Interrupted
            progress.advance(f"{label}: tile {done}/{total}")

        if progress.control.interrupted:
            result.interrupted = True
            break
        try:
            image = source.load()
            upscaled, info = postprocess(upscalers, image, params, tiling, on_tile)
        except Interrupted:
            result.interrupted = True
            break
        except (OSError, Image.DecompressionBombError) as e:  # a file changed since its header was read
            result.warnings.append(f"skipped {source.name}: {e}")
            continue
        item = ExtrasImage(upscaled, postprocessing_text(info), read_infotext(image) or "")
        if job.save_to is not None:
            item.path = _save(unsaved, job.save_to, settings.samples_format, item, source.name)
        if not job.keep:
            item.image = None
        result.images.append(item)
        if item.image is not None:
            progress.images.append(item.image)
        done_units += count
        progress.step = max(progress.step, done_units)
    result.warnings.extend(unsaved.report())
    progress.finish()
    return result


def submit_extras(state, job: ExtrasJob):
    """Check the job now (ParamError naming the field): its parameters against the app's upscalers, the number of
    images (``limit_images_per_request``), and every image already decoded against the upload and output limits
    (a remote client's against ``--remote-max-pixels`` too); then queue it on ``state.queue`` as "extras" and
    return the :class:`~modules.job_queue.Job`."""
    settings = state.settings.current
    warnings = job.params.check(state.upscalers)
    limits = RemoteLimits.from_options(state.options.server)
    if limits.applies_to(requester.current()) and limits.max_pixels is not None:
        job = dataclasses.replace(job, max_pixels=limits.max_pixels, why="--remote-max-pixels")
    if len(job.sources) > settings.limit_images_per_request:
        raise ParamError(job.field, f"{len(job.sources)} images; at most {settings.limit_images_per_request} "
                         "(setting limit_images_per_request)")
    for source in job.sources:
        if source.image is not None:
            job.check_source(source.image.size, source.name, settings.limit_upload_pixels)
    job = dataclasses.replace(job, warnings=(*job.warnings, *warnings))
    return state.queue.submit(lambda progress: run_extras(state.upscalers, state.settings.current, job, progress),
                              "extras")

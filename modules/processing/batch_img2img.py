"""Batch img2img (A1111's img2img "Batch" tab): every image of a folder on the server becomes an img2img job.

Facts kept from A1111: the input folder is searched with its subfolders for .png, .jpg, .jpeg and .webp files (by
path); an inpaint mask folder with one file uses it for every image, with several the mask is the file named like
the image (``<stem>.*``) and an image without one is skipped; the seed is fixed once (-1 drawn once) for all images;
with "PNG info" the chosen parameters of each image's infotext (or of the file of the same name in the PNG info
folder) are taken: "Prompt" and "Negative prompt" are appended to the request's, "Seed", "CFG scale", "Sampler",
"Steps" and "Model hash" replace them. With an output folder each result is saved there (under the image's
subfolder) as ``<stem>.<samples_format>``, further images of one input as ``<stem>-<n>``, with its infotext;
without one the results are saved as usual samples. Like A1111's, the HTTP API has no batch-folder fields: a
client sends the images in ``init_images`` itself.

Folders are typed by the user and lie on the server: a remote requester (:mod:`modules.requester`) may only name
folders inside the data folder or an ``--allowed-output-roots`` root; a browser on the server's machine may name
any. Each image runs as its own job through ``submit`` (normally :func:`modules.scripts.submit`, so the job queue
takes turns, checks the request and shows progress); an interrupted job ends the batch and keeps what was made.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from ..image_io import read_infotext_file
from ..infotext import infotext_to_params, parse_infotext
from ..output_folders import typed_folder
from ..requester import LOCAL, Requester
from ..sampling import resolve_seed
from . import script_results
from .params import Img2ImgParams
from .runner import JobResult
from .saving import UnsavedImages

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PNG_INFO_PROPS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps", "Model hash")
_REPLACED = {"Seed": ("seed",), "CFG scale": ("cfg_scale",), "Sampler": ("sampler_name", "scheduler"),
             "Steps": ("steps",)}


@dataclass
class BatchFolders:
    """The Batch tab's folders and PNG info options, as typed by the user."""

    input_dir: str
    output_dir: str = ""  # empty: save as usual img2img samples
    inpaint_mask_dir: str = ""
    use_png_info: bool = False
    png_info_props: tuple[str, ...] = ()
    png_info_dir: str = ""  # empty: the input image itself
    scale_by: float | None = None  # "Resize by": each job's size is its image's size times this


@dataclass
class BatchPlan:
    """The folders resolved and checked, and the images to run (with their masks when inpainting)."""

    folders: BatchFolders
    input_dir: Path
    images: list[Path]
    masks: list[Path]  # the mask folder's files; empty: no inpainting
    output_dir: Path | None
    png_info_dir: Path | None


def _files(folder: Path, label: str, suffixes: tuple[str, ...] | None) -> list[Path]:
    """The files below ``folder`` (with subfolders when ``suffixes`` is given, which they must end in), by path."""
    if not folder.is_dir():
        raise ValueError(f"{label}: {folder} is not a folder")
    try:
        found = folder.rglob("*") if suffixes else folder.iterdir()
        files = [p for p in found if p.is_file() and not p.name.startswith(".")]
    except OSError as e:
        raise ValueError(f"{label}: cannot read {folder} ({e.strerror or e})") from None
    return sorted(p for p in files if suffixes is None or p.suffix.lower() in suffixes)


def plan_batch(state, folders: BatchFolders, who: Requester = LOCAL) -> BatchPlan:
    """Resolve and check the folders for ``who`` and list the images (ValueError naming the field to fix)."""
    data_dir, roots = state.options.data_dir, state.options.allowed_output_roots

    def folder(label: str, value: str) -> Path | None:
        value = (value or "").strip()
        return typed_folder(label, value, data_dir, roots, who.remote) if value else None

    input_dir = folder("Input directory", folders.input_dir)
    if input_dir is None:
        raise ValueError("Input directory: type the folder whose images to process")
    output_dir = folder("Output directory", folders.output_dir)
    mask_dir = folder("Inpaint batch mask directory", folders.inpaint_mask_dir)
    png_info_dir = folder("PNG info directory", folders.png_info_dir) if folders.use_png_info else None
    unknown = [p for p in folders.png_info_props if p not in PNG_INFO_PROPS]
    if unknown:
        raise ValueError(f"Parameters to take from png info: unknown {', '.join(unknown)} "
                         f"(choose from {', '.join(PNG_INFO_PROPS)})")
    images = _files(input_dir, "Input directory", IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"Input directory: {input_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    masks = _files(mask_dir, "Inpaint batch mask directory", None) if mask_dir is not None else []
    return BatchPlan(folders, input_dir, images, masks, output_dir, png_info_dir)


def _mask_for(plan: BatchPlan, image: Path) -> Path | None:
    if len(plan.masks) == 1:
        return plan.masks[0]
    return next((m for m in plan.masks if m.stem == image.stem), None)


def _open(path: Path, max_pixels: int) -> Image.Image:
    """The image at ``path``, upright (EXIF orientation); ValueError when unreadable or over ``max_pixels``."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise ValueError(f"{image.width}×{image.height} has more than {max_pixels} pixels (Settings → "
                                 "Limits of a request)")
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, Image.DecompressionBombError, SyntaxError):
        raise ValueError("not a readable image") from None


def png_info_changes(state, text: str | None, props, prompt: str, negative: str) -> dict:
    """The params fields that the chosen ``props`` of infotext ``text`` set (prompts appended, others replaced)."""
    if not text:
        return {}
    parsed = parse_infotext(text)
    values = infotext_to_params(parsed)
    out: dict = {}
    for prop, name, base in (("Prompt", "prompt", prompt), ("Negative prompt", "negative_prompt", negative)):
        if prop in props and parsed.get(prop):
            out[name] = f"{base} {parsed[prop]}" if base else str(parsed[prop])
    for prop, names in _REPLACED.items():
        if prop in props and prop in parsed:
            out.update({n: values[n] for n in names if n in values})
    if "Model hash" in props and parsed.get("Model hash"):
        info = state.models.catalog.find(str(parsed["Model hash"]))
        if info is not None:
            out["override_settings"] = {"sd_model_checkpoint": info.filename}
    return out


@dataclass
class BatchRun:
    """Runs a plan's images one job at a time through ``submit(params) -> Job``; :meth:`jobs` yields each job as it
    is queued, and ``result`` gathers the finished images, infotexts, saved paths and warnings."""

    state: object
    base: Img2ImgParams
    plan: BatchPlan
    submit: Callable[[Img2ImgParams], object]
    result: JobResult = field(default_factory=JobResult)
    done: int = 0  # images whose job has ended
    current: str = ""  # the image being processed (its path below the input folder)

    def _params(self, image_path: Path, seed: int) -> Img2ImgParams | None:
        """The job of one image, or None (with a warning) when it is skipped."""
        plan, settings = self.plan, self.state.settings.current
        name = str(image_path.relative_to(plan.input_dir))
        try:
            image = _open(image_path, settings.limit_upload_pixels)
        except ValueError as e:
            self.result.warnings.append(f"{name}: {e}; skipped")
            return None
        changes: dict = {"init_images": [image], "seed": seed, "do_not_save_grid": True,
                         "do_not_save_samples": plan.output_dir is not None}
        if plan.masks:
            mask_path = _mask_for(plan, image_path)
            if mask_path is None:
                self.result.warnings.append(f"{name}: no mask named {image_path.stem}.* in the mask folder; skipped")
                return None
            try:
                changes["mask"] = _open(mask_path, settings.limit_upload_pixels)
            except ValueError as e:
                self.result.warnings.append(f"{name}: mask {mask_path.name}: {e}; skipped")
                return None
        folders = plan.folders
        if folders.scale_by:
            changes["width"] = max(64, int(image.width * folders.scale_by) // 8 * 8)
            changes["height"] = max(64, int(image.height * folders.scale_by) // 8 * 8)
        if folders.use_png_info:
            info_path = image_path if plan.png_info_dir is None else plan.png_info_dir / image_path.name
            try:
                text = read_infotext_file(info_path) if info_path.is_file() else None
            except (OSError, SyntaxError):
                text = None
            taken = png_info_changes(self.state, text, folders.png_info_props, self.base.prompt,
                                     self.base.negative_prompt)
            if "override_settings" in taken:  # the image's checkpoint, with the request's other overrides
                taken["override_settings"] = {**self.base.override_settings, **taken["override_settings"]}
            changes.update(taken)
        return dataclasses.replace(self.base, **changes)

    def jobs(self) -> Iterator[object]:
        """Queue the images' jobs one after another, each once the one before has ended (its error is raised);
        stop after an interrupted one."""
        seed = resolve_seed(int(self.base.seed))
        unsaved = UnsavedImages()
        for image_path in self.plan.images:
            self.current = str(image_path.relative_to(self.plan.input_dir))
            params = self._params(image_path, seed)
            if params is None:
                self.done += 1
                continue
            job = self.submit(params)
            yield job
            one = job.wait()
            self.done += 1
            if one is None:  # interrupted before it started
                self.result.interrupted = True
                break
            self._keep(image_path, one, unsaved)
            if one.interrupted:
                self.result.interrupted = True
                break
        self.result.warnings.extend(unsaved.report())

    def _keep(self, image_path: Path, one: JobResult, unsaved: UnsavedImages) -> None:
        """Add one image's results; with an output folder, save them there under the image's name."""
        if self.plan.output_dir is None:
            script_results.add_job(self.result, one)
            return
        script_results.add_job(self.result, dataclasses.replace(one, paths=[]))  # saved below, under its name
        folder = self.plan.output_dir / image_path.parent.relative_to(self.plan.input_dir)
        ext = self.state.settings.current.samples_format
        for n, (image, infotext) in enumerate(zip(one.images, one.infotexts)):
            name = f"{image_path.stem}{f'-{n}' if n else ''}.{ext}"
            path = unsaved.save(image, folder, lambda target, name=name: target / name, infotext, dated=False)
            if path is not None:
                self.result.paths.append(path)


def run_batch(state, params: Img2ImgParams, folders: BatchFolders, submit: Callable[[Img2ImgParams], object],
              who: Requester = LOCAL) -> JobResult:
    """Plan the batch for ``who`` and run all of it, waiting for each job; the gathered result."""
    run = BatchRun(state, params, plan_batch(state, folders, who), submit)
    for _ in run.jobs():
        pass
    return run.result

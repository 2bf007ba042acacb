"""The A1111-compatible HTTP API: ``build_router(state)`` gives the ``/sdapi/v1`` routes over one application state.

Every generation goes through the FIFO job queue (``modules.scripts.submit``, with the request's scripts);
``override_settings`` apply to that request's job only. Model/VAE switches from ``POST /options`` run in the
queue's turn. Bad input is answered with 4xx JSON ``{"error", "detail"}`` whose
detail names the field; the request is checked before it is queued wherever the engine lets us.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import inspect
import io
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from modules import a1111_options, scripts
from modules import infotext as infotext_mod
from modules.app_state import default_checkpoint
from modules.devices import dtype_name
from modules.image_io import PNG_INFOTEXT_KEY, read_infotext
from modules.models.safetensors_file import ModelFileError
from modules.networks.user_metadata import api_metadata
from modules.processing import extras
from modules.processing.image_ops import LATENT_UPSCALE_MODES
from modules.processing.params import GenerationParams, Img2ImgParams, ParamError, Txt2ImgParams
from modules.prompts.styles import load_styles
from modules.sampling import registry
from modules.settings import LIMIT_SETTINGS
from modules.upscaling.upscale import BUILTIN as BUILTIN_UPSCALERS

from . import models as m

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
HIRES_TITLE = "Hires fix"
# engine ParamError fields answered with 400 (a choice among names, unusable text, a cost refused), not 422 (a
# number outside the range the request schema states)
_BAD_REQUEST_FIELDS = {"sampler_name", "scheduler", "sd_model_checkpoint", "override_settings", "styles", "prompt",
                       "negative_prompt", "seed_resize_from_w", "seed_resize_from_h", "refiner_checkpoint"}
_SECRET_FLAGS = {"api_auth", "gradio_auth"}


class ApiError(Exception):
    """A refused request: HTTP ``status`` and a message that starts with the field it is about."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field = status, field


def error_response(status: int, error: str, detail: str, errors: list | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict]]:
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(e['loc'][1:] if e['loc'][:1] == ['body'] else e['loc']) or 'body'}: {e['msg']}"
                       for e in errors)
    return detail or "invalid request", errors


class ApiRoute(APIRoute):
    """Turns validation failures and refused requests into ``{"error", "detail"}`` JSON, never a stack trace."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def guarded(request: Request):
            try:
                return await handler(request)
            except RequestValidationError as e:
                detail, errors = _validation_detail(e)
                return error_response(422, "RequestValidationError", detail, errors)
            except ApiError as e:
                return error_response(e.status, "Bad Request" if e.status == 400 else "Unprocessable", str(e))
            except HTTPException as e:
                return error_response(e.status_code, "HTTPException", str(e.detail))
            except Exception as e:  # noqa: BLE001 - logged here; the client gets no stack trace
                log.exception("API %s %s failed", request.method, request.url.path)
                return error_response(500, type(e).__name__, "internal error; see the server log")

        return guarded


# --- images ------------------------------------------------------------------------------------------------------

def decode_image(data: str, field: str, max_pixels: int | None = None):
    """A PIL image from base64 (optionally a ``data:`` URL); ApiError 400 naming ``field`` when it is not one, or
    when its header says it has more than ``max_pixels`` pixels (checked before the pixels are decoded)."""
    from PIL import Image

    if not isinstance(data, str) or not data.strip():
        raise ApiError(400, field, "empty image")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, field, "invalid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))  # reads the header only
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise ApiError(400, field, f"{image.width}×{image.height} image: more than {max_pixels} pixels "
                                       "(setting limit_upload_pixels)")
        image.load()
    except ApiError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit (set from the setting when the UI is on)
        raise ApiError(400, field, f"image too large: more than {max_pixels or Image.MAX_IMAGE_PIXELS} pixels "
                                   "(setting limit_upload_pixels)") from None
    except Exception:  # noqa: BLE001 - PIL raises many kinds for corrupt data
        raise ApiError(400, field, "not a readable image") from None
    return image


def decode_images(state, fields: dict[str, str]) -> dict:
    """Decode the request's images ``{field: base64}`` within the upload limits: each image within
    ``limit_upload_pixels``, all of them within ``limit_upload_pixels_total`` (checked before each is decoded)."""
    settings = state.settings.current
    left = settings.limit_upload_pixels_total
    images = {}
    for field, data in fields.items():
        image = decode_image(data, field, min(settings.limit_upload_pixels, left))
        left -= image.width * image.height
        images[field] = image
    return images


def _check_text(value, field: str) -> None:
    """ApiError 400 for a string anywhere in ``value`` that cannot be UTF-8 (a lone surrogate from JSON)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ApiError(400, field, f"invalid character at position {e.start} (a lone UTF-16 surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, field)
            _check_text(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_text(item, f"{field}[{i}]")


def encode_png(image, infotext: str | None = None, chunks: dict[str, str] | None = None) -> str:
    """Base64 PNG with ``infotext`` in its ``parameters`` chunk and ``chunks`` as further text chunks (as A1111
    returns images)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text(PNG_INFOTEXT_KEY, infotext)
    for key, text in (chunks or {}).items():
        info.add_text(key, text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- scripts -----------------------------------------------------------------------------------------------------

def _hires_args(state, req: m.Txt2ImgRequest) -> tuple[str, dict] | None:
    """A1111's hires fields mapped through the hires script's own helper; None when hires is off."""
    if not req.enable_hr:
        return None
    script = scripts.find_script(state, "txt2img", HIRES_TITLE, alwayson=True)
    helper = getattr(script, "args_from_request", None) or \
        getattr(inspect.getmodule(type(script)), "hires_args_from_request", None)
    if script is None or helper is None:
        raise ApiError(400, "enable_hr", "hires fix is not available (the 'Hires fix' script is not loaded)")
    known = {*LATENT_UPSCALE_MODES, *state.upscalers.names()}
    if req.hr_upscaler and req.hr_upscaler not in known:
        raise ApiError(400, "hr_upscaler", f"unknown upscaler {req.hr_upscaler!r}; valid: {', '.join(sorted(known))}")
    _check_sampler(req.hr_sampler_name or None, req.hr_scheduler or None, "hr_sampler_name", "hr_scheduler")
    if req.hr_checkpoint_name and req.hr_checkpoint_name != "Use same checkpoint" \
            and state.checkpoints.find(req.hr_checkpoint_name) is None:
        raise ApiError(400, "hr_checkpoint_name", f"checkpoint not found: {req.hr_checkpoint_name!r}")
    try:
        args = helper(req.enable_hr, req.hr_scale, req.hr_upscaler, req.hr_second_pass_steps, req.hr_resize_x,
                      req.hr_resize_y, req.denoising_strength, req.hr_sampler_name, req.hr_scheduler, req.hr_prompt,
                      req.hr_negative_prompt, req.hr_checkpoint_name)
    except ValueError as e:
        raise ApiError(400, "enable_hr", str(e)) from None
    return (script.title, args) if args is not None else None


def _alwayson(state, req: m.GenerationRequest) -> dict:
    """The request's always-on scripts ``{title: {"args": …}}``, A1111's hires fields included."""
    alwayson = {str(name): value if isinstance(value, dict) and set(value) <= {"args"} else {"args": value}
                for name, value in (req.alwayson_scripts or {}).items()}
    if isinstance(req, m.Txt2ImgRequest) and (hires := _hires_args(state, req)) is not None:
        if not any(name.lower() == hires[0].lower() for name in alwayson):
            alwayson[hires[0]] = {"args": hires[1]}
    return alwayson


# --- requests → job parameters ----------------------------------------------------------------------------------

def _check_sampler(sampler: str | None, scheduler: str | None, sampler_field: str = "sampler_name",
                   scheduler_field: str = "scheduler") -> None:
    try:
        registry.find_schedule(scheduler)
    except ValueError as e:
        raise ApiError(400, scheduler_field, str(e)) from None
    try:
        registry.resolve(sampler, scheduler)
    except ValueError as e:
        raise ApiError(400, sampler_field, str(e)) from None


def _pinned_checkpoint(state) -> str | None:
    """The checkpoint a request without its own choice runs on: the setting, else the start-up default (so that a
    concurrent request's model switch never decides which model this one runs on)."""
    if state.settings.current.sd_model_checkpoint:
        return state.settings.current.sd_model_checkpoint
    info = default_checkpoint(state)
    return info.filename if info else None


def _overrides(state, req: m.GenerationRequest) -> dict:
    overrides = dict(req.override_settings or {})
    if limits := sorted(set(overrides) & set(LIMIT_SETTINGS)):
        raise ApiError(400, f"override_settings.{limits[0]}", "a limit of requests cannot be changed by a request")
    if isinstance(req, m.Img2ImgRequest) and req.initial_noise_multiplier is not None:
        overrides.setdefault("initial_noise_multiplier", req.initial_noise_multiplier)
    try:
        state.settings.checked(overrides)
    except ValueError as e:
        raise ApiError(400, "override_settings", str(e)) from None
    wanted = overrides.get("sd_model_checkpoint")
    if wanted:
        info = state.checkpoints.find(wanted)
        if info is None:
            raise ApiError(400, "override_settings.sd_model_checkpoint", f"checkpoint not found: {wanted!r}")
        overrides["sd_model_checkpoint"] = info.filename
    elif (pinned := _pinned_checkpoint(state)) is not None:
        overrides["sd_model_checkpoint"] = pinned
    vae = overrides.get("sd_vae")
    if vae is not None and vae not in state.vaes.choices():
        raise ApiError(400, "override_settings.sd_vae", f"VAE not found: {vae!r}")
    return overrides


def apply_infotext(state, req: m.GenerationRequest) -> m.GenerationRequest:
    """Fill the fields the request does not set from its ``infotext`` (A1111's ``infotext`` request field)."""
    if not req.infotext:
        return req
    raw = infotext_mod.parse_infotext(req.infotext)
    parsed = infotext_mod.infotext_to_params(raw)
    fields = type(req).model_fields
    updates = {k: v for k, v in parsed.items() if k in fields and k not in req.model_fields_set}
    overrides = dict(req.override_settings or {})
    # a value this app does not have (e.g. A1111's "RNG: NV") keeps the current setting
    for name, value in state.settings.current.valid_overrides(infotext_mod.infotext_to_settings(raw)).items():
        overrides.setdefault(name, value)
    for key in ("sd_model_name", "sd_model_hash"):
        info = state.checkpoints.find(str(parsed[key])) if parsed.get(key) else None
        if info is not None:
            overrides.setdefault("sd_model_checkpoint", info.filename)
            break
    updates["override_settings"] = overrides
    return req.model_copy(update=updates)


def to_params(state, req: m.GenerationRequest) -> GenerationParams:
    """Engine job parameters for a request; ApiError for anything the engine would refuse."""
    sampler = req.sampler_name or req.sampler_index or None
    _check_sampler(sampler, req.scheduler)
    common = dict(
        prompt=req.prompt, negative_prompt=req.negative_prompt, styles=list(req.styles), seed=req.seed,
        subseed=req.subseed, subseed_strength=req.subseed_strength, seed_resize_from_h=req.seed_resize_from_h,
        seed_resize_from_w=req.seed_resize_from_w, sampler_name=sampler or GenerationParams.sampler_name,
        scheduler=req.scheduler or GenerationParams.scheduler, steps=req.steps, cfg_scale=req.cfg_scale,
        width=req.width, height=req.height, batch_size=req.batch_size, n_iter=req.n_iter,
        restore_faces=bool(req.restore_faces), tiling=bool(req.tiling), override_settings=_overrides(state, req),
        override_settings_restore_afterwards=req.override_settings_restore_afterwards,
        do_not_save_samples=req.do_not_save_samples or not req.save_images,
        do_not_save_grid=req.do_not_save_grid or not req.save_images, eta=req.eta, s_min_uncond=req.s_min_uncond,
        refiner_checkpoint=req.refiner_checkpoint, refiner_switch_at=req.refiner_switch_at,
    )
    if isinstance(req, m.Img2ImgRequest):
        if not req.init_images:
            raise ApiError(422, "init_images", "img2img needs at least one input image")
        uploads = {f"init_images[{i}]": data for i, data in enumerate(req.init_images)}
        decoded = decode_images(state, {**uploads, **({"mask": req.mask} if req.mask else {})})
        images, mask = [decoded[name] for name in uploads], decoded.get("mask")
        params = Img2ImgParams(
            **common, init_images=images, resize_mode=req.resize_mode, denoising_strength=req.denoising_strength,
            image_cfg_scale=req.image_cfg_scale, mask=mask, mask_blur=req.mask_blur,
            inpainting_fill=req.inpainting_fill, inpaint_full_res=bool(req.inpaint_full_res),
            inpaint_full_res_padding=req.inpaint_full_res_padding, inpainting_mask_invert=req.inpainting_mask_invert)
    else:
        params = Txt2ImgParams(**common)
    if params.refiner is not None and state.checkpoints.find(params.refiner) is None:
        raise ApiError(400, "refiner_checkpoint", f"checkpoint not found: {params.refiner!r}")
    try:
        dataclasses.replace(params).validate()  # on a copy: the job's own validation reports the warnings
    except ParamError as e:
        raise ApiError(400 if e.field in _BAD_REQUEST_FIELDS else 422, e.field, str(e).split(": ", 1)[-1]) from None
    return params


def _submit(state, params: GenerationParams, req: m.GenerationRequest):
    """Queue the job with its scripts; script names and arguments are checked at once (400)."""
    try:
        return scripts.submit(state, params, script_name=req.script_name or None,
                              script_args=req.script_args if req.script_name else None,
                              alwayson=_alwayson(state, req) or None)
    except ValueError as e:
        field, _, message = str(e).partition(": ")
        raise ApiError(400, field if message else "alwayson_scripts", message or str(e)) from None


def _wait(job):
    try:
        return job.wait()
    except ParamError as e:
        raise ApiError(400 if e.field in _BAD_REQUEST_FIELDS else 422, e.field, str(e).split(": ", 1)[-1]) from None
    except ModelFileError as e:
        raise ApiError(400, "sd_model_checkpoint", str(e)) from None
    except ValueError as e:
        field, _, message = str(e).partition(": ")
        raise ApiError(400, field if message else "request", message or str(e)) from None


def generate(state, req: m.GenerationRequest) -> dict:
    """Run a txt2img/img2img request through the queue and build A1111's response."""
    _check_text(req.model_dump(), "")
    req = apply_infotext(state, req)
    params = to_params(state, req)
    result = _wait(_submit(state, params, req))
    images = [encode_png(img, text) for img, text in zip(result.images, result.infotexts)] if req.send_images else []
    echoed = req.model_dump()
    if isinstance(req, m.Img2ImgRequest) and not req.include_init_images:
        echoed["init_images"], echoed["mask"] = None, None
    info = {**result.info, "extra_generation_params": extra_generation_params(result.infotexts[0])} \
        if result.infotexts else result.info
    return {"images": images, "parameters": echoed, "info": json.dumps(info, default=str)}


# Infotext keys A1111 writes from its own fields; the rest come from its ``extra_generation_params`` (hires fix,
# scripts, networks, …). "Denoising strength" is written among the first keys but kept in the extra ones.
_BASE_INFOTEXT_KEYS = frozenset(infotext_mod.LEADING_KEYS + infotext_mod.TRAILING_KEYS) - {"Denoising strength"}
_NUMBER = re.compile(r"-?\d+(\.\d*)?([eE][-+]?\d+)?")


def extra_generation_params(infotext: str) -> dict:
    """A1111's ``info.extra_generation_params`` from an image's infotext: the parameter line's fields beyond the
    base ones, in their order, numbers as numbers."""
    line = infotext.strip().rsplit("\n", 1)[-1]
    pairs = infotext_mod.parse_parameter_line(line)
    if len(pairs) < 3:
        return {}

    def value(text: str):
        if not _NUMBER.fullmatch(text):
            return text
        number = float(text)
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number

    return {key: value(text) for key, text in pairs if key not in _BASE_INFOTEXT_KEYS}


# --- extras ------------------------------------------------------------------------------------------------------

def run_extras_request(state, req: m.ExtrasBaseRequest, uploads: list[tuple[str, str, str]],
                       field: str) -> extras.ExtrasResult:
    """Decode ``uploads`` (request field, base64 data, file name) within the upload limits and run A1111's extras
    over them in the queue. Nothing is saved: A1111's API returns the images only. ApiError 400 naming the field
    (an unknown upscaler, too large a result, …) before anything is queued."""
    _check_text(req.model_dump(exclude={"image", "imageList"}), "")
    _check_text([name for _, _, name in uploads], field)
    if not uploads:
        raise ApiError(422, field, "no image given")
    decoded = decode_images(state, {where: data for where, data, _ in uploads})
    sources = [extras.ExtrasSource(name, decoded[where]) for where, _, name in uploads]
    params = extras.ExtrasParams(**req.model_dump(include={f.name for f in dataclasses.fields(extras.ExtrasParams)}))
    try:
        job = extras.submit_extras(state, extras.ExtrasJob(params, sources, field=field))
    except ParamError as e:
        raise ApiError(400, e.field, str(e).split(": ", 1)[-1]) from None
    try:
        return job.wait()
    except ModelFileError as e:  # a model file damaged or replaced since it was listed
        named = "upscaler_2" if params.upscaler_2 in str(e) and params.upscaler_1 not in str(e) else "upscaler_1"
        raise ApiError(400, named, str(e)) from None


def extras_png(item: extras.ExtrasImage) -> str:
    """A result as base64 PNG: the source's parameters and the postprocessing text in A1111's chunks."""
    chunks = {key: item.infotext for key in extras.TEXT_CHUNKS} if item.infotext else None
    return encode_png(item.image, item.parameters or None, chunks)


def extra_single_image(state, req: m.ExtrasSingleImageRequest) -> dict:
    result = run_extras_request(state, req, [("image", req.image, "")], "image")
    image = extras_png(result.images[0]) if result.images else None
    return {"html_info": result.html_info, "image": image, "warnings": result.warnings}


def extra_batch_images(state, req: m.ExtrasBatchImagesRequest) -> dict:
    uploads = [(f"imageList[{i}].data", item.data, item.name) for i, item in enumerate(req.imageList)]
    result = run_extras_request(state, req, uploads, "imageList")
    return {"html_info": result.html_info, "images": [extras_png(i) for i in result.images],
            "warnings": result.warnings}


def upscaler_items(state) -> list[dict]:
    """A1111's /upscalers: the built-ins, then every usable model file with its architecture and scale."""
    builtins = [{"name": name, "scale": None if name == "None" else 4.0} for name in BUILTIN_UPSCALERS]
    return builtins + [{"name": i.name, "model_name": i.architecture, "model_path": str(i.path), "model_url": None,
                        "scale": float(i.scale)} for i in state.upscalers.catalog.usable()]


def realesrgan_items(state) -> list[dict]:
    """A1111's /realesrgan-models: the usable files of the RealESRGAN folder and the Real-ESRGAN architectures
    (RRDB "x4plus" files are ESRGAN to spandrel and count only by their folder)."""
    return [{"name": i.name, "path": str(i.path), "scale": i.scale} for i in state.upscalers.catalog.usable()
            if i.folder == "RealESRGAN" or "RealESRGAN" in i.architecture]


# --- progress ----------------------------------------------------------------------------------------------------

class _PreviewCache:
    """The last live preview as base64 PNG, encoded once per (job, step)."""

    def __init__(self):
        self.key: tuple | None = None
        self.data: str | None = None

    def get(self, job) -> str | None:
        progress = job.progress
        image, step = progress.preview, progress.preview_step
        if image is None:
            return None
        key = (job.id, step, id(image))
        if key != self.key:
            self.key, self.data = key, encode_png(image)
        return self.data


def progress_of(state, cache: _PreviewCache, skip_current_image: bool) -> dict:
    queue = state.queue
    job = queue.current
    waiting = queue.waiting
    if job is None:
        idle = m.ProgressState(job_count=waiting, queue_waiting=waiting)
        return {"progress": 0.0, "eta_relative": 0.0, "state": idle,
                "current_image": None, "textinfo": None, "current_task": None}
    p = job.progress
    control = p.control
    job_state = m.ProgressState(
        skipped=bool(getattr(control, "skipped", False)), interrupted=bool(getattr(control, "interrupted", False)),
        job=job.label, job_count=1 + waiting, job_no=0, sampling_step=p.step, sampling_steps=p.total_steps,
        queue_waiting=waiting, job_timestamp=str(int(p.started or 0)))
    return {"progress": p.fraction, "eta_relative": p.eta_seconds or 0.0, "state": job_state,
            "current_image": None if skip_current_image else cache.get(job), "textinfo": p.textinfo or None,
            "current_task": job.id}


# --- options -----------------------------------------------------------------------------------------------------

def current_options(state) -> dict:
    """Every A1111 1.10 option with A1111's default, overlaid by what config.json keeps (A1111 options clients
    stored, extensions' settings) and the live values of the settings this project implements."""
    options = {**a1111_options.DEFAULTS, **state.settings.extra, **state.settings.current.to_dict()}
    info = state.models.current_info
    if info is not None:
        options["sd_model_checkpoint"] = state.checkpoints.title(info)
        options["sd_checkpoint_hash"] = state.checkpoints.sha256(info, compute=False)
    options["sd_vae"] = state.settings.current.sd_vae
    return options


def set_options(state, values: dict) -> dict:
    """Apply the settings this project implements (a model/VAE switch in the queue's turn) and extensions' settings;
    keep A1111 options it does not implement in config.json, listed in the answer's ``no_effect``. A name that is
    none of these (nor already in config.json) is refused with 400 naming it, and nothing is changed."""
    from modules.settings import Settings

    names = {f.name for f in dataclasses.fields(Settings)}
    extensions = state.extensions
    extension_names = {c.name for section in (extensions.settings_sections() if extensions is not None else [])
                       for c in section.controls}
    known = {k: v for k, v in values.items() if k in names}
    for_extensions = {k: v for k, v in values.items() if k in extension_names and k not in names}
    stored = {k: v for k, v in values.items() if k not in names and k not in for_extensions}
    unknown = sorted(k for k in stored if k not in a1111_options.DEFAULTS and k not in state.settings.extra)
    if unknown:
        raise ApiError(400, unknown[0], f"unknown setting {unknown[0]!r} (neither this project's nor A1111's)")
    for key in sorted(stored.keys() & a1111_options.DEFAULTS.keys()):
        try:
            a1111_options.check_value(key, stored[key])
        except ValueError as e:
            raise ApiError(400, key, str(e)) from None
    try:
        state.settings.checked(known)
    except ValueError as e:
        raise ApiError(400, "options", str(e)) from None
    checkpoint = known.get("sd_model_checkpoint")
    info = None
    if checkpoint:
        info = state.checkpoints.find(checkpoint)
        if info is None:
            raise ApiError(400, "sd_model_checkpoint", f"checkpoint not found: {checkpoint!r}")
        known["sd_model_checkpoint"] = info.filename
    vae = known.get("sd_vae")
    if vae is not None and vae not in state.vaes.choices():
        raise ApiError(400, "sd_vae", f"VAE not found: {vae!r}; valid: {', '.join(state.vaes.choices())}")

    def switch():
        if info is not None:
            state.models.load(info)
        if vae is not None:
            state.models.set_vae(vae)
        state.settings.update(known)

    try:
        if info is not None or vae is not None:
            state.queue.run_exclusive(switch, "options")
        else:
            state.settings.update(known)
    except ModelFileError as e:
        raise ApiError(400, "sd_model_checkpoint" if info is not None else "sd_vae", str(e)) from None
    except ValueError as e:  # a folder refused by the store's own check (the stored values changed meanwhile)
        raise ApiError(400, "options", str(e)) from None
    try:
        if for_extensions:
            extensions.set_options(for_extensions)
        no_effect = state.settings.store_unimplemented(stored) if stored else []
    except ValueError as e:
        raise ApiError(400, "options", str(e)) from None
    no_effect = [k for k in no_effect if k not in a1111_options.READ_HERE]
    return {"updated": sorted([*known, *for_extensions]), "no_effect": no_effect}


# --- listings ----------------------------------------------------------------------------------------------------

def _control_arg(control) -> dict:
    return {"label": control.label, "value": control.default, "minimum": control.minimum,
            "maximum": control.maximum, "step": control.step, "choices": [str(c) for c in control.choices] or None}


def script_infos(state) -> list[dict]:
    out = []
    for kind in ("txt2img", "img2img"):
        for script in scripts.scripts_for(state, kind):
            out.append({"name": script.title.lower(), "is_alwayson": bool(script.alwayson),
                        "is_img2img": kind == "img2img", "args": [_control_arg(c) for c in script.controls(kind)]})
    return out


def extension_items(state) -> list[dict]:
    extensions = getattr(state, "extensions", None)
    if extensions is None:
        return []
    items = getattr(extensions, "items", extensions)
    items = items() if callable(items) else items
    items = items.values() if isinstance(items, dict) else items
    return [{"name": str(getattr(e, "name", "")), "version": str(getattr(e, "version", "") or ""),
             "enabled": bool(getattr(e, "enabled", True)), "remote": "", "branch": "", "commit_hash": "",
             "commit_date": 0} for e in items]


def embedding_listing(state) -> dict:
    loaded = {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                     "shape": next(iter(e.dims.values()), 0), "vectors": e.vector_count}
              for name, e in state.networks.embeddings().items()}
    skipped = {str(getattr(p, "stem", p)): str(why) for p, why in state.networks.embedding_errors.items()}
    return {"loaded": loaded, "skipped": skipped}


def memory_info() -> dict:
    import psutil

    vm = psutil.virtual_memory()
    ram = {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}
    try:
        import torch

        if not torch.cuda.is_available():
            return {"ram": ram, "cuda": {"error": "CUDA is not available"}}
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()

        def stat(name: str) -> dict:
            return {when: stats.get(f"{name}_bytes.all.{when}", 0) for when in ("current", "peak")}

        return {"ram": ram, "cuda": {"system": {"free": free, "used": total - free, "total": total},
                                     "active": stat("active"), "allocated": stat("allocated"),
                                     "reserved": stat("reserved")}}
    except Exception as e:  # noqa: BLE001 - memory reporting must not fail the request
        return {"ram": ram, "cuda": {"error": str(e)}}


def cmd_flags(state) -> dict:
    """The launch options (A1111's cmd-flags), credentials masked."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)

    flags = plain(state.options)
    server = flags.pop("server", {})
    for name in _SECRET_FLAGS:
        if server.get(name):
            server[name] = "***"
    computed = {"unet_precision": dtype_name(state.plan.dtype), "vae_precision": dtype_name(state.plan.vae_dtype)}
    return {**flags, **server, **computed}  # computed: what --precision/--no-half chose on this machine


def png_info(state, data: str) -> dict:
    image = decode_image(data, "image", state.settings.current.limit_upload_pixels)
    text = read_infotext(image) or ""
    items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, (str, int, float))
             and k != PNG_INFOTEXT_KEY}
    return {"info": text, "items": items, "parameters": infotext_mod.parse_infotext(text) if text else {}}


# --- the router --------------------------------------------------------------------------------------------------

def build_router(state) -> APIRouter:
    """All ``/sdapi/v1`` routes over ``state`` (an :class:`~modules.app_state.AppState`)."""
    info = state.models.current_info
    if not state.settings.current.sd_model_checkpoint and info is not None:
        # the baseline that requests without their own choice run on (A1111 always keeps this setting)
        state.settings.update({"sd_model_checkpoint": info.filename})
    router = APIRouter(prefix=PREFIX, route_class=ApiRoute, tags=["sdapi"],
                       responses={400: {"model": m.ErrorResponse}, 422: {"model": m.ErrorResponse}})
    preview = _PreviewCache()

    @router.post("/txt2img", response_model=m.GenerationResponse)
    def txt2img(req: m.Txt2ImgRequest):
        return generate(state, req)

    @router.post("/img2img", response_model=m.GenerationResponse)
    def img2img(req: m.Img2ImgRequest):
        return generate(state, req)

    @router.get("/progress", response_model=m.ProgressResponse)
    async def progress(skip_current_image: bool = False):
        return progress_of(state, preview, skip_current_image)

    @router.post("/interrupt")
    async def interrupt():
        job = state.queue.current
        if job is not None:
            job.interrupt()
        return {}

    @router.post("/skip")
    async def skip():
        job = state.queue.current
        if job is not None:
            job.progress.skip()
        return {}

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        return current_options(state)

    @router.post("/options")
    def post_options(values: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return set_options(state, values)

    @router.get("/cmd-flags")
    def get_cmd_flags() -> dict[str, Any]:
        return cmd_flags(state)

    @router.get("/sd-models", response_model=list[m.SDModelItem])
    def sd_models():
        cat = state.checkpoints
        return [{"title": cat.title(i), "model_name": i.model_name, "hash": cat.short_hash(i, compute=False),
                 "sha256": cat.sha256(i, compute=False), "filename": str(i.path), "config": None} for i in cat.items()]

    @router.get("/sd-vae", response_model=list[m.SDVaeItem])
    def sd_vae():
        return [{"model_name": v.name, "filename": str(v.path)} for v in state.vaes.items()]

    @router.get("/loras", response_model=list[m.LoraItem])
    def loras():
        return [{"name": i.name, "alias": i.alias, "path": str(i.path), "metadata": api_metadata(i.metadata)}
                for i in state.networks.loras.items]

    @router.get("/embeddings", response_model=m.EmbeddingsResponse)
    def embeddings():
        return embedding_listing(state)

    @router.get("/samplers", response_model=list[m.SamplerItem])
    def samplers():
        return [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in registry.SAMPLERS]

    @router.get("/schedulers", response_model=list[m.SchedulerItem])
    def schedulers():
        return [{"name": s.name, "label": s.label, "aliases": list(s.aliases) or None} for s in registry.SCHEDULES]

    @router.get("/upscalers", response_model=list[m.UpscalerItem])
    def upscalers():
        return upscaler_items(state)

    @router.get("/realesrgan-models", response_model=list[m.RealesrganItem])
    def realesrgan_models():
        return realesrgan_items(state)

    @router.get("/face-restorers", response_model=list[m.FaceRestorerItem])
    def face_restorers():
        return []  # GFPGAN and CodeFormer need face-detector weights that cannot ship offline

    @router.get("/hypernetworks", response_model=list[m.HypernetworkItem])
    def hypernetworks():
        return []

    @router.post("/extra-single-image", response_model=m.ExtrasSingleImageResponse)
    def post_extra_single_image(req: m.ExtrasSingleImageRequest):
        return extra_single_image(state, req)

    @router.post("/extra-batch-images", response_model=m.ExtrasBatchImagesResponse)
    def post_extra_batch_images(req: m.ExtrasBatchImagesRequest):
        return extra_batch_images(state, req)

    @router.get("/latent-upscale-modes", response_model=list[m.LatentUpscaleModeItem])
    def latent_upscale_modes():
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.get("/prompt-styles", response_model=list[m.PromptStyleItem])
    def prompt_styles():
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in load_styles(state.styles_path).values()]

    @router.get("/scripts", response_model=m.ScriptsList)
    def script_list():
        return {kind: [s.title.lower() for s in scripts.scripts_for(state, kind)] for kind in ("txt2img", "img2img")}

    @router.get("/script-info", response_model=list[m.ScriptInfo])
    def script_info():
        return script_infos(state)

    @router.get("/extensions", response_model=list[m.ExtensionItem])
    def extensions():
        return extension_items(state)

    @router.get("/memory", response_model=m.MemoryResponse)
    def memory():
        return memory_info()

    @router.post("/png-info", response_model=m.PngInfoResponse)
    def post_png_info(req: m.PngInfoRequest):
        return png_info(state, req.image)

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints():
        state.checkpoints.refresh()
        return {}

    @router.post("/refresh-vae")
    def refresh_vae():
        state.vaes.refresh()
        return {}

    @router.post("/refresh-loras")
    def refresh_loras():
        state.networks.loras.refresh()
        return {}

    @router.post("/refresh-upscalers")
    def refresh_upscalers():
        state.upscalers.catalog.refresh()
        return {}

    @router.post("/refresh-embeddings")
    def refresh_embeddings():
        state.networks.refresh()
        return {}

    @router.post("/unload-checkpoint")
    def unload_checkpoint():
        state.queue.run_exclusive(state.models.unload, "unload-checkpoint")
        return {}

    @router.post("/reload-checkpoint")
    def reload_checkpoint():
        def reload():
            if state.models.current is not None:
                state.models.reload()
            elif (name := _pinned_checkpoint(state)) is not None:
                state.models.load(name)
            else:
                raise ModelFileError("no checkpoint found")

        try:
            state.queue.run_exclusive(reload, "reload-checkpoint")
        except ModelFileError as e:
            raise ApiError(400, "sd_model_checkpoint", str(e)) from None
        return {}

    from .training_routes import add_training_routes  # it imports this module's ApiError

    add_training_routes(router, state)
    from .workers_routes import add_workers_routes

    add_workers_routes(router, state)
    return router

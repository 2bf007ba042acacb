"""Hires. fix (A1111 semantics) written only against the public script and hook API.

The first pass runs as usual. After each batch is decoded (``AFTER_DECODE``) every image gets a second pass at
the target size through ``run_job``: from the first pass's final latents upscaled in latent space (the Latent
modes; the latents are the sampler's last estimate, read in ``AFTER_CFG``), or from the decoded image upscaled in
pixels as img2img: by any of the app's upscalers (``state.upscalers``: None, Lanczos, Nearest and the model files of
``models/ESRGAN`` & co., run in tiles of the ``ESRGAN_tile`` setting). The second pass's images replace the first's,
and the first job keeps, saves and describes them ("Hires upscale", "Hires steps", "Hires upscaler", "Denoising
strength", … in the infotext; "Size" stays the first pass's size, as in A1111). The job's per-request UNet hooks
of other scripts (``BEFORE_UNET``, ``UNET_CALL``, ``AFTER_UNET``: e.g. ControlNet units) run in the second pass
too; their calls carry the second pass's params, which tells them apart. The second pass's steps count in the job's progress ("Hires pass k/n").
"""
from __future__ import annotations

import dataclasses

import torch

from modules.hooks import HookPoint
from modules.processing.image_ops import LATENT_UPSCALE_MODES, latent_upscale
from modules.processing.params import Img2ImgParams, Txt2ImgParams
from modules.remote_limits import PassSize
from modules.sampling.registry import SAMPLERS, SCHEDULES, resolve
from modules.sampling.schedules import img2img_sigmas
from modules.scripts import Control, Script, XyzAxis
from modules.upscaling.upscale import Tiling

TITLE = "Hires fix"
SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER = "Use same checkpoint", "Use same sampler", "Use same scheduler"
DEFAULT_DENOISING = 0.7
UNET_HOOK_POINTS = (HookPoint.BEFORE_UNET, HookPoint.UNET_CALL, HookPoint.AFTER_UNET)


def upscaler_choices(state) -> tuple[str, ...]:
    """The Upscaler dropdown, as A1111's: the latent modes, then the app's upscalers (None, Lanczos, Nearest, the
    usable model files)."""
    return (*LATENT_UPSCALE_MODES, *state.upscalers.names())


class _Stopped(Exception):
    """The job was interrupted while a model upscaled its image."""


def target_size(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> tuple[int, int, int, int]:
    """(final w, h, cover w, h) as A1111 computes them: ``scale`` when no resize is given; one resize side keeps
    the aspect ratio; both sides: upscale to cover (cover w, h), then crop the centre. Multiples of 8, floored."""
    if resize_x <= 0 and resize_y <= 0:
        w, h = int(width * scale), int(height * scale)
        cover = (w, h)
    elif resize_y <= 0:
        w, h = resize_x, resize_x * height // width
        cover = (w, h)
    elif resize_x <= 0:
        w, h = resize_y * width // height, resize_y
        cover = (w, h)
    else:
        w, h = resize_x, resize_y
        if width / height < w / h:
            cover = (w, w * height // width)
        else:
            cover = (h * width // height, h)
    w, h = w // 8 * 8, h // 8 * 8
    return w, h, max(w, cover[0] // 8 * 8), max(h, cover[1] // 8 * 8)


def _crop_centre(latents, h: int, w: int):
    top, left = (latents.shape[-2] - h) // 2, (latents.shape[-1] - w) // 2
    return latents[..., top:top + h, left:left + w]


def second_pass_steps(steps: int, args: dict, settings) -> int:
    """The sampling steps one image's second pass of ``steps`` steps runs: the tail of its schedule that the
    denoising strength keeps, as img2img slices it (all of them for a pixel upscaler with "img2img_fix_steps")."""
    if args["hr_upscaler"] not in LATENT_UPSCALE_MODES and settings.img2img_fix_steps:
        return steps
    return len(img2img_sigmas(torch.zeros(steps + 1), args["denoising_strength"])) - 1


def hires_args_from_request(enable_hr: bool = False, hr_scale: float = 2.0, hr_upscaler: str | None = None,
                            hr_second_pass_steps: int = 0, hr_resize_x: int = 0, hr_resize_y: int = 0,
                            denoising_strength: float | None = None, hr_sampler_name: str | None = None,
                            hr_scheduler: str | None = None, hr_prompt: str = "", hr_negative_prompt: str = "",
                            hr_checkpoint_name: str | None = None) -> dict | None:
    """The script's named arguments from A1111's txt2img request fields; None when ``enable_hr`` is off."""
    if not enable_hr:
        return None
    if hr_sampler_name and hr_sampler_name not in {s.name for s in SAMPLERS} | {SAME_SAMPLER}:
        choice = resolve(hr_sampler_name, hr_scheduler or "Automatic")  # old combined names, aliases
        hr_sampler_name, hr_scheduler = choice.sampler.name, hr_scheduler or choice.infotext_schedule
    return {
        "enable": True, "hr_scale": float(hr_scale or 2.0), "hr_upscaler": hr_upscaler or "Latent",
        "hr_second_pass_steps": int(hr_second_pass_steps or 0), "hr_resize_x": int(hr_resize_x or 0),
        "hr_resize_y": int(hr_resize_y or 0),
        "denoising_strength": DEFAULT_DENOISING if denoising_strength is None else float(denoising_strength),
        "hr_sampler_name": hr_sampler_name or SAME_SAMPLER, "hr_scheduler": hr_scheduler or SAME_SCHEDULER,
        "hr_prompt": hr_prompt or "", "hr_negative_prompt": hr_negative_prompt or "",
        "hr_checkpoint_name": hr_checkpoint_name or SAME_CHECKPOINT,
    }


@dataclasses.dataclass
class _Pass:
    """One job's hires settings, its per-request hooks and the latents the first pass ended with."""

    args: dict
    request_hooks: object  # the job's ScriptHooks: its UNet hooks (UNET_HOOK_POINTS) run in the second pass too
    width: int = 0
    height: int = 0
    cover: tuple[int, int] = (0, 0)
    steps: int = 0  # the sampling steps of one image's second pass
    tiling: Tiling = dataclasses.field(default_factory=Tiling)  # model upscalers' tiles (ESRGAN_tile settings)
    images: int = 0  # images given a second pass so far
    last_denoised: object = None
    token_merging: float = 0.0  # the second pass's ratio: token_merging_ratio_hr, else token_merging_ratio


class HiresFix(Script):
    title = TITLE
    alwayson = True
    kinds = ("txt2img",)

    def __init__(self, state):
        self.state = state
        self.checkpoints = state.checkpoints

    def controls(self, kind: str) -> list[Control]:
        self.checkpoints.refresh()  # a checkpoint or upscaler added since the last request is offered at once
        self.state.upscalers.catalog.refresh()
        return [
            Control("enable", "checkbox", "Hires. fix", False, switch=True),
            Control("hr_upscaler", "dropdown", "Upscaler", "Latent", choices=upscaler_choices(self.state)),
            Control("hr_second_pass_steps", "slider", "Hires steps", 0, minimum=0, maximum=150, step=1,
                    tooltip="0: the same number of steps as the first pass"),
            Control("denoising_strength", "slider", "Denoising strength", DEFAULT_DENOISING, minimum=0, maximum=1,
                    step=0.01),
            Control("hr_scale", "slider", "Upscale by", 2.0, minimum=1, maximum=4, step=0.05),
            Control("hr_resize_x", "slider", "Resize width to", 0, minimum=0, maximum=2048, step=8),
            Control("hr_resize_y", "slider", "Resize height to", 0, minimum=0, maximum=2048, step=8),
            Control("hr_checkpoint_name", "dropdown", "Hires checkpoint", SAME_CHECKPOINT,
                    choices=(SAME_CHECKPOINT, *(i.filename for i in self.checkpoints.items()))),
            Control("hr_sampler_name", "dropdown", "Hires sampling method", SAME_SAMPLER,
                    choices=(SAME_SAMPLER, *(s.name for s in SAMPLERS))),
            Control("hr_scheduler", "dropdown", "Hires schedule type", SAME_SCHEDULER,
                    choices=(SAME_SCHEDULER, *(s.label for s in SCHEDULES))),
            Control("hr_prompt", "text", "Hires prompt", ""),
            Control("hr_negative_prompt", "text", "Hires negative prompt", ""),
        ]

    def args_from_request(self, *fields, **named) -> dict | None:
        """:func:`hires_args_from_request`, with the checkpoint named as the dropdown lists it (A1111 clients may
        send its title, model name or hash)."""
        args = hires_args_from_request(*fields, **named)
        if args is not None:
            args["hr_checkpoint_name"] = self._checkpoint_choice(args["hr_checkpoint_name"])
        return args

    def _checkpoint_choice(self, name: str) -> str:
        """The dropdown's entry for a checkpoint found by any of its names; ``name`` itself when none is found."""
        info = self.checkpoints.find(name)
        return info.filename if info is not None else name

    def describe(self, kind: str, args: dict, width: int, height: int) -> str:
        w, h, *_ = target_size(width, height, float(args["hr_scale"]), int(args["hr_resize_x"]),
                               int(args["hr_resize_y"]))
        return f"Hires fix: from {width}×{height} to {w}×{h}"

    def extra_passes(self, params, args: dict) -> list[PassSize]:
        """The second pass at the target size, with the steps asked for (for the remote limits)."""
        if not args["enable"]:
            return []
        resized = args["hr_resize_x"] > 0 or args["hr_resize_y"] > 0
        w, h, *_ = target_size(params.width, params.height, args["hr_scale"], args["hr_resize_x"], args["hr_resize_y"])
        steps_field = "hr_second_pass_steps" if args["hr_second_pass_steps"] else "steps"
        return [PassSize(w, h, args["hr_second_pass_steps"] or params.steps,
                         "hr_resize_x" if resized else "hr_scale", steps_field)]

    def setup(self, state, params, args: dict, hooks) -> None:
        if not args["enable"]:
            return
        checkpoint = args["hr_checkpoint_name"]
        if checkpoint != SAME_CHECKPOINT and state.models.catalog.find(checkpoint) is None:
            raise ValueError(f"{TITLE}: hires checkpoint {checkpoint!r} not found")
        if args["hr_sampler_name"] != SAME_SAMPLER or args["hr_scheduler"] != SAME_SCHEDULER:
            resolve(self._sampler(params, args), self._scheduler(params, args))
        job = _Pass(args, hooks)
        progress = getattr(hooks, "progress", None)
        owner = self.extension or TITLE

        def start(event) -> None:
            p = event.params
            job.width, job.height, *cover = target_size(p.width, p.height, args["hr_scale"], args["hr_resize_x"],
                                                        args["hr_resize_y"])
            job.cover = tuple(cover)
            job.steps = second_pass_steps(args["hr_second_pass_steps"] or p.steps, args, event.settings)
            job.tiling = Tiling(event.settings.ESRGAN_tile, event.settings.ESRGAN_tile_overlap)
            job.token_merging = event.settings.token_merging_ratio_hr or event.settings.token_merging_ratio
            if progress is not None:
                progress.add_batch_steps(job.steps * p.batch_size)

        def remember(event) -> None:
            job.last_denoised = event.denoised

        def second_pass(event) -> None:
            if progress is not None and progress.control.interrupted:
                return
            event.images = [self._upscale_one(state, params, job, event, i, progress) for i in range(len(event.images))]

        hooks.register(HookPoint.JOB_START, start, owner)
        if args["hr_upscaler"] in LATENT_UPSCALE_MODES:
            hooks.register(HookPoint.AFTER_CFG, remember, owner)
        hooks.register(HookPoint.AFTER_DECODE, second_pass, owner, order=-100)
        hooks.register(HookPoint.INFOTEXT, lambda e: e.fields.update(
            self._infotext(args), **{"Token merging ratio hr": job.token_merging or None}), owner)

    @staticmethod
    def _sampler(params, args) -> str:
        return params.sampler_name if args["hr_sampler_name"] == SAME_SAMPLER else args["hr_sampler_name"]

    @staticmethod
    def _scheduler(params, args) -> str:
        return params.scheduler if args["hr_scheduler"] == SAME_SCHEDULER else args["hr_scheduler"]

    def _second_params(self, params, args, cls, **extra):
        """The second pass's request: the first's, at the target size, with the hires choices."""
        overrides = dict(params.override_settings)
        if args["hr_checkpoint_name"] != SAME_CHECKPOINT:
            overrides["sd_model_checkpoint"] = args["hr_checkpoint_name"]
        return cls(
            prompt=args["hr_prompt"] or params.prompt,
            negative_prompt=args["hr_negative_prompt"] or params.negative_prompt,
            styles=list(params.styles), sampler_name=self._sampler(params, args),
            scheduler=self._scheduler(params, args), steps=args["hr_second_pass_steps"] or params.steps,
            cfg_scale=params.cfg_scale, batch_size=1, n_iter=1, clip_skip=params.clip_skip, eta=params.eta,
            s_min_uncond=params.s_min_uncond, override_settings=overrides, do_not_save_samples=True,
            do_not_save_grid=True, **extra)

    def _upscale_one(self, state, params, job: _Pass, event, i: int, progress):
        from modules.processing.runner import run_job

        args, seed = job.args, event.seeds[i]
        job.images += 1
        child = progress.nested(self._pass_text(job, params)) if progress is not None else None
        before_model = state.models.current_info
        hooks = type(state.hooks)()
        for hook in job.request_hooks.hooks:  # the job's own UNet hooks (e.g. ControlNet units) act here too
            if hook.point in UNET_HOOK_POINTS and hook.owner != (self.extension or TITLE):
                hooks.register(hook.point, hook.fn, hook.owner, hook.order)
        cover_w, cover_h = job.cover
        if args["hr_upscaler"] in LATENT_UPSCALE_MODES:
            latent = latent_upscale(job.last_denoised[i:i + 1].float(), cover_w, cover_h, args["hr_upscaler"])
            latent = _crop_centre(latent, job.height // 8, job.width // 8)
            strength = args["denoising_strength"]

            def start_from_upscaled(before) -> None:
                noise = before.latents / before.sigmas[0]
                before.sigmas = img2img_sigmas(before.sigmas, strength)
                before.latents = latent.to(noise) + noise * before.sigmas[0]

            hooks.register(HookPoint.BEFORE_SAMPLING, start_from_upscaled, self.extension or TITLE)
            second = self._second_params(params, args, Txt2ImgParams, seed=seed, width=job.width, height=job.height)
        else:
            try:
                image = self._upscale_pixels(state, event.images[i], job, progress)
            except _Stopped:
                return event.images[i]
            left, top = (cover_w - job.width) // 2, (cover_h - job.height) // 2
            image = image.crop((left, top, left + job.width, top + job.height))
            second = self._second_params(params, args, Img2ImgParams, seed=seed, width=job.width, height=job.height,
                                         init_images=[image], denoising_strength=args["denoising_strength"])
        second.override_settings["token_merging_ratio"] = job.token_merging
        try:
            result = run_job(state, second, child, extra_hooks=hooks)
        finally:
            if before_model is not None and state.models.current_info != before_model:
                state.models.load(before_model)
        return result.images[0] if result.images else event.images[i]

    @staticmethod
    def _upscale_pixels(state, image, job: _Pass, progress):
        """``image`` upscaled to the cover size by a pixel or model upscaler; a model's tiles show in the progress
        text, and an interrupt stops it (:class:`_Stopped`)."""
        def on_tile(done: int, total: int) -> None:
            if progress is None:
                return
            if progress.control.interrupted:
                raise _Stopped()
            progress.textinfo = f"Hires upscale: {job.args['hr_upscaler']}, tile {done}/{total}"

        return state.upscalers.upscale(image, job.args["hr_upscaler"], job.cover, job.tiling, on_tile)

    @staticmethod
    def _pass_text(job: _Pass, params) -> str:
        """The job's progress text during an image's second pass: "Hires pass {step}/n", and which image."""
        count = params.batch_size * params.n_iter
        text = f"Hires pass {{step}}/{job.steps}"
        return f"{text}, image {job.images}/{count}" if count > 1 else text

    def values_from_infotext(self, fields: dict) -> dict:
        """Enabled, with the infotext's hires settings, when it has "Hires upscale" or a "Hires resize" (else
        disabled, as A1111 pastes it; the parser fills "Hires resize-1/-2" with 0 when absent)."""
        if "Hires upscale" not in fields and not (fields.get("Hires resize-1") or fields.get("Hires resize-2")):
            return {"enable": False}
        out = {"enable": True, "hr_scale": fields.get("Hires upscale", 2.0),
               "hr_resize_x": fields.get("Hires resize-1", 0), "hr_resize_y": fields.get("Hires resize-2", 0),
               "hr_second_pass_steps": fields.get("Hires steps", 0)}
        for key, name in (("Denoising strength", "denoising_strength"), ("Hires upscaler", "hr_upscaler"),
                          ("Hires checkpoint", "hr_checkpoint_name"), ("Hires sampler", "hr_sampler_name"),
                          ("Hires schedule type", "hr_scheduler"), ("Hires prompt", "hr_prompt"),
                          ("Hires negative prompt", "hr_negative_prompt")):
            if key in fields:
                out[name] = fields[key]
        if "hr_checkpoint_name" in out:
            out["hr_checkpoint_name"] = self._checkpoint_choice(str(out["hr_checkpoint_name"]))
        return out

    @staticmethod
    def _infotext(args) -> dict:
        resized = args["hr_resize_x"] > 0 or args["hr_resize_y"] > 0
        checkpoint = args["hr_checkpoint_name"]
        return {
            "Denoising strength": _number(args["denoising_strength"]),
            "Hires upscale": None if resized else _number(args["hr_scale"]),
            "Hires resize": f"{args['hr_resize_x']}x{args['hr_resize_y']}" if resized else None,
            "Hires steps": args["hr_second_pass_steps"] or None,
            "Hires upscaler": args["hr_upscaler"],
            "Hires checkpoint": None if checkpoint == SAME_CHECKPOINT else checkpoint,
            "Hires sampler": args["hr_sampler_name"] if args["hr_sampler_name"] != SAME_SAMPLER else None,
            "Hires schedule type": args["hr_scheduler"] if args["hr_scheduler"] != SAME_SCHEDULER else None,
            "Hires prompt": args["hr_prompt"] or None,
            "Hires negative prompt": args["hr_negative_prompt"] or None,
        }


def _number(value: float):
    """2.0 → 2 (A1111 writes whole numbers without a decimal point)."""
    return int(value) if float(value).is_integer() else value


def _set_hires_arg(name: str):
    def apply(cell, value) -> None:
        cell.alwayson.setdefault(TITLE, {"args": {}})["args"][name] = value
    return apply


def _upscaler_parser(state):
    def parse(text: str) -> str:
        choices = upscaler_choices(state)
        match = next((u for u in choices if u.lower() == text.strip().lower()), None)
        if match is None:
            raise ValueError(f"unknown upscaler {text!r}; choose from {', '.join(choices)}")
        return match
    return parse


def register(api) -> None:
    """The script (its dropdowns list the app's checkpoints and upscalers) and X/Y/Z plot axes for the hires
    settings (the plot lists what extensions contribute)."""
    api.add_script(HiresFix(api.state))
    api.contribute("xyz_axis", XyzAxis("Hires steps", int, _set_hires_arg("hr_second_pass_steps"), ("txt2img",),
                                       numeric=True))
    api.contribute("xyz_axis", XyzAxis("Hires upscaler", _upscaler_parser(api.state), _set_hires_arg("hr_upscaler"),
                                       ("txt2img",), choices=lambda state: list(upscaler_choices(state))))
    api.contribute("xyz_axis", XyzAxis("Denoising", float, _set_hires_arg("denoising_strength"), ("txt2img",),
                                       numeric=True))

"""Running a txt2img or img2img job: the one place where a request becomes images.

Order of work: validate → settings with the request's overrides → model/VAE the settings ask for → styles →
seeds → for each batch: conditioning, noise, (img2img: encode, mask), sampling through the CFG denoiser with the
hooks, decode, overlay, infotext, save. Interrupt keeps the images made so far (the batch in progress is decoded
as it stands, as A1111 does); skip ends the current batch the same way and goes on with the next.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import infotext as infotext_mod
from ..devices import precision_label
from ..hooks import (
    AfterDecode,
    BeforeSampling,
    BeforeSave,
    HookPoint,
    HookRegistry,
    InfotextFields,
    InpaintComposite,
    JobEnd,
    JobStart,
)
from ..models.safetensors_file import ModelFileError
from ..models.spec import Family
from ..prompts import extract_network_tags
from ..prompts.styles import apply_styles, load_styles
from ..sampling import (
    DiscreteSchedule,
    NoiseSettings,
    ScheduleParams,
    SeededNoise,
    batch_seeds,
    make_sigmas,
    resolve,
    resolve_seed,
)
from ..sampling.schedules import img2img_sigmas
from ..text_encoding import PromptEncoder
from . import image_ops, outputs
from .conditioning import build_conds
from .denoiser import CFGDenoiser, InpaintBlend, UncondSkip
from .finite import NonFiniteOutput, check_finite
from .latent_preview import full_decode
from .params import GenerationParams, Img2ImgParams, ParamError, steps_per_batch
from .progress import JobProgress
from .refiner import EncodingChoices, RefinerPlan, RefinerSwitch, plan_refiner
from .saving import UnsavedImages
from .tiling import CircularPadding
from .token_merging import TokenMerging

log = logging.getLogger(__name__)
VERSION = "sdwebui-0.1.0"
FAMILY_SCHEDULE = {Family.SD1: "sd1", Family.SD2: "sd2", Family.SDXL: "sdxl", Family.SDXL_REFINER: "sdxl"}


@dataclass
class JobResult:
    images: list = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    grid: object = None
    grid_path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    info: dict = field(default_factory=dict)


@dataclass
class _Job:
    """Everything resolved for one job, shared by the batches."""

    params: GenerationParams
    settings: object
    model: object
    choice: object
    schedule: DiscreteSchedule
    encoder: PromptEncoder
    hooks: object
    progress: JobProgress
    result: JobResult
    extra_fields: dict
    unsaved: UnsavedImages = field(default_factory=UnsavedImages)
    refiner: RefinerPlan | None = None
    switch: RefinerSwitch | None = None  # the batch's refiner switch until the base model is back
    padding: CircularPadding = field(default_factory=lambda: CircularPadding(False))  # tiling
    tags: list = field(default_factory=list)  # the prompt's network tags, patched into the model
    clip_skip: int = 1


def run_job(state, params: GenerationParams, progress: JobProgress | None = None,
            extra_hooks: HookRegistry | None = None) -> JobResult:
    """Run a job on ``state`` (an :class:`~modules.app_state.AppState`); the caller serialises jobs."""
    progress = progress or JobProgress()
    result = JobResult(warnings=params.validate())
    try:
        settings = state.settings.current.with_overrides(params.override_settings)
    except ValueError as e:
        raise ParamError("override_settings", str(e)) from None
    try:
        choice = resolve(params.sampler_name, params.scheduler)
    except ValueError as e:
        raise ParamError("sampler_name", str(e)) from None
    model = _select_model(state, settings)
    refiner = plan_refiner(state, params)
    hooks = state.hooks.merged(extra_hooks).for_job(result.warnings)

    styles = load_styles(state.styles_path) if params.styles else {}
    missing = [s for s in params.styles if s not in styles]
    if missing:
        result.warnings.append(f"unknown styles ignored: {', '.join(missing)}")
    prompt, negative = apply_styles(params.prompt, params.negative_prompt, [styles[s] for s in params.styles if s in styles])

    count = params.batch_size * params.n_iter
    seed = resolve_seed(int(params.seed))
    subseed = resolve_seed(int(params.subseed))
    result.seeds, result.subseeds = batch_seeds(seed, subseed, float(params.subseed_strength), count)
    result.prompts, result.negative_prompts = [prompt] * count, [negative] * count

    clip_skip = int(params.clip_skip or settings.CLIP_stop_at_last_layers)
    _, tags = extract_network_tags(prompt)
    extra_fields: dict = {}
    embeddings = state.networks.activate(model, tags, result.warnings, extra_fields) if state.networks else {}
    merging_ratio = _token_merging_ratio(params, settings)
    if merging_ratio:
        extra_fields["Token merging ratio"] = merging_ratio
    encoder = PromptEncoder(model, clip_skip, settings.emphasis, embeddings, offloader=state.models.offloader)
    schedule = DiscreteSchedule.from_params(ScheduleParams(
        prediction_type="v_prediction" if model.spec.prediction == "v" else "epsilon",
        family=FAMILY_SCHEDULE[model.family]))
    job = _Job(params, settings, model, choice, schedule, encoder, hooks, progress, result, extra_fields,
               refiner=refiner, tags=tags, clip_skip=clip_skip, unsaved=UnsavedImages(settings.save_txt))
    batch_steps = steps_per_batch(params, settings)
    progress.begin(batch_steps, params.n_iter)  # before JOB_START: its hooks may add a pass's steps
    hooks.run(HookPoint.JOB_START, JobStart(params, settings, model))

    from tqdm import tqdm

    bar = tqdm(total=batch_steps * params.n_iter, desc=params.kind, leave=False)
    try:
        with torch.inference_mode(), CircularPadding(params.tiling) as job.padding, \
                TokenMerging(merging_ratio) as merging:
            job.padding.cover(model)
            merging.cover(model)
            try:
                for it in range(params.n_iter):
                    if progress.control.interrupted:
                        result.interrupted = True
                        break
                    progress.control.skipped = False
                    progress.start_batch(it)
                    lo = it * params.batch_size
                    _run_batch(state, job, it, lo, lo + params.batch_size, bar)
            finally:
                _back_to_base(state, job)  # also when a batch failed: the job ends with its own model
    finally:
        bar.close()
    result.interrupted = result.interrupted or progress.control.interrupted
    if len(result.images) > 1 and settings.grid_save and not params.do_not_save_grid:
        result.grid = outputs.make_grid(result.images)
        if settings.samples_save:
            folder = settings.output_dir(f"{params.kind}-grids", state.options.data_dir)
            result.grid_path = job.unsaved.save(result.grid, folder, lambda dated: outputs.next_grid_path(
                dated, settings.grid_format), result.infotexts[0])
    result.warnings.extend(job.unsaved.report())
    state.failures.worked(state.models.current_info)
    result.info = _info(job, clip_skip)
    hooks.run(HookPoint.JOB_END, JobEnd(params, result))
    progress.finish()
    return result


def _select_model(state, settings):
    """The job's model: the one its settings name (a request may override), loaded if needed; "checkpoints to keep
    in RAM" as the job's settings say (it decides whether a refiner or a hires checkpoint replaces the model)."""
    models = state.models
    models.cache_size = max(1, int(settings.sd_checkpoints_limit))
    models.vae_tile_threshold = int(settings.vae_tile_threshold)
    wanted = settings.sd_model_checkpoint
    try:
        if wanted and (models.current_info is None or models.catalog.find(wanted) != models.current_info):
            models.load(wanted)
        elif models.current is None:
            raise ModelFileError("no checkpoint is loaded")
        if settings.sd_vae != models.vae_choice:
            models.set_vae(settings.sd_vae)
    except ModelFileError as e:
        if wanted and (info := models.catalog.find(wanted)) is not None:
            state.failures.failed(info, str(e))
        raise ParamError("sd_model_checkpoint", str(e)) from None
    return models.current


def _token_merging_ratio(params: GenerationParams, settings) -> float:
    """As A1111: img2img's own ratio when set (unless the request overrides ``token_merging_ratio``), else
    ``token_merging_ratio`` (the hires fix pass sets that for its own job)."""
    if isinstance(params, Img2ImgParams) and "token_merging_ratio" not in params.override_settings:
        return float(settings.token_merging_ratio_img2img or settings.token_merging_ratio)
    return float(settings.token_merging_ratio)


def _noise(job: _Job, seeds, subseeds, shape, state) -> SeededNoise:
    p = job.params
    resize = (p.seed_resize_from_w, p.seed_resize_from_h) if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0 else None
    device = state.models.plan.device
    return SeededNoise(NoiseSettings(
        shape=shape, seeds=seeds, subseeds=subseeds, subseed_strength=float(p.subseed_strength), seed_resize_from=resize,
        source="cpu" if job.settings.randn_source == "CPU" else "device", device=device,
        eta_noise_seed_delta=job.settings.eta_noise_seed_delta))


def _uncond_skip(job: _Job) -> UncondSkip:
    """NGMS from the request, else from the settings."""
    p = job.params
    sigma = float(p.s_min_uncond if p.s_min_uncond is not None else job.settings.s_min_uncond)
    return UncondSkip(sigma, job.settings.s_min_uncond_all)


def _eta(job: _Job) -> float | None:
    """The sampler's eta: the request's, else its setting (A1111's eta_ancestral / eta_ddim); None: it has none."""
    default = job.choice.sampler.eta_default
    if default is None:
        return None
    return float(job.params.eta if job.params.eta is not None else getattr(job.settings, default.setting))


def _run_batch(state, job: _Job, iteration: int, lo: int, hi: int, bar) -> None:
    p, model, result, progress = job.params, job.model, job.result, job.progress
    seeds, subseeds = result.seeds[lo:hi], result.subseeds[lo:hi]
    h8, w8 = p.height // 8, p.width // 8
    noise = _noise(job, seeds, subseeds, (4, h8, w8), state)
    conds = build_conds(job.encoder, result.prompts[lo:hi], result.negative_prompts[lo:hi], p.steps)
    empty = job.encoder.encode("")
    sigmas = make_sigmas(job.choice, p.steps, job.schedule)

    image_cond = blend = None
    init = None
    initial = noise.initial()
    if isinstance(p, Img2ImgParams):
        init = _prepare_img2img(state, job, lo, hi, initial)
        if not job.settings.img2img_fix_steps:
            sigmas = img2img_sigmas(sigmas, float(p.denoising_strength))
        else:
            full = make_sigmas(job.choice, max(p.steps, int(p.steps / max(float(p.denoising_strength), 1e-3))), job.schedule)
            sigmas = full[-(p.steps + 1):]
        image_cond = init.image_cond
        if init.latent_mask is not None:
            blend = InpaintBlend(init.latent, 1 - init.latent_mask, 1 - init.soft_mask)
        x = init.latent + initial * sigmas[0] * job.settings.initial_noise_multiplier
    else:
        x = initial * sigmas[0]
        image_cond = _txt2img_image_cond(state, model, len(seeds), h8, w8)

    before = BeforeSampling(p, x, sigmas, seeds, iteration, model)
    job.switch = switch = None if job.refiner is None else RefinerSwitch(state, job.refiner, EncodingChoices(
        job.clip_skip, job.settings.emphasis, p.steps, result.prompts[lo:hi], result.negative_prompts[lo:hi]),
        job.padding)
    job.hooks.run(HookPoint.BEFORE_SAMPLING, before)
    denoiser = CFGDenoiser(model, job.schedule, conds, p.cfg_scale, job.hooks, p, len(before.sigmas) - 1, empty,
                           image_cond, blend, (p.height, p.width), state.models.offloader, _uncond_skip(job),
                           progress.control, switch)
    every = max(1, job.settings.show_progress_every_n_steps)

    def callback(info) -> None:
        denoiser.on_step(info)
        progress.advance(f"Batch {iteration + 1}/{p.n_iter}, step {info.step + 1}/{info.total or '?'}")
        bar.update(1)
        if job.settings.live_previews_enable and (info.step + 1) % every == 0 and progress.wants_preview():
            preview = _preview(state, job.settings.show_progress_type, info.denoised[:1])
            if preview is not None:
                progress.show_preview(preview)

    eta = _eta(job)
    step_noise = noise.brownian(before.sigmas) if job.choice.sampler.brownian_noise else noise
    samples = job.choice.sampler.sample(denoiser, before.latents, before.sigmas, callback=callback,
                                        noise_sampler=step_noise, control=progress.control,
                                        **({} if eta is None else {"eta": eta}))
    if blend is not None:
        total = len(before.sigmas) - 1
        samples = blend.mix(samples, torch.zeros(len(seeds)), total, total, job.hooks, p, final=True)
        composite = InpaintComposite(list(init.masks), init.latent, samples, blend.soft_keep, init.boxes,
                                     [o.size for o in init.originals], (p.width, p.height), p)
        job.hooks.run(HookPoint.INPAINT_COMPOSITE, composite)
        init.masks = composite.masks
    _check_finite(state, samples, "sampling")
    pixels = state.models.decode(samples)
    _check_finite(state, pixels, "decoding")
    _back_to_base(state, job)
    images = image_ops.tensor_to_pils(pixels)
    if init is not None:
        images = [init.finish(img, i) for i, img in enumerate(images)]
    decoded = AfterDecode(images, seeds, p)
    job.hooks.run(HookPoint.AFTER_DECODE, decoded)
    for k, image in enumerate(decoded.images):
        _finish_image(state, job, lo + k, image)


def _back_to_base(state, job: _Job) -> None:
    """After a batch's refiner steps and decoding (with the refiner's VAE, as A1111 decodes with the model loaded
    then): the base model is current again; reloaded from disk, it gets the prompt's LoRAs and a new prompt encoder
    for the next batches."""
    switch, job.switch = job.switch, None
    if switch is None:
        return
    if switch.engaged:
        job.extra_fields.update(job.refiner.infotext(state.models.catalog))
    model = switch.restore()
    if model is job.model:
        return
    embeddings = state.networks.activate(model, job.tags, [], {}) if state.networks else {}
    job.model = model
    job.encoder = PromptEncoder(model, job.clip_skip, job.settings.emphasis, embeddings,
                                offloader=state.models.offloader)


def _check_finite(state, values: torch.Tensor, stage: str) -> None:
    """End the job with :class:`NonFiniteOutput` (logged, and counted against the checkpoint) when the result of
    ``stage`` ("sampling" or "decoding") holds NaN/inf."""
    models = state.models
    dtype = models.plan.dtype if stage == "sampling" else models.plan.vae_dtype
    try:
        check_finite(values, stage, models.current_info.filename,
                     models.vae_source.name if models.vae_source else None, dtype != torch.float32)
    except NonFiniteOutput as e:
        log.error("%s", e.message)
        state.failures.failed(models.current_info, e.message)
        raise


def _preview(state, mode: str, latents: torch.Tensor):
    """The live preview of the sampler's estimate (scaled latents [1, 4, h, w]) at the output's size: the VAE's
    decode or the cheap approximation, as ``mode`` (``show_progress_type``) decides; None without a VAE."""
    models = state.models
    if full_decode(mode, latents, models.plan.offload != "none"):
        return image_ops.tensor_to_pils(models.decode(latents))[0]
    previewer = models.latent_previewer()
    return previewer.preview(latents)[0] if previewer is not None else None


def _txt2img_image_cond(state, model, batch: int, h8: int, w8: int):
    """Extra UNet input channels for inpainting (mask 1 + gray image) and instruct-pix2pix (zeros) models."""
    variant = model.spec.variant
    if variant == "base":
        return None
    if variant == "pix2pix":
        return torch.zeros(batch, 4, h8, w8)
    gray = torch.zeros(1, 3, h8 * 8, w8 * 8)
    latent = _encode(state, gray)
    return torch.cat([torch.ones(1, 1, h8, w8), latent], dim=1).expand(batch, -1, -1, -1)


def _encode(state, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] → scaled latents (the distribution's mean: deterministic)."""
    return state.models.encode(pixels)


@dataclass
class _Img2ImgInit:
    latent: torch.Tensor  # [B, 4, h, w]
    latent_mask: torch.Tensor | None  # [B, 1, h, w], 1 = repaint
    soft_mask: torch.Tensor | None  # the same before rounding to 0/1
    image_cond: torch.Tensor | None
    originals: list  # per image: the full-size original (for the overlay)
    masks: list  # per image: the blurred full-size mask (L) or None
    boxes: list  # per image: crop box for "only masked", or None
    size: tuple[int, int]

    def finish(self, generated, i: int):
        """Paste the generated image back so that pixels outside the mask are exactly the original's."""
        mask = self.masks[i]
        if mask is None:
            return generated
        if self.boxes[i] is not None:
            return image_ops.paste_back(self.originals[i], generated, self.boxes[i], mask)
        return image_ops.apply_overlay(self.originals[i], generated, mask)


def _prepare_img2img(state, job: _Job, lo: int, hi: int, initial: torch.Tensor) -> _Img2ImgInit:
    p: Img2ImgParams = job.params
    w, h = p.width, p.height
    latents, masks_latent, soft_masks, conds, originals, masks, boxes = [], [], [], [], [], [], []
    for i in range(lo, hi):
        source = p.init_images[i % len(p.init_images)].convert("RGB")
        mask = None
        if p.mask is not None:
            mask = image_ops.prepare_mask(p.mask.resize(source.size), p.mask_blur, bool(p.inpainting_mask_invert))
        box = None
        if mask is not None and p.inpaint_full_res:
            box = image_ops.masked_crop_region(mask, p.inpaint_full_res_padding)
            if box is not None:
                box = image_ops.expand_to_aspect(box, w, h, source.width, source.height)
        if box is not None:
            original, work, work_mask = source, image_ops.resize_image(0, source.crop(box), w, h), mask.crop(box).resize((w, h))
        elif mask is not None:
            work = image_ops.resize_image(p.resize_mode, source, w, h)
            work_mask = image_ops.resize_image(p.resize_mode, mask.convert("RGB"), w, h).convert("L")
            original, mask = work, work_mask
        else:
            work, work_mask, original = image_ops.resize_image(p.resize_mode, source, w, h), None, None
        if work_mask is not None and p.inpainting_fill == 0:
            work = image_ops.fill_masked(work, work_mask)
        if p.resize_mode == 3 and mask is None:
            src = source.resize((source.width // 8 * 8, source.height // 8 * 8))
            latent = image_ops.latent_upscale(_encode(state, image_ops.pil_to_tensor(src)), w, h, "Latent")
        else:
            latent = _encode(state, image_ops.pil_to_tensor(work))
        lm = image_ops.mask_to_latent(work_mask, h // 8, w // 8) if work_mask is not None else None
        soft_masks.append(image_ops.mask_to_latent(work_mask, h // 8, w // 8, binary=False) if lm is not None else None)
        if job.model.spec.variant == "inpaint":
            repaint = lm if lm is not None else torch.ones(1, 1, h // 8, w // 8)
            binary = image_ops.mask_to_latent(work_mask, h, w) if work_mask is not None else torch.ones(1, 1, h, w)
            weight = float(job.settings.inpainting_mask_weight)  # 0: the whole source, 1: the source with a hole
            masked = image_ops.pil_to_tensor(work) * (1 - binary * weight)
            conds.append(torch.cat([repaint, _encode(state, masked)], dim=1))
        elif job.model.spec.variant == "pix2pix":
            conds.append(latent / job.model.vae.config.scaling_factor)
        latents.append(latent)
        masks_latent.append(lm)
        originals.append(original)
        masks.append(mask)
        boxes.append(box)
    latent = torch.cat(latents)
    latent_mask = torch.cat(masks_latent) if masks_latent[0] is not None else None
    if latent_mask is not None and p.inpainting_fill in (2, 3):
        fresh = initial if p.inpainting_fill == 2 else torch.zeros_like(latent)
        latent = latent * (1 - latent_mask) + fresh.to(latent) * latent_mask
    soft_mask = torch.cat(soft_masks) if latent_mask is not None else None
    return _Img2ImgInit(latent, latent_mask, soft_mask, torch.cat(conds) if conds else None, originals, masks, boxes,
                        (h, w))


def _uses_ensd(job: _Job) -> bool:
    """Whether ENSD changed the image: it is set and the sampler draws per-step noise (eta not 0) from the images'
    generators (Brownian-tree noise is seeded by the seeds alone)."""
    eta = _eta(job)  # None: no eta, so per-step noise only if the sampler is stochastic
    sampler = job.choice.sampler
    draws_noise = (sampler.stochastic or eta is not None) and not sampler.brownian_noise
    return bool(job.settings.eta_noise_seed_delta) and draws_noise and eta != 0


def _infotext_params(job: _Job, index: int, clip_skip: int) -> dict:
    p, result = job.params, job.result
    fields: dict = {
        "Steps": p.steps,
        "Sampler": job.choice.sampler.name,
        "Schedule type": job.choice.infotext_schedule,
        "CFG scale": p.cfg_scale,
        "Seed": result.seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": job.extra_fields.get("_model_hash"),
        "Model": job.extra_fields.get("_model_name"),
        "VAE hash": job.extra_fields.get("_vae_hash"),
        "VAE": job.extra_fields.get("_vae_name"),
        "Variation seed": result.subseeds[index] if p.subseed_strength else None,
        "Variation seed strength": p.subseed_strength or None,
        "Seed resize from": f"{p.seed_resize_from_w}x{p.seed_resize_from_h}" if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0 else None,
        "Denoising strength": p.denoising_strength if isinstance(p, Img2ImgParams) else None,
        "Image CFG scale": p.image_cfg_scale if job.model.spec.variant == "pix2pix" and isinstance(p, Img2ImgParams)
        else None,
        "Conditional mask weight": job.settings.inpainting_mask_weight
        if job.model.spec.variant == "inpaint" and isinstance(p, Img2ImgParams) else None,
        "Clip skip": clip_skip if clip_skip > 1 else None,
        "ENSD": job.settings.eta_noise_seed_delta if _uses_ensd(job) else None,
        "RNG": job.settings.randn_source if job.settings.randn_source != "GPU" else None,
        "Tiling": True if p.tiling else None,
    }
    eta, default = _eta(job), job.choice.sampler.eta_default
    if eta is not None and eta != default.unwritten:
        fields[default.infotext_key] = eta
    if isinstance(p, Img2ImgParams) and p.mask is not None:
        fields["Mask blur"] = p.mask_blur
        fields["Inpaint area"] = "Only masked" if p.inpaint_full_res else None
        fields["Masked area padding"] = p.inpaint_full_res_padding if p.inpaint_full_res else None
    if job.settings.emphasis != "Original":
        fields["Emphasis"] = job.settings.emphasis
    skip = _uncond_skip(job)
    if skip.min_sigma:
        fields["NGMS"] = skip.min_sigma
        fields["NGMS all steps"] = skip.every_step or None
    fields.update({k: v for k, v in job.extra_fields.items() if not k.startswith("_")})
    extra = InfotextFields({}, p)
    job.hooks.run(HookPoint.INFOTEXT, extra)
    fields.update(extra.fields)
    fields["Precision"] = precision_label(job.model.unet.dtype, job.model.vae.dtype)
    fields["Version"] = VERSION
    return {k: v for k, v in fields.items() if v is not None}


def _finish_image(state, job: _Job, index: int, image) -> None:
    p, result = job.params, job.result
    clip_skip = int(p.clip_skip or job.settings.CLIP_stop_at_last_layers)
    _model_fields(state, job)
    text = infotext_mod.build_infotext(result.prompts[index], result.negative_prompts[index],
                                       _infotext_params(job, index, clip_skip))
    save = BeforeSave(image, text, index, p)
    job.hooks.run(HookPoint.BEFORE_SAVE, save)
    result.images.append(save.image)
    result.infotexts.append(save.infotext)
    job.progress.images.append(save.image)
    if job.settings.samples_save and not p.do_not_save_samples:
        seed, ext = result.seeds[index], job.settings.samples_format
        path = job.unsaved.save(save.image, job.settings.output_dir(p.kind, state.options.data_dir),
                                lambda folder: outputs.next_image_path(folder, seed, ext), save.infotext)
        if path is not None:
            result.paths.append(path)


def _model_fields(state, job: _Job) -> None:
    """Model and VAE name/hash for the infotext (hashes are computed once and cached on disk)."""
    if "_model_name" in job.extra_fields:
        return
    models = state.models
    info = models.current_info
    job.extra_fields["_model_name"] = info.model_name
    job.extra_fields["_model_hash"] = models.catalog.short_hash(info)
    if models.vae_source is not None:
        job.extra_fields["_vae_name"] = models.vae_source.name
        job.extra_fields["_vae_hash"] = state.hashes.get(models.vae_source)[:8]


def _info(job: _Job, clip_skip: int) -> dict:
    p, r = job.params, job.result
    return {
        "prompt": p.prompt, "all_prompts": r.prompts, "negative_prompt": p.negative_prompt,
        "all_negative_prompts": r.negative_prompts, "seed": r.seeds[0], "all_seeds": r.seeds,
        "subseed": r.subseeds[0], "all_subseeds": r.subseeds, "subseed_strength": p.subseed_strength,
        "width": p.width, "height": p.height, "sampler_name": job.choice.sampler.name,
        "scheduler": job.choice.schedule.label, "cfg_scale": p.cfg_scale, "steps": p.steps,
        "batch_size": p.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": job.extra_fields.get("_model_name"), "sd_model_hash": job.extra_fields.get("_model_hash"),
        "sd_vae_name": job.extra_fields.get("_vae_name"), "sd_vae_hash": job.extra_fields.get("_vae_hash"),
        "seed_resize_from_w": p.seed_resize_from_w, "seed_resize_from_h": p.seed_resize_from_h,
        "denoising_strength": getattr(p, "denoising_strength", None),
        "extra_generation_params": {k: v for k, v in job.extra_fields.items() if not k.startswith("_")},
        "index_of_first_image": 0, "infotexts": r.infotexts, "styles": list(p.styles),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": clip_skip,
        "is_using_inpainting_conditioning": job.model.spec.variant == "inpaint", "version": VERSION,
        "warnings": r.warnings, "interrupted": r.interrupted,
    }


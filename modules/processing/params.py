"""Typed job requests with A1111's field names and defaults (those of its HTTP API), filled by UI, API and scripts.

Sizes that are not multiples of 8 are rounded down to one, with a warning in the job result (A1111's sliders
step by 8 and its API silently floors); sizes, steps and batch outside the limits raise :class:`ParamError`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modules.prompts.network_tags import extract_network_tags

MIN_SIZE, MAX_SIZE = 64, 4096
MAX_STEPS = 500
MAX_BATCH_SIZE = 64
MAX_N_ITER = 1000
MAX_PIXELS_PER_BATCH = 2048 * 2048 * 8
MAX_PROMPT_CHARS = 20_000  # a prompt's text; longer ones cost minutes of tokenising for nothing a model can use
REFINER_SWITCH_AT = 0.8  # A1111's default for "Switch at"
MAX_NETWORK_MULTIPLIER = 100.0  # |weight| of a <lora:…> tag; beyond it the weights overflow to inf


class ParamError(ValueError):
    """A request field with an unusable value; ``field`` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass
class GenerationParams:
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int | None = None  # None: the CLIP_stop_at_last_layers setting
    restore_faces: bool = False
    tiling: bool = False
    override_settings: dict[str, Any] = field(default_factory=dict)
    override_settings_restore_afterwards: bool = True  # accepted for compatibility: overrides never outlive a job
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    s_min_uncond: float | None = None  # NGMS; None: the s_min_uncond setting
    refiner_checkpoint: str | None = None  # None, "" or "None": no refiner; else a checkpoint title or name
    refiner_switch_at: float | None = None  # the fraction of the steps after which the refiner takes over

    kind = "txt2img"

    def validate(self) -> list[str]:
        """Check limits (raises ParamError) and normalise sizes; returns warnings for the user."""
        warnings = []
        _check_texts(self)
        for name in ("width", "height"):
            value = int(getattr(self, name))
            if not MIN_SIZE <= value <= MAX_SIZE:
                raise ParamError(name, f"{value} is outside {MIN_SIZE}..{MAX_SIZE}")
            if value % 8:
                warnings.append(f"{name} {value} is not a multiple of 8; using {value - value % 8}")
                value -= value % 8
            setattr(self, name, value)
        if not 1 <= int(self.steps) <= MAX_STEPS:
            raise ParamError("steps", f"{self.steps} is outside 1..{MAX_STEPS}")
        if not 1 <= int(self.batch_size) <= MAX_BATCH_SIZE:
            raise ParamError("batch_size", f"{self.batch_size} is outside 1..{MAX_BATCH_SIZE}")
        if not 1 <= int(self.n_iter) <= MAX_N_ITER:
            raise ParamError("n_iter", f"{self.n_iter} is outside 1..{MAX_N_ITER}")
        if self.width * self.height * self.batch_size > MAX_PIXELS_PER_BATCH:
            raise ParamError("batch_size", "width × height × batch_size is too large for one batch")
        if not 0 <= float(self.cfg_scale) <= 100:
            raise ParamError("cfg_scale", f"{self.cfg_scale} is outside 0..100")
        if self.eta is not None and not 0 <= float(self.eta) <= 10:
            raise ParamError("eta", f"{self.eta} is outside 0..10")
        if self.s_min_uncond is not None and not 0 <= float(self.s_min_uncond) <= 100:
            raise ParamError("s_min_uncond", f"{self.s_min_uncond} is outside 0..100")
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            value = int(getattr(self, name))
            if value > 0 and not 8 <= value <= MAX_SIZE:
                raise ParamError(name, f"{value} is outside 8..{MAX_SIZE} (0 or -1: off)")
        if not 0 <= float(self.subseed_strength) <= 1:
            raise ParamError("subseed_strength", f"{self.subseed_strength} is outside 0..1")
        if self.clip_skip is not None and not 1 <= int(self.clip_skip) <= 12:
            raise ParamError("clip_skip", f"{self.clip_skip} is outside 1..12")
        if self.restore_faces:
            warnings.append("restore_faces is not available (no face restoration model ships offline); ignored")
        if self.refiner_switch_at is not None and not 0 < float(self.refiner_switch_at) < 1:
            raise ParamError("refiner_switch_at", f"{self.refiner_switch_at} is outside 0..1 (both excluded)")
        return warnings

    @property
    def refiner(self) -> str | None:
        """The refiner checkpoint asked for, or None when there is none."""
        name = (self.refiner_checkpoint or "").strip()
        return None if name in ("", "None") else name

    @property
    def switch_at(self) -> float:
        """``refiner_switch_at``, or A1111's default."""
        return float(self.refiner_switch_at if self.refiner_switch_at is not None else REFINER_SWITCH_AT)


def _check_texts(params: GenerationParams) -> None:
    """Prompts within :data:`MAX_PROMPT_CHARS`, encodable as UTF-8, with network tag weights in range."""
    for name in ("prompt", "negative_prompt"):
        text = getattr(params, name)
        if not isinstance(text, str):
            raise ParamError(name, f"must be text, got {type(text).__name__}")
        if len(text) > MAX_PROMPT_CHARS:
            raise ParamError(name, f"{len(text)} characters; at most {MAX_PROMPT_CHARS}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ParamError(name, f"invalid character at position {e.start} (a lone UTF-16 surrogate)") from None
        for tag in extract_network_tags(text)[1]:
            for weight in (tag.te_multiplier, tag.unet_multiplier):
                if abs(weight) > MAX_NETWORK_MULTIPLIER:
                    raise ParamError(name, f"{tag.text}: weight {weight:g} is outside "
                                           f"-{MAX_NETWORK_MULTIPLIER:g}..{MAX_NETWORK_MULTIPLIER:g}")


@dataclass
class Txt2ImgParams(GenerationParams):
    kind = "txt2img"


@dataclass
class Img2ImgParams(GenerationParams):
    init_images: list = field(default_factory=list)  # PIL images
    resize_mode: int = 0  # 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: Any = None  # PIL image: white = repaint
    mask_blur: int = 4
    inpainting_fill: int = 0  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = True  # "only masked"
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0

    kind = "img2img"

    def validate(self) -> list[str]:
        warnings = super().validate()
        if not self.init_images:
            raise ParamError("init_images", "img2img needs an input image")
        if not 0 <= float(self.denoising_strength) <= 1:
            raise ParamError("denoising_strength", f"{self.denoising_strength} is outside 0..1")
        if self.resize_mode not in (0, 1, 2, 3):
            raise ParamError("resize_mode", f"{self.resize_mode} is not 0, 1, 2 or 3")
        if self.inpainting_fill not in (0, 1, 2, 3):
            raise ParamError("inpainting_fill", f"{self.inpainting_fill} is not 0, 1, 2 or 3")
        if not 0 <= int(self.mask_blur) <= 64:
            raise ParamError("mask_blur", f"{self.mask_blur} is outside 0..64")
        return warnings


def steps_per_batch(params, settings) -> int:
    """The sampling steps one batch of ``params`` runs: img2img runs the share its denoising strength keeps
    (A1111's ``t_enc + 1``) unless the ``img2img_fix_steps`` setting is on."""
    if isinstance(params, Img2ImgParams) and not settings.img2img_fix_steps:
        return int(min(float(params.denoising_strength), 0.999) * int(params.steps)) + 1
    return int(params.steps)

"""Between UI values and job parameters: building Txt2Img/Img2Img params, and filling fields from an infotext."""
from __future__ import annotations

from dataclasses import fields as dc_fields

from modules.infotext import SETTING_INFOTEXT_KEYS, infotext_to_params, infotext_to_settings, parse_infotext
from modules.processing.params import Img2ImgParams, Txt2ImgParams

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")
NO_REFINER = "None"  # the Refiner checkpoint dropdown's first entry

# Radio fields: the UI shows labels, the params hold numbers (or a bool for the inpaint area).
CHOICE_FIELDS = {
    "resize_mode": RESIZE_MODES,
    "inpainting_mask_invert": MASK_MODES,
    "inpainting_fill": MASKED_CONTENT,
}


def to_param(name: str, value):
    """A UI value as the params field wants it."""
    if name == "override_settings":  # the Override settings box: "Clip skip: 2" entries
        return infotext_to_settings(dict(entry.split(": ", 1) for entry in value or () if ": " in entry))
    if name in CHOICE_FIELDS:
        return CHOICE_FIELDS[name].index(value) if value in CHOICE_FIELDS[name] else 0
    if name == "inpaint_full_res":
        return value == INPAINT_AREAS[1]
    if name in ("seed_resize_from_w", "seed_resize_from_h"):
        return int(value) if value else -1
    return value


def to_ui(name: str, value):
    """A params value as the UI field shows it."""
    if name == "override_settings":
        return [f"{SETTING_INFOTEXT_KEYS[setting]}: {v}" for setting, v in value.items()]
    if name in CHOICE_FIELDS:
        labels = CHOICE_FIELDS[name]
        return labels[int(value)] if 0 <= int(value) < len(labels) else labels[0]
    if name == "inpaint_full_res":
        return INPAINT_AREAS[1] if value else INPAINT_AREAS[0]
    if name in ("seed_resize_from_w", "seed_resize_from_h"):
        return max(0, int(value))
    return value


def build_params(kind: str, values: dict, extra: dict | None = None):
    """Txt2ImgParams/Img2ImgParams from ``values`` (params field name -> UI value) plus ready-made ``extra``."""
    cls = Txt2ImgParams if kind == "txt2img" else Img2ImgParams
    known = {f.name for f in dc_fields(cls)}
    kwargs = {name: to_param(name, value) for name, value in values.items() if name in known}
    for name in ("steps", "width", "height", "batch_size", "n_iter", "seed", "subseed", "mask_blur",
                 "inpaint_full_res_padding"):
        if name in kwargs and kwargs[name] is not None:
            kwargs[name] = int(kwargs[name])
    kwargs.update(extra or {})
    return cls(**kwargs)


def fields_from_infotext(text: str) -> dict:
    """Params field name -> UI value for every field an infotext names (prompt, seed, steps, sampler…)."""
    parsed = parse_infotext(text)
    params = infotext_to_params(parsed)
    params.setdefault("prompt", parsed.get("Prompt", ""))
    params.setdefault("negative_prompt", parsed.get("Negative prompt", ""))
    params.setdefault("refiner_checkpoint", NO_REFINER)  # as A1111: parameters without a refiner turn it off
    return {name: to_ui(name, value) for name, value in params.items()}


def looks_like_infotext(text: str) -> bool:
    return "Steps: " in text

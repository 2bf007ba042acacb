"""A1111 infotext: the generation parameters as text, written into images and read back.

Layout::

    <prompt, may span lines>
    Negative prompt: <negative, may span lines>          (omitted when empty)
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, …

:func:`build_infotext` writes it (known keys in A1111's order, then the caller's extra keys in their order,
``Version`` and ``User`` last), :func:`parse_infotext` reads it with A1111's semantics into A1111's keys
(string values, ``Size-1``/``Size-2``, defaults for missing keys), and :func:`infotext_to_params` turns that
into typed request fields (``steps``, ``width``, ``cfg_scale``, …).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping

# Keys A1111 writes before the extra generation parameters, in its order.
LEADING_KEYS = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight", "Clip skip",
    "ENSD", "RNG", "Tiling",
)
# Keys A1111 writes after the extra generation parameters.
TRAILING_KEYS = ("Version", "User")
NEGATIVE_PREFIX = "Negative prompt:"

# Defaults A1111 fills in for keys missing from a parsed infotext.
DEFAULTS: dict[str, object] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Emphasis": "Original",
    "Refiner switch by sampling steps": False,
}

# Schedule type labels with their other spellings, longest first, for old combined sampler names such as
# "DPM++ 2M Karras" (A1111 checks "Uniform" before "SGM Uniform" and so mis-splits "… SGM Uniform"; we do not).
SCHEDULE_TYPE_SPELLINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Align Your Steps", ("Align Your Steps", "align_your_steps")),
    ("Polyexponential", ("Polyexponential", "polyexponential")),
    ("SGM Uniform", ("SGM Uniform", "sgm_uniform", "SGMUniform")),
    ("Exponential", ("Exponential", "exponential")),
    ("KL Optimal", ("KL Optimal", "kl_optimal")),
    ("Uniform", ("Uniform", "uniform")),
    ("Karras", ("Karras", "karras")),
    ("Simple", ("Simple", "simple")),
    ("Normal", ("Normal", "normal")),
    ("Beta", ("Beta", "beta")),
    ("DDIM", ("DDIM", "ddim")),
)

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_MASKED_CONTENT = {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}


def quote(value: object) -> str:
    """A value as written in the parameter line: JSON-quoted when it holds ``,``, ``:`` or a newline."""
    text = str(value)
    if "," in text or ":" in text or "\n" in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """Reverse :func:`quote`: a double-quoted value is JSON-decoded; anything else is returned unchanged."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            decoded = json.loads(text)
        except ValueError:
            return text
        return decoded if isinstance(decoded, str) else text
    return text


def _format_value(key: str, value: object) -> str | None:
    if value is None:
        return None
    if key == "Size" and isinstance(value, tuple | list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if key == "Clip skip":
        try:
            if int(value) <= 1:  # type: ignore[call-overload]
                return None
        except (TypeError, ValueError):
            pass
    return quote(value)


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The infotext for one image.

    ``params`` uses A1111's display keys (``"Steps"``, ``"CFG scale"``, ``"Size"``, ``"Lora hashes"``, …);
    ``Size`` may be ``"WxH"`` or a ``(width, height)`` pair. Known keys are put in A1111's order, other keys
    follow in the order given, ``Version``/``User`` come last. None values are left out, ``Clip skip`` only when
    > 1, a value equal to its key is written as the bare key (A1111's flag style).
    """
    order = [key for key in LEADING_KEYS if key in params]
    order += [key for key in params if key not in LEADING_KEYS and key not in TRAILING_KEYS]
    order += [key for key in TRAILING_KEYS if key in params]
    fields = []
    for key in order:
        value = params[key]
        if value == key:
            fields.append(key)
            continue
        text = _format_value(key, value)
        if text is not None:
            fields.append(f"{key}: {text}")
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(fields)}".strip()


def parse_parameter_line(line: str) -> list[tuple[str, str]]:
    """The ``Key: value`` pairs of a parameter line, values unquoted."""
    return [(key, unquote(value)) for key, value in _PARAM.findall(line)]


def _old_hires_first_pass(width: int, height: int) -> tuple[int, int]:
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _restore_old_hires_fix(res: dict[str, object]) -> None:
    """Infotexts from before hires fix had its own size store the first pass size instead."""
    first_width, first_height = res.get("First pass size-1"), res.get("First pass size-2")
    if first_width is None or first_height is None:
        return
    try:
        first_width, first_height = int(first_width), int(first_height)  # type: ignore[call-overload]
        width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))  # type: ignore[call-overload]
    except ValueError:
        return
    if first_width == 0 or first_height == 0:
        if width <= 0 or height <= 0:
            return
        first_width, first_height = _old_hires_first_pass(width, height)
    res.update({"Size-1": first_width, "Size-2": first_height, "Hires resize-1": width, "Hires resize-2": height})


def parse_infotext(text: str) -> dict[str, object]:
    """Read an infotext into A1111's keys: ``Prompt``, ``Negative prompt`` and the parameters.

    The last line is the parameter line only if it yields at least 3 ``Key: value`` pairs. Lines are stripped;
    those from the one starting ``Negative prompt:`` on form the negative prompt. Quoted values are JSON-decoded;
    ``WxH`` values become ``Key-1``/``Key-2``. Values are strings except the defaults in :data:`DEFAULTS`, which
    fill missing keys. A ``Hypernet`` key is turned back into a ``<hypernet:…>`` tag. Never raises.
    """
    lines = text.replace("\r\n", "\n").strip().split("\n")
    last = lines[-1]
    if len(_PARAM.findall(last)) >= 3:
        lines = lines[:-1]
    else:
        last = ""
    prompt = negative = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        # As in A1111, a line is joined with "\n" only to a non-empty text: leading empty lines vanish.
        if in_negative:
            negative = f"{negative}\n{line}" if negative else line
        else:
            prompt = f"{prompt}\n{line}" if prompt else line

    res: dict[str, object] = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in parse_parameter_line(last):
        size = _SIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value

    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"
    for key, value in DEFAULTS.items():
        res.setdefault(key, value)
    if res["FP8 weight"] != "Disable":
        res.setdefault("Cache FP16 weight for LoRA", False)
    _restore_old_hires_fix(res)
    return res


def split_sampler_name(sampler: str, schedule_type: str = "Automatic") -> tuple[str, str]:
    """Split an old combined name such as ``"DPM++ 2M Karras"`` into sampler and schedule type.

    Only done when the schedule type is Automatic (infotexts from before the separate field).
    """
    if schedule_type != "Automatic":
        return sampler, schedule_type
    for label, spellings in SCHEDULE_TYPE_SPELLINGS:
        for spelling in spellings:
            if sampler.endswith(" " + spelling):
                return sampler[:-len(spelling) - 1], label
    return sampler, schedule_type


def _as_bool_true(value: object) -> bool:
    return str(value) == "True"


# (request field, infotext key, converter)
_FIELDS: tuple[tuple[str, str, Callable[[object], object]], ...] = (
    ("prompt", "Prompt", str),
    ("negative_prompt", "Negative prompt", str),
    ("steps", "Steps", int),
    ("cfg_scale", "CFG scale", float),
    ("image_cfg_scale", "Image CFG scale", float),
    ("seed", "Seed", int),
    ("width", "Size-1", int),
    ("height", "Size-2", int),
    ("subseed", "Variation seed", int),
    ("subseed_strength", "Variation seed strength", float),
    ("seed_resize_from_w", "Seed resize from-1", int),
    ("seed_resize_from_h", "Seed resize from-2", int),
    ("denoising_strength", "Denoising strength", float),
    ("clip_skip", "Clip skip", int),
    ("sd_model_hash", "Model hash", str),
    ("sd_model_name", "Model", str),
    ("sd_vae_hash", "VAE hash", str),
    ("sd_vae_name", "VAE", str),
    ("tiling", "Tiling", _as_bool_true),
    ("refiner_checkpoint", "Refiner", str),
    ("refiner_switch_at", "Refiner switch at", float),
    ("hr_scale", "Hires upscale", float),
    ("hr_upscaler", "Hires upscaler", str),
    ("hr_second_pass_steps", "Hires steps", int),
    ("hr_resize_x", "Hires resize-1", int),
    ("hr_resize_y", "Hires resize-2", int),
    ("hr_sampler_name", "Hires sampler", str),
    ("hr_scheduler", "Hires schedule type", str),
    ("hr_checkpoint_name", "Hires checkpoint", str),
    ("hr_prompt", "Hires prompt", str),
    ("hr_negative_prompt", "Hires negative prompt", str),
    ("mask_blur", "Mask blur", int),
    ("inpaint_full_res_padding", "Masked area padding", int),
)


# (setting, infotext key, converter): keys that stand for settings, not request fields (A1111 applies them as
# override settings when an infotext is pasted).
_SETTING_KEYS: tuple[tuple[str, str, Callable[[object], object]], ...] = (
    ("CLIP_stop_at_last_layers", "Clip skip", int),
    ("eta_noise_seed_delta", "ENSD", int),
    ("eta_ancestral", "Eta", float),
    ("eta_ddim", "Eta DDIM", float),
    ("randn_source", "RNG", str),
    ("emphasis", "Emphasis", str),
    ("s_min_uncond", "NGMS", float),
    ("s_min_uncond_all", "NGMS all steps", _as_bool_true),
    ("token_merging_ratio", "Token merging", float),  # the short spelling, read too
    ("token_merging_ratio", "Token merging ratio", float),  # A1111's key, written (the last entry for a setting)
    ("token_merging_ratio_hr", "Token merging ratio hr", float),
)
SETTING_INFOTEXT_KEYS = {setting: key for setting, key, _ in _SETTING_KEYS}


def infotext_to_settings(parsed: Mapping[str, object]) -> dict[str, object]:
    """Settings named by :func:`parse_infotext`'s result (clip skip, ENSD, eta, RNG, emphasis, NGMS), converted;
    keys whose value does not convert are left out. Missing keys with A1111 defaults (``Clip skip`` 1, ``RNG`` GPU,
    ``Emphasis`` Original) come through as those defaults, as in A1111."""
    return _converted(parsed, _SETTING_KEYS)


def _converted(parsed: Mapping[str, object], table) -> dict[str, object]:
    """``{name: convert(parsed[key])}`` for each (name, key, convert) of ``table`` whose key is there and converts."""
    out: dict[str, object] = {}
    for name, key, convert in table:
        if key in parsed:
            try:
                out[name] = convert(parsed[key])
            except (TypeError, ValueError, OverflowError):
                continue
    return out


def infotext_to_params(parsed: Mapping[str, object]) -> dict[str, object]:
    """Typed request fields (A1111 API names) from :func:`parse_infotext`'s result.

    Keys whose value does not convert are left out. ``sampler_name``/``scheduler`` are split from old combined
    sampler names; ``enable_hr`` is set when the infotext has a denoising strength and hires keys; inpainting
    names become the API's numbers (``inpainting_fill``, ``inpaint_full_res``, ``inpainting_mask_invert``).
    """
    out = _converted(parsed, _FIELDS)
    if "Sampler" in parsed:
        out["sampler_name"], out["scheduler"] = split_sampler_name(str(parsed["Sampler"]),
                                                                   str(parsed.get("Schedule type", "Automatic")))
    elif "Schedule type" in parsed:
        out["scheduler"] = str(parsed["Schedule type"])
    out["restore_faces"] = "Face restoration" in parsed
    out["enable_hr"] = "Denoising strength" in parsed and (
        any(key in parsed for key in ("Hires upscale", "Hires upscaler", "Hires steps"))
        or bool(out.get("hr_resize_x")) or bool(out.get("hr_resize_y")))
    if "Masked content" in parsed:
        fill = _MASKED_CONTENT.get(str(parsed["Masked content"]))
        if fill is not None:
            out["inpainting_fill"] = fill
    if "Inpaint area" in parsed:
        out["inpaint_full_res"] = parsed["Inpaint area"] == "Only masked"
    if "Mask mode" in parsed:
        out["inpainting_mask_invert"] = int(parsed["Mask mode"] == "Inpaint not masked")
    return out

"""ControlNet units: one condition image with its preprocessor, model and strength settings.

The API form is sd-webui-controlnet's unit dict (``input_image`` base64, ``module``, ``model``, ``weight``,
``guidance_start``, ``guidance_end``, ``control_mode``, ``resize_mode``, ``pixel_perfect``, ``processor_res``,
``threshold_a``, ``threshold_b``, ``enabled``, ``hr_option``); the infotext field is written as sd-webui-controlnet
writes it (``ControlNet 0: "Module: canny, Model: name [hash], Weight: 1, …"``).
"""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, fields, replace

from .preprocessors import RESIZE_MODES, find_preprocessor

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HR_OPTIONS = ("Both", "Low res only", "High res only")  # which passes of a hires-fix job a unit conditions
# sd-webui-controlnet's unit fields that change nothing here (memory and batch options, inpaint switches)
IGNORED_FIELDS = {"low_vram", "save_detected_map", "inpaint_crop_input_image", "guessmode",
                  "advanced_weighting", "effective_region_mask", "pulid_mode", "ipadapter_input", "batch_images",
                  "input_mode", "animatediff_batch", "batch_modifiers", "mask", "mask_image", "is_ui",
                  "union_control_type", "output_dir", "loopback", "use_preview_as_input", "generated_image"}


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit. ``processor_res``/``threshold_a``/``threshold_b`` < 0 take the preprocessor's default."""

    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: object = None  # PIL image
    resize_mode: str = "Crop and Resize"
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    hr_option: str = "Both"

    def check(self) -> "ControlUnit":
        """The unit with names normalised; ValueError for values out of range or unknown choices."""
        pre = find_preprocessor(self.module)
        if not 0.0 <= self.weight <= 2.0:
            raise ValueError(f"weight {self.weight:g} is outside 0–2")
        if not 0.0 <= self.guidance_start <= self.guidance_end <= 1.0:
            raise ValueError(f"guidance start {self.guidance_start:g} / end {self.guidance_end:g}: "
                             "need 0 ≤ start ≤ end ≤ 1")
        return replace(self, module=pre.name, resize_mode=_choice(self.resize_mode, RESIZE_MODES, "resize_mode"),
                       control_mode=_choice(self.control_mode, CONTROL_MODES, "control_mode"),
                       hr_option=_choice(self.hr_option, HR_OPTIONS, "hr_option"))


def _choice(value, choices: tuple[str, ...], name: str) -> str:
    """A choice by text (case-insensitive) or by index, as sd-webui-controlnet accepts enum values."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    if isinstance(value, (int, float)) and float(value).is_integer() and 0 <= int(value) < len(choices):
        return choices[int(value)]
    if isinstance(value, str):
        for c in choices:
            if c.lower() == value.strip().lower():
                return c
        if value.strip().isdigit():
            return _choice(int(value.strip()), choices, name)
        legacy = {"inner fit (scale to fit)": "Crop and Resize", "envelope (outer fit)": "Resize and Fill",
                  "scale to fit (inner fit)": "Crop and Resize"}
        if value.strip().lower() in legacy:
            return legacy[value.strip().lower()]
    raise ValueError(f"{name}: {value!r} is not one of {', '.join(choices)}")


def decode_image(data, max_pixels: int | None = None):
    """A PIL image from base64 text (optionally a ``data:`` URL), a ``{"image": …}`` dict or a PIL image; one of more
    than ``max_pixels`` pixels is refused from its header, before it is decoded."""
    from PIL import Image

    if data is None or isinstance(data, Image.Image):
        return data
    if isinstance(data, dict):
        return decode_image(data.get("image"), max_pixels)
    if isinstance(data, (list, tuple)) and data:
        return decode_image(data[0], max_pixels)
    if not isinstance(data, str) or not data.strip():
        raise ValueError("input_image: expected a base64-encoded image")
    text = data.split(",", 1)[-1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        image = Image.open(io.BytesIO(raw))
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise OverflowError
        image.load()
    except Image.DecompressionBombError:
        raise ValueError(f"input_image: image too large: more than {max_pixels or Image.MAX_IMAGE_PIXELS} pixels "
                         "(setting limit_upload_pixels)") from None
    except OverflowError:
        raise ValueError(f"input_image: {image.width}×{image.height} image: more than {max_pixels} pixels "
                         "(setting limit_upload_pixels)") from None
    except (binascii.Error, ValueError):
        raise ValueError("input_image: invalid base64") from None
    except Exception:  # noqa: BLE001 - PIL raises many kinds for corrupt data
        raise ValueError("input_image: not a readable image") from None
    return image


def _number(value, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


def _flag(value, name: str) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, (bool, int)):
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    return bool(value)


def unit_from_dict(data: dict, max_pixels: int | None = None) -> ControlUnit:
    """A unit from sd-webui-controlnet's API dict (unknown keys that change nothing here are ignored, as there).

    ``image`` is an alias of ``input_image``; ``guidance`` (old clients) sets the guidance end; enum values may be
    given as text or index; an image over ``max_pixels`` is refused. Raises ValueError naming the field.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a ControlNet unit must be an object, got {type(data).__name__}")
    known = {f.name for f in fields(ControlUnit)} | {"input_image", "guidance"}
    unknown = sorted(k for k in data if k not in known and k not in IGNORED_FIELDS)
    if unknown:
        raise ValueError(f"unknown unit field(s) {', '.join(unknown)}")
    kw: dict = {}
    for name in ("enabled", "pixel_perfect"):
        if name in data:
            kw[name] = _flag(data[name], name)
    for name in ("weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
        if data.get(name) is not None:
            kw[name] = _number(data[name], name)
    if data.get("guidance") is not None and "guidance_end" not in kw:
        kw["guidance_end"] = _number(data["guidance"], "guidance")
    if data.get("processor_res") is not None:
        kw["processor_res"] = int(_number(data["processor_res"], "processor_res"))
    for name in ("module", "model", "resize_mode", "control_mode", "hr_option"):
        if data.get(name) is not None:
            kw[name] = data[name]
    image = data.get("input_image", data.get("image"))
    kw["image"] = decode_image(image, max_pixels)
    return ControlUnit(**kw).check()


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def infotext_value(unit: ControlUnit, model_title: str, processor_res: int, threshold_a: float,
                   threshold_b: float) -> str:
    """The value of a ``ControlNet N`` infotext field (the caller passes the resolved resolution/thresholds;
    -1 marks a value the preprocessor does not use and is left out, as sd-webui-controlnet does)."""
    parts = [("Module", unit.module), ("Model", model_title), ("Weight", unit.weight),
             ("Resize Mode", unit.resize_mode), ("Processor Res", processor_res), ("Threshold A", threshold_a),
             ("Threshold B", threshold_b), ("Guidance Start", unit.guidance_start),
             ("Guidance End", unit.guidance_end), ("Pixel Perfect", unit.pixel_perfect),
             ("Control Mode", unit.control_mode), ("Hr Option", unit.hr_option if unit.hr_option != "Both" else -1)]
    return ", ".join(f"{k}: {_text(v)}" for k, v in parts if v != -1)


@dataclass(frozen=True)
class DetectedMap:
    """A unit's condition image fitted to the output size, with the preprocessor settings that made it
    (-1 where the preprocessor does not use a value)."""

    image: object  # RGB uint8 array (height, width, 3)
    processor_res: int
    threshold_a: float
    threshold_b: float


def detected_map(unit: ControlUnit, width: int, height: int, image=None) -> DetectedMap:
    """Run the unit's preprocessor on its image (or ``image`` when the unit has none) and fit the map to
    ``width``×``height`` with its resize mode; pixel perfect sets the processor resolution from the output size."""
    from . import preprocessors as pp

    source = unit.image if unit.image is not None else image
    if source is None:
        raise ValueError("no input image")
    pre = pp.find_preprocessor(unit.module)
    if pre.uses_resolution:
        res = (pp.pixel_perfect_resolution(source.size, width, height, unit.resize_mode) if unit.pixel_perfect
               else unit.processor_res if unit.processor_res > 0 else pp.DEFAULT_RESOLUTION)
    else:
        res = -1
    a = -1 if pre.threshold_a is None else (unit.threshold_a if unit.threshold_a >= 0 else pre.threshold_a.value)
    b = -1 if pre.threshold_b is None else (unit.threshold_b if unit.threshold_b >= 0 else pre.threshold_b.value)
    raw = pp.detect(source, pre.name, res, a, b)
    return DetectedMap(pp.fit(raw, width, height, unit.resize_mode), res, a, b)

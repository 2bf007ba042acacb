"""ControlNet (sd-webui-controlnet semantics) written only against the public script and hook API.

Each enabled unit's input image goes through its preprocessor, is fitted to the output size, and conditions the
UNet through a per-job ``UNET_CALL`` wrapper that adds the unit's ControlNet residuals (``modules.controlnet``).
Units with weight 0 add nothing, so the image equals plain txt2img/img2img; the infotext still records them
("ControlNet 0: …").

Arguments: per unit ``i`` the controls ``unit{i}_image``, ``unit{i}_enabled``, ``unit{i}_module``, ``unit{i}_model``,
``unit{i}_weight``, … (the panel's form), or sd-webui-controlnet's API form, a list of unit dicts:
``"alwayson_scripts": {"ControlNet": {"args": [{"input_image": "<base64>", "module": "canny", "model": "…"}]}}``.
The unit image controls come first so that positional dicts land on them.
"""
from __future__ import annotations

import base64
import functools
import io
from dataclasses import replace

from modules.controlnet import apply
from modules.controlnet import units as cn_units
from modules.controlnet.loader import ControlNetCache, ControlNetCatalog
from modules.controlnet.preprocessors import PREPROCESSORS, RESIZE_MODES
from modules.hooks import HookPoint
from modules.infotext import parse_parameter_line
from modules.scripts import Control, Preview, Script, XyzAxis

TITLE = "ControlNet"
UNIT_COUNT = 3  # sd-webui-controlnet's default "Multi-ControlNet: max models amount"
NO_MODEL = "None"
# the keys of a "ControlNet N" infotext value -> the unit's control names (the model is looked up separately)
_INFOTEXT_KEYS = {"Module": "module", "Weight": "weight", "Resize Mode": "resize_mode",
                  "Processor Res": "processor_res", "Threshold A": "threshold_a", "Threshold B": "threshold_b",
                  "Guidance Start": "guidance_start", "Guidance End": "guidance_end",
                  "Pixel Perfect": "pixel_perfect", "Control Mode": "control_mode", "Hr Option": "hr_option"}


def controlnet_dir(state):
    """``--controlnet-dir``, else ``models/ControlNet`` beside the checkpoints."""
    return state.options.controlnet_dir or state.options.ckpt_dir.parent / "ControlNet"


class ControlNetScript(Script):
    title = TITLE
    alwayson = True
    kinds = ("txt2img", "img2img")

    def __init__(self, state):
        self.state = state  # its settings hold the upload limit
        self.catalog = ControlNetCatalog(controlnet_dir(state), state.options.allow_pickle)
        self.cache = ControlNetCache()

    def controls(self, kind: str) -> list[Control]:
        self.catalog.refresh()  # a model added since the last request is offered at once
        models = (NO_MODEL, *self.catalog.titles())
        out = [Control(f"unit{i}_image", "image", f"Unit {i}: control image", None, group=f"Unit {i}",
                       enables=f"unit{i}_enabled", tooltip="Empty in img2img: the init image is used")
               for i in range(UNIT_COUNT)]
        for i in range(UNIT_COUNT):
            out += [replace(c, group=f"Unit {i}") for c in (
                Control(f"unit{i}_enabled", "checkbox", f"Unit {i}: enable", False, switch=True),
                Control(f"unit{i}_module", "dropdown", f"Unit {i}: preprocessor", "none", choices=tuple(PREPROCESSORS)),
                Control(f"unit{i}_model", "dropdown", f"Unit {i}: model", NO_MODEL, choices=models),
                Control(f"unit{i}_weight", "slider", f"Unit {i}: control weight", 1.0, minimum=0, maximum=2, step=0.05),
                Control(f"unit{i}_guidance_start", "slider", f"Unit {i}: starting control step", 0.0, minimum=0,
                        maximum=1, step=0.01),
                Control(f"unit{i}_guidance_end", "slider", f"Unit {i}: ending control step", 1.0, minimum=0,
                        maximum=1, step=0.01),
                Control(f"unit{i}_control_mode", "radio", f"Unit {i}: control mode", cn_units.CONTROL_MODES[0],
                        choices=cn_units.CONTROL_MODES),
                Control(f"unit{i}_resize_mode", "radio", f"Unit {i}: resize mode", "Crop and Resize",
                        choices=RESIZE_MODES),
                Control(f"unit{i}_pixel_perfect", "checkbox", f"Unit {i}: pixel perfect", False,
                        tooltip="Preprocessor resolution from the output size"),
                Control(f"unit{i}_processor_res", "slider", f"Unit {i}: preprocessor resolution", 512, minimum=64,
                        maximum=2048, step=8),
                Control(f"unit{i}_threshold_a", "number", f"Unit {i}: threshold A", -1.0, minimum=-1, maximum=255,
                        tooltip="-1: the preprocessor's default (canny low 100, threshold 127, …)"),
                Control(f"unit{i}_threshold_b", "number", f"Unit {i}: threshold B", -1.0, minimum=-1, maximum=255,
                        tooltip="-1: the preprocessor's default (canny high 200)"),
                Control(f"unit{i}_hr_option", "radio", f"Unit {i}: hires fix passes", cn_units.HR_OPTIONS[0],
                        choices=cn_units.HR_OPTIONS, tooltip="Which passes of a hires fix job this unit conditions"),
            )]
        return out

    def units(self, args: dict) -> list[tuple[int, cn_units.ControlUnit]]:
        """The enabled units of a request, checked (ValueError naming the unit)."""
        out = []
        max_pixels = self.state.settings.current.limit_upload_pixels
        for i in range(UNIT_COUNT):
            value = args.get(f"unit{i}_image")
            try:
                if isinstance(value, dict):  # sd-webui-controlnet's API form
                    unit = cn_units.unit_from_dict(value, max_pixels)
                else:
                    unit = cn_units.ControlUnit(
                        enabled=args[f"unit{i}_enabled"], module=args[f"unit{i}_module"],
                        model=args[f"unit{i}_model"], weight=args[f"unit{i}_weight"],
                        image=cn_units.decode_image(value, max_pixels), resize_mode=args[f"unit{i}_resize_mode"],
                        processor_res=args[f"unit{i}_processor_res"], threshold_a=args[f"unit{i}_threshold_a"],
                        threshold_b=args[f"unit{i}_threshold_b"], guidance_start=args[f"unit{i}_guidance_start"],
                        guidance_end=args[f"unit{i}_guidance_end"], pixel_perfect=args[f"unit{i}_pixel_perfect"],
                        control_mode=args[f"unit{i}_control_mode"], hr_option=args[f"unit{i}_hr_option"]).check()
            except ValueError as e:
                raise ValueError(f"{TITLE}: unit {i}: {e}") from None
            if unit.enabled:
                out.append((i, unit))
        return out

    def find_model(self, name: str, index: int):
        info = self.catalog.find(name)  # the catalog was refreshed when the arguments were checked (controls)
        if info is None:
            available = ", ".join(self.catalog.titles()) or "none in " + str(self.catalog.root)
            raise ValueError(f"{TITLE}: unit {index}: model {name!r} not found (available: {available})")
        return info

    def setup(self, state, params, args: dict, hooks) -> None:
        enabled = self.units(args)
        if not enabled:
            return
        fallback = (params.init_images or [None])[0] if params.kind == "img2img" else None
        fields, active = {}, []
        for i, unit in enabled:
            info = self.find_model(unit.model, i)
            try:
                detected = cn_units.detected_map(unit, params.width, params.height, fallback)
            except ValueError as e:
                raise ValueError(f"{TITLE}: unit {i}: {e}") from None
            fields[f"ControlNet {i}"] = cn_units.infotext_value(unit, info.title, detected.processor_res,
                                                                detected.threshold_a, detected.threshold_b)
            if unit.weight > 0:
                active.append((i, unit, info, detected.image))
        owner = self.extension or TITLE
        hooks.register(HookPoint.INFOTEXT, lambda e: e.fields.update(fields), owner)
        if not active:
            return
        models = state.models.current
        unet = models.unet if models is not None else None
        device = unet.device if unet is not None else "cpu"
        dtype = unet.dtype if unet is not None else None
        loaded = []
        for i, unit, info, hint in active:
            model = self.cache.get(info, device, dtype, state.options.allow_pickle)
            if unet is not None and model.config.cross_attention_dim != unet.config.cross_attention_dim:
                raise ValueError(f"{TITLE}: unit {i}: model {info.name!r} does not fit the checkpoint (context "
                                 f"width {model.config.cross_attention_dim}, checkpoint "
                                 f"{unet.config.cross_attention_dim})")
            loaded.append(apply.ActiveUnit(i, unit, model, hint))
        hooks.register(HookPoint.UNET_CALL, apply.unet_call_wrapper(loaded, params), owner)

    def preview(self, unit: int, args: dict, width: int, height: int):
        """The preprocessed map of unit ``unit`` fitted to ``width``×``height`` (a PIL image) for the panel."""
        from PIL import Image

        value = args.get(f"unit{unit}_image")
        named = {**args, f"unit{unit}_enabled": True} if not isinstance(value, dict) else {
            **args, f"unit{unit}_image": {**value, "enabled": True}}
        found = dict(self.units(named))
        return Image.fromarray(cn_units.detected_map(found[unit], width, height).image)

    def previews(self, kind: str) -> list[Preview]:
        return [Preview(f"unit{i}_preview", f"Unit {i}: preview the preprocessed map",
                        functools.partial(self.preview, i), group=f"Unit {i}") for i in range(UNIT_COUNT)]

    def values_from_infotext(self, fields: dict) -> dict:
        """The units an infotext records (``ControlNet N: "Module: …, Model: …, …"``), enabled; a model that is
        not installed is left as it is (the panel shows the installed ones only)."""
        out = {}
        recorded = {i: fields[f"ControlNet {i}"] for i in range(UNIT_COUNT)
                    if isinstance(fields.get(f"ControlNet {i}"), str)}
        if recorded:
            self.catalog.refresh()
        for i, text in recorded.items():
            unit = dict(parse_parameter_line(text))
            out[f"unit{i}_enabled"] = True
            for key, name in _INFOTEXT_KEYS.items():
                if key in unit:
                    out[f"unit{i}_{name}"] = unit[key]
            info = self.catalog.find(unit.get("Model", ""))
            if info is not None:
                out[f"unit{i}_model"] = info.title
        return out


def _encode_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _routes(script: ControlNetScript):
    """sd-webui-controlnet's helper routes: model and module lists, and ``/controlnet/detect`` (the preview)."""

    def add(app) -> None:
        from fastapi import Body, HTTPException
        from PIL import Image

        @app.get("/controlnet/model_list")
        def model_list() -> dict:
            script.catalog.refresh()
            return {"model_list": script.catalog.titles()}

        @app.get("/controlnet/module_list")
        def module_list() -> dict:
            return {"module_list": list(PREPROCESSORS)}

        @app.post("/controlnet/detect")
        def detect(payload: dict = Body(...)) -> dict:  # noqa: B008 - FastAPI's way to take a JSON body
            module = payload.get("controlnet_module", "none")
            images = payload.get("controlnet_input_images") or []
            out = []
            try:
                for data in images:
                    unit = cn_units.unit_from_dict({
                        "input_image": data, "module": module,
                        "processor_res": payload.get("controlnet_processor_res", 512),
                        "threshold_a": payload.get("controlnet_threshold_a", -1),
                        "threshold_b": payload.get("controlnet_threshold_b", -1)},
                        script.state.settings.current.limit_upload_pixels)
                    w, h = unit.image.size
                    out.append(_encode_png(Image.fromarray(cn_units.detected_map(unit, w, h).image)))
            except ValueError as e:
                raise HTTPException(status_code=400, detail=str(e)) from None
            return {"images": out, "info": "Success"}

    return add


def _set_unit0(name: str):
    """An X/Y/Z axis setter for unit 0's ``name`` (in the API's unit dict when the request used that form)."""

    def apply_value(cell, value) -> None:
        args = cell.alwayson.setdefault(TITLE, {"args": {}})["args"]
        if isinstance(args.get("unit0_image"), dict):
            args["unit0_image"] = {**args["unit0_image"], name: value}
        else:
            args[f"unit0_{name}"] = value
    return apply_value


def register(api) -> None:
    """The script (it needs the app state for its model folder), its routes and X/Y/Z axes for unit 0."""
    script = ControlNetScript(api.state)
    api.add_script(script)
    api.on_app_started(_routes(script))
    api.contribute("xyz_axis", XyzAxis("ControlNet weight", float, _set_unit0("weight"), numeric=True))
    api.contribute("xyz_axis", XyzAxis("ControlNet end", float, _set_unit0("guidance_end"), numeric=True))

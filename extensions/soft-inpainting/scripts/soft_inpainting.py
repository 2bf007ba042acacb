"""Soft inpainting (A1111's built-in extension): partly masked pixels (the mask blur's gradient) are partly kept, and
the final picture is pasted with a mask that follows what actually changed, so the seam melts away.

Notation: ``m`` in [0, 1] is the soft repaint mask at latent size (the blurred mask, not rounded), ``a`` the
original latent and ``d`` the denoiser's estimate at one latent pixel (4-vectors), ``σ`` the step's noise level.
Controls (A1111's titles and order): schedule bias ``b``, preservation strength ``s``, transition contrast boost
``p``, mask influence ``i``, difference threshold ``τ``, difference contrast ``c``.

1. Each step (hook ``MASK_BLEND``): the estimate's share is ``t = m ** (σ**b · s)``, so partly masked pixels lean
   to the original while the noise is high and to the estimate as it falls (``b`` shifts when). The mixed vector
   ``(1 − t)·a + t·d`` is rescaled to the length ``((1 − t)·|a|**p + t·|d|**p) ** (1/p)``: a p-mean of the two
   lengths, so that mixing does not wash out contrast. Fully masked pixels (t = 1) get the estimate, unmasked ones
   (t = 0) the original.
2. The sampler's result is kept as it is (no final pin to the original).
3. Composite (hook ``INPAINT_COMPOSITE``): ``δ`` = per latent pixel the length of (result − original), smoothed by
   a 3×3 maximum and then a 3×3 median (a changed region counts whole, lone outliers do not). The difference at
   which the original fades to half is ``h = τ · q / (1 − q)``, with ``q = (1 − i)/2 + i · (1 − m ** (s/2))``
   (``i`` = 0: the same ``τ`` everywhere; 1: the mask decides). The original's opacity
   ``o = smootherstep(1 / (1 + (δ/h) ** c))``; the image is pasted with ``1 − o``, scaled to the work area,
   blurred by 4 px and placed where the work area lies in the original ("Only masked").

Only jobs with a mask are changed. Infotext: "Soft inpainting enabled" and one "Soft inpainting …" field per control.
"""
from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageFilter

from modules.hooks import HookPoint
from modules.processing import image_ops
from modules.scripts import Control, Script

TITLE = "Soft Inpainting"
ENABLED_KEY = "Soft inpainting enabled"
COMPOSITE_BLUR = 4  # px: the composite mask's blur against the latent grid's blockiness
# name, label, infotext key, default, minimum, maximum, step, tooltip (A1111's)
SETTINGS = (
    ("mask_blend_power", "Schedule bias", "Soft inpainting schedule bias", 1.0, 0.0, 8.0, 0.1,
     "Shifts when preservation of original content occurs during denoising."),
    ("mask_blend_scale", "Preservation strength", "Soft inpainting preservation strength", 0.5, 0.0, 8.0, 0.05,
     "How strongly partially masked content should be preserved."),
    ("inpaint_detail_preservation", "Transition contrast boost", "Soft inpainting transition contrast boost", 4.0,
     1.0, 32.0, 0.5, "Amplifies the contrast that may be lost in partially masked regions."),
    ("composite_mask_influence", "Mask influence", "Soft inpainting mask influence", 0.0, 0.0, 1.0, 0.05,
     "How strongly the original mask should bias the difference threshold."),
    ("composite_difference_threshold", "Difference threshold", "Soft inpainting difference threshold", 0.5, 0.0, 8.0,
     0.25, "How much an image region can change before the original pixels are not blended in anymore."),
    ("composite_difference_contrast", "Difference contrast", "Soft inpainting difference contrast", 2.0, 0.0, 8.0,
     0.25, "How sharp the transition should be between blended and not blended."),
)


def step_share(repaint: torch.Tensor, sigma: torch.Tensor, bias: float, strength: float) -> torch.Tensor:
    """``t = m ** (σ**b · s)``: the estimate's share per latent pixel ([B, 1, h, w]) at noise level ``sigma`` ([B])."""
    exponent = sigma.to(repaint).reshape(-1, 1, 1, 1) ** bias * strength
    return repaint.clamp(0, 1) ** exponent


def mix_keeping_length(original: torch.Tensor, estimate: torch.Tensor, share: torch.Tensor,
                       power: float) -> torch.Tensor:
    """``(1 − t)·a + t·d`` rescaled per latent pixel to the p-mean of the two vectors' lengths."""
    mixed = original + (estimate - original) * share
    wide = torch.float32 if mixed.device.type == "mps" else torch.float64  # large powers; MPS has no float64
    length_a = original.to(wide).norm(dim=1, keepdim=True)
    length_d = estimate.to(wide).norm(dim=1, keepdim=True)
    t = share.to(wide)
    wanted = ((1 - t) * length_a ** power + t * length_d ** power) ** (1 / power)
    scale = wanted / (mixed.to(wide).norm(dim=1, keepdim=True) + 1e-5)
    return mixed * scale.to(mixed.dtype)


def _filter3(values: np.ndarray, reduce) -> np.ndarray:
    """``reduce`` over each pixel's 3×3 neighbourhood (edges repeated)."""
    windows = sliding_window_view(np.pad(values, 1, mode="edge"), (3, 3))
    return reduce(windows.reshape(*values.shape, 9), axis=-1)


def smootherstep(x: np.ndarray) -> np.ndarray:
    """``6x⁵ − 15x⁴ + 10x³`` on [0, 1]: flat at both ends."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6 * x - 15) + 10)


def composite_share(difference: np.ndarray, repaint: np.ndarray, args: dict) -> np.ndarray:
    """The generated image's share (0..1) per latent pixel from the change ``difference`` (δ) and the soft repaint
    mask ``repaint`` (m), both [h, w]."""
    smoothed = _filter3(_filter3(difference, np.max), np.median)
    influence = float(args["composite_mask_influence"])
    q = (1 - influence) / 2 + influence * (1 - np.clip(repaint, 0, 1) ** (float(args["mask_blend_scale"]) / 2))
    half = float(args["composite_difference_threshold"]) * q / (1.00001 - q)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(half > 0, smoothed / half, np.where(smoothed > 0, np.inf, 0.0))
        original = 1 / (1 + ratio ** float(args["composite_difference_contrast"]))
    return 1 - smootherstep(np.nan_to_num(original, nan=0.0))


def composite_mask(share: np.ndarray, work_size: tuple[int, int], size: tuple[int, int], box) -> Image.Image:
    """The full-size paste mask ("L", 255 = generated) from the latent-size ``share``."""
    small = Image.fromarray(np.clip(np.rint(share * 255), 0, 255).astype(np.uint8), "L")
    work = small.resize(work_size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(COMPOSITE_BLUR))
    return image_ops.uncrop_mask(work, size, box)


class SoftInpainting(Script):
    title = TITLE
    alwayson = True
    kinds = ("img2img",)

    def controls(self, kind: str) -> list[Control]:
        switch = Control("enabled", "checkbox", "Soft inpainting", False, switch=True,
                         tooltip="Blend original and inpainted content by the mask's opacity; use a high mask blur")
        return [switch, *(Control(name, "slider", label, default, minimum=lo, maximum=hi, step=step, tooltip=tip)
                          for name, label, _, default, lo, hi, step, tip in SETTINGS)]

    def values_from_infotext(self, fields: dict) -> dict:
        if ENABLED_KEY not in fields:
            return {}
        out = {"enabled": fields[ENABLED_KEY]}
        out.update({name: fields[key] for name, _, key, *_ in SETTINGS if key in fields})
        return out

    def setup(self, state, params, args: dict, hooks) -> None:
        if not args["enabled"] or getattr(params, "mask", None) is None:
            return

        def blend(event) -> None:
            if event.final:
                event.blended = event.latent
                return
            share = step_share(1 - event.soft_keep, event.sigma, float(args["mask_blend_power"]),
                               float(args["mask_blend_scale"]))
            event.blended = mix_keeping_length(event.init_latent, event.latent, share,
                                               float(args["inpaint_detail_preservation"]))

        def composite(event) -> None:
            difference = (event.latent.float().cpu() - event.init_latent.float().cpu()).norm(dim=1).numpy()
            repaint = (1 - event.soft_keep.float())[:, 0].cpu().numpy()
            for i in range(len(event.masks)):
                share = composite_share(difference[i], repaint[i % len(repaint)], args)
                event.masks[i] = composite_mask(share, event.work_size, event.original_sizes[i], event.boxes[i])

        def infotext(event) -> None:
            event.fields[ENABLED_KEY] = True
            event.fields.update({key: args[name] for name, _, key, *_ in SETTINGS})

        hooks.register(HookPoint.MASK_BLEND, blend, self.extension)
        hooks.register(HookPoint.INPAINT_COMPOSITE, composite, self.extension)
        hooks.register(HookPoint.INFOTEXT, infotext, self.extension)

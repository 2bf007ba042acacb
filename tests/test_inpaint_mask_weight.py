"""The "Inpainting conditioning mask strength" setting (``inpainting_mask_weight``) on a tiny 9-channel SD1 inpainting
checkpoint: the masked-image conditioning the UNet sees is the whole source at 0 and the source with the masked part
blanked at 1 (the default, as before), the images differ, and the infotext records it as A1111's
"Conditional mask weight"."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modules.hooks import HookPoint, HookRegistry
from modules.processing import image_ops
from modules.processing.params import Img2ImgParams
from modules.processing.runner import run_job
from tests.engine_fixtures import make_state


def _source() -> Image.Image:
    image = Image.new("RGB", (64, 64), (30, 60, 200))
    ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill=(220, 40, 40))
    return image


def _encode(state, pixels: torch.Tensor) -> torch.Tensor:
    vae = state.models.current.vae
    with torch.inference_mode():
        return vae.encode(pixels).latent_dist.mean[0] * vae.config.scaling_factor


def test_mask_weight_blends_the_conditioning_between_the_whole_and_the_masked_source(tmp_path):
    state = make_state(tmp_path, {"inpaint": "sd1-inpaint"})
    state.settings.update({"samples_save": False})
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)

    def run(overrides):
        seen = []
        hooks = HookRegistry()
        hooks.register(HookPoint.BEFORE_UNET, lambda call: seen.append(call.x[0, 5:9].clone()), "test")
        params = Img2ImgParams(prompt="a circle", seed=3, steps=2, width=64, height=64, sampler_name="Euler",
                               denoising_strength=0.8, init_images=[_source()], mask=mask, mask_blur=0,
                               inpainting_fill=1, inpaint_full_res=False, override_settings=overrides)
        result = run_job(state, params, extra_hooks=hooks)
        return np.asarray(result.images[0]).astype(int), result.infotexts[0], seen[0]

    default, default_text, default_cond = run({})
    whole, whole_text, whole_cond = run({"inpainting_mask_weight": 0.0})
    same, _, _ = run({"inpainting_mask_weight": 1.0})

    source = image_ops.pil_to_tensor(_source())
    blanked = source.clone()
    blanked[..., :32] = 0  # the masked part blanked (0 in [-1, 1]), as before this setting was read
    assert torch.allclose(default_cond, _encode(state, blanked), atol=1e-4)
    assert torch.allclose(whole_cond, _encode(state, source), atol=1e-4)
    assert (same == default).all() and np.abs(whole - default).max() > 10
    assert "Conditional mask weight: 1.0" in default_text and "Conditional mask weight: 0.0" in whole_text
    with pytest.raises(ValueError, match="inpainting_mask_weight"):
        run({"inpainting_mask_weight": 1.5})

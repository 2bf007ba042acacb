"""Generation with the other checkpoint variants: 9-channel inpainting, instruct-pix2pix, the SDXL refiner and SDXL
files of non-standard widths — tiny random-weight checkpoints in the real key layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.hooks import HookPoint, HookRegistry
from modules.processing.image_ops import pil_to_tensor
from modules.processing.params import Img2ImgParams, Txt2ImgParams
from modules.processing.runner import run_job
from tests.engine_fixtures import make_state

SMALL = {"steps": 3, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler", "do_not_save_samples": True}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("variants"), {"inpaint": "sd1-inpaint", "pix2pix": "pix2pix",
                                                            "refiner": "refiner", "xl-odd": "sdxl-odd"})


def px(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def picture(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8))


def run(state, params, point=HookPoint.BEFORE_UNET):
    """The job's result and what the hook at ``point`` saw on the first step."""
    seen = []
    hooks = HookRegistry()
    hooks.register(point, lambda c: seen.append(c) if not seen else None, "t")
    return run_job(state, params, extra_hooks=hooks), seen[0]


def latent_of(state, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE's (unscaled) latent mean of pixels in [-1, 1]."""
    with torch.inference_mode():
        return state.models.current.vae.encode(pixels).latent_dist.mean


def test_inpainting_model_sees_the_mask_and_the_picture_outside_it(state):
    state.models.load("inpaint")
    init, mask = picture(0), Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    r, call = run(state, Img2ImgParams(init_images=[init], mask=mask, mask_blur=0, inpainting_fill=1,
                                       inpaint_full_res=False, denoising_strength=1.0, **SMALL))
    assert call.x.shape[1] == 9
    assert torch.equal(call.x[:, 4, :, :4], torch.ones(2, 8, 4)) and not call.x[:, 4, :, 4:].any()
    masked = pil_to_tensor(init)
    masked[..., :32] = 0  # the masked half as the model sees it: gray
    expected = latent_of(state, masked) * state.models.current.vae.config.scaling_factor
    torch.testing.assert_close(call.x[:, 5:], expected.expand(2, -1, -1, -1), atol=1e-4, rtol=1e-4)
    out, src = px(r.images[0]), px(init)
    assert np.array_equal(out[:, 32:], src[:, 32:]) and np.abs(out[:, :32] - src[:, :32]).mean() > 5

    t2i, call = run(state, Txt2ImgParams(prompt="a circle", **SMALL))  # txt2img: everything is "masked"
    assert call.x.shape[1] == 9 and torch.equal(call.x[:, 4], torch.ones(2, 8, 8)) and t2i.images[0].size == (64, 64)


def test_pix2pix_conditions_on_the_init_image(state):
    state.models.load("pix2pix")
    init = picture(1)
    job = dict(denoising_strength=1.0, prompt="make it red", **SMALL)
    r, call = run(state, Img2ImgParams(init_images=[init], **job))
    assert call.x.shape[1] == 8
    torch.testing.assert_close(call.x[:, 4:], latent_of(state, pil_to_tensor(init)).expand(2, -1, -1, -1),
                               atol=1e-4, rtol=1e-4)  # cond and uncond rows both get the unscaled latent
    other = run_job(state, Img2ImgParams(init_images=[picture(2)], **job))
    assert np.abs(px(r.images[0]) - px(other.images[0])).mean() > 1
    assert "Image CFG scale" not in r.infotexts[0]


def test_pix2pix_image_cfg_scale_guides_towards_the_image(state):
    state.models.load("pix2pix")
    base = dict(init_images=[picture(1)], denoising_strength=1.0, prompt="make it red", cfg_scale=7.0, **SMALL)
    rows, combined = [], []
    hooks = HookRegistry()
    hooks.register(HookPoint.AFTER_UNET, lambda a: rows.append((a.denoised.clone(), a.call.x.clone())), "t")
    hooks.register(HookPoint.AFTER_CFG, lambda c: combined.append(c.denoised.clone()), "t")
    r = run_job(state, Img2ImgParams(image_cfg_scale=1.5, **base), extra_hooks=hooks)
    denoised, x = rows[0]
    assert x.shape[0] == 3 and x[:2, 4:].abs().sum() > 0 and not x[2, 4:].any()  # the last uncond row: no image
    cond, uncond, bare = denoised
    torch.testing.assert_close(combined[0][0], uncond + 7.0 * (cond - uncond) + 0.5 * (uncond - bare))
    assert "Image CFG scale: 1.5" in r.infotexts[0]

    plain = run_job(state, Img2ImgParams(**base))
    one = run_job(state, Img2ImgParams(image_cfg_scale=1.0, **base))  # 1: the plain two-row guidance, same image
    assert np.array_equal(px(one.images[0]), px(plain.images[0]))
    assert np.abs(px(r.images[0]) - px(plain.images[0])).mean() > 1


def test_refiner_gets_aesthetic_scores_instead_of_the_target_size(state):
    state.models.load("refiner")
    r, call = run(state, Txt2ImgParams(prompt="a cat", negative_prompt="blurry", **{**SMALL, "height": 96}))
    assert call.added_cond["time_ids"].tolist() == [[96, 64, 0, 0, 6.0], [96, 64, 0, 0, 2.5]]  # cond, uncond
    assert call.added_cond["text_embeds"].shape == (2, 64) and r.images[0].size == (64, 96)
    assert px(r.images[0]).std() > 1


def test_sdxl_file_of_non_standard_widths_generates(state):
    state.models.load("xl-odd")  # pooled text embedding 48 wide, size/crop embeddings 8 per id
    r, call = run(state, Txt2ImgParams(prompt="a cat", **{**SMALL, "height": 96}))
    assert call.added_cond["time_ids"].shape == (2, 6) and call.added_cond["text_embeds"].shape == (2, 48)
    assert r.images[0].size == (64, 96) and px(r.images[0]).std() > 1

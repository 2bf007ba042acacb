"""instruct-pix2pix's three-way guidance (prompt, image) gives the image diffusers'
StableDiffusionInstructPix2PixPipeline gives on the same random-weight model, start latents and text embeddings."""
from __future__ import annotations

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
from PIL import Image

from modules.hooks import HookPoint, HookRegistry
from modules.processing.params import Img2ImgParams
from modules.processing.runner import run_job
from tests.engine_fixtures import make_state

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
STEPS = 4  # linspace timesteps 999, 666, 333, 0: whole numbers, so no interpolation choice can differ


def test_image_cfg_guidance_matches_diffusers_pipeline(tmp_path):
    state = make_state(tmp_path, {"pix2pix": "pix2pix"})
    init = Image.fromarray((np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8))
    seen = {}
    hooks = HookRegistry()
    hooks.register(HookPoint.BEFORE_SAMPLING, lambda b: seen.setdefault("latents", b.latents.clone()), "t")
    hooks.register(HookPoint.BEFORE_UNET, lambda c: seen.setdefault("context", c.context.clone()), "t")
    params = Img2ImgParams(init_images=[init], prompt="make it red", negative_prompt="blurry", steps=STEPS,
                           sampler_name="Euler", scheduler="Uniform", cfg_scale=7.0, image_cfg_scale=1.5,
                           denoising_strength=1.0, width=64, height=64, seed=11, do_not_save_samples=True)
    ours = np.asarray(run_job(state, params, extra_hooks=hooks).images[0], dtype=np.float32) / 255
    context = seen["context"]
    assert context.shape[0] == 3  # prompt + image, negative + image, negative without the image

    model = state.models.current
    scheduler = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="linspace")
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=None, unet=model.unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    scheduler.set_timesteps(STEPS)
    start = seen["latents"] / float(scheduler.init_noise_sigma)  # the pipeline multiplies it back
    with torch.inference_mode():
        theirs = pipe(image=init, prompt_embeds=context[:1], negative_prompt_embeds=context[1:2],
                      num_inference_steps=STEPS, guidance_scale=7.0, image_guidance_scale=1.5, latents=start,
                      output_type="np").images[0]
    assert np.abs(ours - theirs).max() <= 2 / 255
    plain = run_job(state, Img2ImgParams(**{**params.__dict__, "image_cfg_scale": 1.0}))
    assert np.abs(np.asarray(plain.images[0], dtype=np.float32) / 255 - theirs).max() > 4 / 255  # it is not moot

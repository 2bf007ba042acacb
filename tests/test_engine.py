"""The generation engine on tiny real-layout checkpoints: parity with diffusers, seeds, jobs, hooks, infotext."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.hooks import HookPoint, HookRegistry
from modules.infotext import parse_infotext
from modules.image_io import read_infotext_file
from modules.processing.image_ops import pil_to_tensor
from modules.processing.params import Img2ImgParams, ParamError, Txt2ImgParams
from modules.processing.progress import JobProgress
from modules.processing.runner import run_job
from modules.sampling.registry import SAMPLERS
from tests.engine_fixtures import make_state


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("engine"), {"tiny": "sd1", "tiny-v": "sd2", "tiny-xl": "sdxl"})


@pytest.fixture(autouse=True)
def _sd1(state):
    state.models.load("tiny")
    state.models.prediction_overrides.clear()


def px(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def t2i(state, **kw):
    kw = {"steps": 4, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler", "do_not_save_samples": True,
          "do_not_save_grid": True, **kw}
    return run_job(state, Txt2ImgParams(**kw), kw.pop("progress", None))


# --- reference parity --------------------------------------------------------------------------------------------

def _diffusers_pipe(model, scheduler):
    from diffusers import StableDiffusionPipeline

    from modules.clip_tokenizer import load_clip_tokenizer

    return StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=load_clip_tokenizer(),
                                   unet=model.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _scheduler(name: str, prediction="epsilon"):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction)
    if name == "Euler":
        return EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1, **common), "DDIM", False
    if name == "DDIM":
        return DDIMScheduler(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=True, **common), "DDIM", True
    return DPMSolverMultistepScheduler(use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2, **common), "Karras", True


@pytest.mark.parametrize("sampler,family", [("Euler", "sd1"), ("DDIM", "sd1"), ("DPM++ 2M", "sd1"), ("Euler", "sd2-v")])
def test_matches_diffusers_pipeline(state, sampler, family):
    """Same UNet, VAE, conditioning and starting latents → the same image as diffusers' StableDiffusionPipeline.

    Alignment (docs/samplers.md): our DDIM schedule = diffusers' "leading" spacing with steps_offset 1; our Karras =
    use_karras_sigmas; diffusers' DDIM/DPM-Solver start from x/sqrt(1+σ²) (we scale the latents to match); diffusers
    rounds Karras timesteps, which a BEFORE_UNET hook reproduces here.
    """
    if family == "sd2-v":
        state.models.prediction_overrides["tiny-v"] = "v"
        state.models.unload()
        state.models.load("tiny-v")
    model = state.models.current
    prediction = "v_prediction" if model.spec.prediction == "v" else "epsilon"
    scheduler, schedule, vp_start = _scheduler(sampler, prediction)
    steps, cfg = 6, 7.0
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    from modules.text_encoding import PromptEncoder

    enc = PromptEncoder(model)
    cond, uncond = enc.encode("a red circle").context, enc.encode("blurry").context
    pipe = _diffusers_pipe(model, scheduler)
    with torch.inference_mode():
        theirs = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=steps, guidance_scale=cfg,
                      latents=noise.clone(), output_type="np", height=64, width=64).images[0]

    hooks = HookRegistry()

    def start(before):
        sigma0 = float(before.sigmas[0])
        before.latents = noise * ((1 + sigma0 ** 2) ** 0.5 if vp_start else scheduler.init_noise_sigma)

    hooks.register(HookPoint.BEFORE_SAMPLING, start, "test")
    if sampler == "DPM++ 2M":
        from modules.sampling import DiscreteSchedule

        sched = DiscreteSchedule.from_params()
        hooks.register(HookPoint.BEFORE_UNET, lambda c: setattr(c, "timestep", sched.sigma_to_t(c.sigma, quantize=True).float()), "test")
    ours = run_job(state, Txt2ImgParams(prompt="a red circle", negative_prompt="blurry", steps=steps, cfg_scale=cfg,
                                        width=64, height=64, sampler_name=sampler, scheduler=schedule,
                                        do_not_save_samples=True), extra_hooks=hooks).images[0]
    diff = np.abs(px(ours) / 255 - theirs).max()
    assert diff <= 2 / 255, f"max pixel difference {diff * 255:.2f}/255"


def test_sdxl_runs_with_size_time_ids(state):
    state.models.load("tiny-xl")
    seen = []
    hooks = HookRegistry()
    hooks.register(HookPoint.BEFORE_UNET, lambda c: seen.append((c.added_cond["time_ids"].clone(), c.added_cond["text_embeds"].shape)), "t")
    r = run_job(state, Txt2ImgParams(prompt="a cat", steps=2, width=64, height=96, do_not_save_samples=True), extra_hooks=hooks)
    assert r.images[0].size == (64, 96)
    time_ids, pooled_shape = seen[0]
    assert time_ids.tolist() == [[96, 64, 0, 0, 96, 64]] * 2  # cond + uncond rows, height first
    assert pooled_shape == (2, 64)


# --- seeds --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_batch_independence_and_determinism(state, sampler):
    batch = t2i(state, sampler_name=sampler, batch_size=2, seed=10, steps=3)
    singles = [t2i(state, sampler_name=sampler, seed=s, steps=3).images[0] for s in (10, 11)]
    assert batch.seeds == [10, 11]
    for a, b in zip(batch.images, singles):
        assert np.abs(px(a) - px(b)).max() <= 1  # same image (uint8 rounding of float noise in batched matmuls)
    assert np.array_equal(px(t2i(state, sampler_name=sampler, seed=10, steps=3).images[0]), px(singles[0]))


def test_variation_seed(state):
    base = px(t2i(state, seed=5).images[0])
    varied = px(t2i(state, seed=5, subseed=9, subseed_strength=0.5).images[0])
    full = px(t2i(state, seed=5, subseed=9, subseed_strength=1.0).images[0])
    other = px(t2i(state, seed=9).images[0])
    assert np.abs(base - varied).mean() > 1
    assert np.abs(full - other).max() <= 1  # strength 1 is the subseed's own noise
    assert t2i(state, seed=-1).seeds[0] != t2i(state, seed=-1).seeds[0]


def test_resize_seed_from_keeps_composition(state):
    small = px(t2i(state, seed=4, width=64, height=64).images[0])
    resized = t2i(state, seed=4, width=96, height=64, seed_resize_from_w=64, seed_resize_from_h=64)
    assert resized.images[0].size == (96, 64)
    assert "Seed resize from: 64x64" in resized.infotexts[0]
    plain = px(t2i(state, seed=4, width=96, height=64).images[0])
    # the 64×64 seed's noise sits in the middle of the wider image: there, it looks like the small image
    assert np.abs(px(resized.images[0])[:, 16:80] - small).mean() < 0.5 * np.abs(plain[:, 16:80] - small).mean()


# --- jobs ---------------------------------------------------------------------------------------------------------

def test_interrupt_keeps_images_and_skip_moves_on(state):
    progress = JobProgress()
    hooks = HookRegistry()
    hooks.register(HookPoint.AFTER_CFG, lambda c: progress.interrupt() if c.step == 1 else None, "t")
    r = run_job(state, Txt2ImgParams(steps=8, width=64, height=64, n_iter=3, do_not_save_samples=True), progress, hooks)
    assert r.interrupted and len(r.images) == 1 and progress.step < 8  # the batch in progress is kept, no more

    progress = JobProgress()
    hooks = HookRegistry()
    hooks.register(HookPoint.AFTER_CFG, lambda c: progress.skip() if progress.step == 1 else None, "t")
    r = run_job(state, Txt2ImgParams(steps=4, width=64, height=64, n_iter=2, do_not_save_samples=True), progress, hooks)
    # first batch cut (its rest counts as done), second complete
    assert not r.interrupted and len(r.images) == 2 and progress.step == progress.total_steps == 8


@pytest.mark.parametrize("full_res", [False, True])
def test_inpainting_keeps_unmasked_pixels(state, full_res):
    init = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 40, 40))
    r = run_job(state, Img2ImgParams(init_images=[init], mask=mask, mask_blur=0, inpaint_full_res=full_res,
                                     inpaint_full_res_padding=4, denoising_strength=0.9, steps=4, width=64,
                                     height=64, do_not_save_samples=True))
    out, src = px(r.images[0]), px(init)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], src[outside])
    assert np.abs(out[~outside] - src[~outside]).mean() > 5  # the masked square was repainted


def test_masked_content_latent_noise_and_nothing_replace_the_masked_area_only(state):
    init = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inside = np.asarray(mask) > 0
    start, out = {}, {}
    for fill in (1, 2, 3):  # original, latent noise, latent nothing
        hooks = HookRegistry()
        hooks.register(HookPoint.BEFORE_SAMPLING, lambda b: start.update({fill: (b.latents.clone(), float(b.sigmas[0]))}),
                       "t")
        params = Img2ImgParams(init_images=[init], mask=mask, mask_blur=0, inpainting_fill=fill, inpaint_full_res=False,
                               seed=2, denoising_strength=0.6, steps=4, width=64, height=64, do_not_save_samples=True)
        out[fill] = px(run_job(state, params, extra_hooks=hooks).images[0])
        assert np.array_equal(out[fill][~inside], px(init)[~inside])
    (x1, sigma), (x2, _), (x3, _) = start[1], start[2], start[3]
    box = (slice(None), slice(None), slice(2, 6), slice(2, 6))  # the masked square in latent space
    outside = torch.ones_like(x1, dtype=torch.bool)
    outside[box] = False
    assert torch.equal(x1[outside], x2[outside]) and torch.equal(x1[outside], x3[outside])
    # start = content + noise·σ; content: the picture's latents ("original"), zeros ("nothing"), the noise itself
    vae = state.models.current.vae
    with torch.inference_mode():
        picture = vae.encode(pil_to_tensor(init)).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(x1[box] - x3[box], picture[box], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(x2[box], x3[box] * (1 + sigma) / sigma)
    assert np.abs(out[2][inside] - out[1][inside]).mean() > 5


def test_img2img_strength_steps(state):
    init = t2i(state, seed=3).images[0]
    progress = JobProgress()
    run_job(state, Img2ImgParams(init_images=[init], denoising_strength=0.5, steps=10, width=64, height=64,
                                 do_not_save_samples=True), progress)
    assert progress.step == int(0.5 * 10) + 1  # A1111 keeps sigmas[n - t_enc - 1:]


def test_saved_png_carries_infotext(state):
    r = t2i(state, prompt="a (red:1.3) circle", negative_prompt="blue", seed=77, do_not_save_samples=False,
            sampler_name="DPM++ 2M", clip_skip=2)
    path = r.paths[0]
    assert path.parent.parent.name == "txt2img-images" and path.name.endswith("-77.png")
    parsed = parse_infotext(read_infotext_file(path))
    assert parsed["Prompt"] == "a (red:1.3) circle" and parsed["Negative prompt"] == "blue"
    assert (parsed["Seed"], parsed["Sampler"], parsed["Schedule type"]) == ("77", "DPM++ 2M", "Karras")
    assert (parsed["Steps"], parsed["Size-1"], parsed["Clip skip"]) == ("4", "64", "2")
    from sd_parsers import ParserManager

    meta = ParserManager().parse(str(path))
    assert meta.full_prompt == "a (red:1.3) circle"
    sampler = meta.samplers[0]
    values = {k: str(sampler.parameters[k]) for k in ("seed", "steps", "cfg_scale")}
    assert values == {"seed": "77", "steps": "4", "cfg_scale": "7.0"} and sampler.name.startswith("DPM++ 2M")


# --- hooks, CFG, schedules, errors -------------------------------------------------------------------------------

def test_hook_changes_output_and_broken_hook_is_skipped(state):
    plain = px(t2i(state).images[0])
    hooks = HookRegistry()
    hooks.register(HookPoint.AFTER_CFG, lambda c: setattr(c, "denoised", c.denoised * 0), "zeroer")
    changed = px(run_job(state, Txt2ImgParams(steps=4, width=64, height=64, seed=1, sampler_name="Euler",
                                              do_not_save_samples=True), extra_hooks=hooks).images[0])
    assert np.abs(plain - changed).mean() > 5

    broken = HookRegistry()
    broken.register(HookPoint.BEFORE_UNET, lambda c: 1 / 0, "broken-ext")
    broken.register(HookPoint.UNET_CALL, lambda c, nxt: {}["missing"], "broken-wrapper")
    r = run_job(state, Txt2ImgParams(steps=4, width=64, height=64, seed=1, sampler_name="Euler",
                                     do_not_save_samples=True), extra_hooks=broken)
    assert np.array_equal(px(r.images[0]), plain)
    assert any("broken-ext" in w and "ZeroDivisionError" in w for w in r.warnings)
    assert any("broken-wrapper" in w for w in r.warnings)


def test_cfg_one_skips_uncond_and_prompt_schedule_switches(state):
    rows, contexts = [], []
    hooks = HookRegistry()
    hooks.register(HookPoint.BEFORE_UNET, lambda c: (rows.append(c.x.shape[0]), contexts.append(c.context[0].clone())), "t")
    run_job(state, Txt2ImgParams(prompt="[red:blue:2] circle", steps=4, cfg_scale=1.0, width=64, height=64,
                                 sampler_name="Euler", do_not_save_samples=True), extra_hooks=hooks)
    assert rows == [1, 1, 1, 1]  # no uncond pass at CFG 1
    assert torch.equal(contexts[0], contexts[2]) and not torch.equal(contexts[2], contexts[3])  # switch after step 2
    rows.clear()
    run_job(state, Txt2ImgParams(prompt="a AND b:0.5", steps=2, width=64, height=64, sampler_name="Euler",
                                 do_not_save_samples=True), extra_hooks=hooks)
    assert rows == [3, 3]  # two sub-prompts + uncond in one batch


def test_ngms_leaves_out_the_uncond_pass_below_its_sigma(state):
    calls = []
    hooks = HookRegistry()
    hooks.register(HookPoint.BEFORE_UNET, lambda c: calls.append((c.step, float(c.sigma[0]), c.x.shape[0])), "t")
    plain = t2i(state, steps=6, prompt="red")
    threshold = 3.0
    r = run_job(state, Txt2ImgParams(prompt="red", steps=6, width=64, height=64, seed=1, sampler_name="Euler",
                                     s_min_uncond=threshold, do_not_save_samples=True), extra_hooks=hooks)
    assert len(calls) == 6 and any(s < threshold for _, s, _ in calls) and any(s >= threshold for _, s, _ in calls)
    assert [rows for _, _, rows in calls] == [1 if s < threshold and step % 2 else 2 for step, s, _ in calls]
    assert "NGMS: 3.0" in r.infotexts[0] and "NGMS all steps" not in r.infotexts[0]
    assert not np.array_equal(px(r.images[0]), px(plain.images[0]))
    # below every sigma on every step: the cond estimate alone, exactly CFG 1
    every = t2i(state, prompt="red", steps=6, s_min_uncond=99.0, override_settings={"s_min_uncond_all": True})
    assert np.array_equal(px(every.images[0]), px(t2i(state, prompt="red", steps=6, cfg_scale=1.0).images[0]))
    assert "NGMS all steps: True" in every.infotexts[0]
    assert np.array_equal(px(t2i(state, prompt="red", steps=6, s_min_uncond=0.0).images[0]), px(plain.images[0]))


def test_eta_from_the_request_or_the_settings_and_its_infotext_keys(state):
    def fields(result) -> dict:
        return parse_infotext(result.infotexts[0])

    euler, ancestral = t2i(state, prompt="red"), t2i(state, prompt="red", sampler_name="Euler a")
    assert "Eta" not in fields(ancestral) and fields(ancestral)["RNG"] == "CPU"  # A1111 writes RNG unless GPU
    still = t2i(state, prompt="red", sampler_name="Euler a", eta=0.0)  # no fresh noise: Euler a becomes Euler
    assert np.array_equal(px(still.images[0]), px(euler.images[0])) and fields(still)["Eta"] == "0.0"
    by_setting = t2i(state, prompt="red", sampler_name="Euler a", override_settings={"eta_ancestral": 0.0})
    assert np.array_equal(px(by_setting.images[0]), px(euler.images[0]))
    half = t2i(state, prompt="red", sampler_name="Euler a", eta=0.5)
    assert not np.array_equal(px(half.images[0]), px(ancestral.images[0])) and fields(half)["Eta"] == "0.5"

    ddim, ddim_eta = (t2i(state, prompt="red", sampler_name="DDIM", eta=eta) for eta in (None, 0.5))
    assert "Eta DDIM" not in fields(ddim) and fields(ddim_eta)["Eta DDIM"] == "0.5"
    assert not np.array_equal(px(ddim.images[0]), px(ddim_eta.images[0]))
    assert "Eta" not in fields(euler) and "Eta DDIM" not in fields(euler)  # Euler has no eta
    with pytest.raises(ParamError, match="eta"):
        t2i(state, eta=-1.0)


def test_ensd_and_rng_source_are_written_when_they_shape_the_image(state):
    ensd = {"eta_noise_seed_delta": 31337}
    plain, shifted = (t2i(state, prompt="red", sampler_name="Euler a", override_settings=o) for o in ({}, ensd))
    assert not np.array_equal(px(plain.images[0]), px(shifted.images[0]))
    assert "ENSD: 31337" in shifted.infotexts[0] and "ENSD" not in plain.infotexts[0]
    deterministic = t2i(state, prompt="red", override_settings=ensd)  # Euler draws no per-step noise
    assert "ENSD" not in deterministic.infotexts[0]
    assert "RNG" not in t2i(state, prompt="red", override_settings={"randn_source": "GPU"}).infotexts[0]


def test_sde_samplers_take_their_noise_from_the_seeds_brownian_trees(state):
    """As in A1111, DPM++ 2M SDE's per-step noise comes from one Brownian tree per seed, which ENSD does not touch
    (with the generators' per-step noise it would change the image)."""
    ensd = {"eta_noise_seed_delta": 31337}
    plain, shifted = (t2i(state, prompt="red", sampler_name="DPM++ 2M SDE", override_settings=o) for o in ({}, ensd))
    assert np.array_equal(px(plain.images[0]), px(shifted.images[0])) and "ENSD" not in shifted.infotexts[0]
    assert not np.array_equal(px(plain.images[0]), px(t2i(state, prompt="red", sampler_name="DPM++ 2M SDE",
                                                          seed=2).images[0]))


def test_bad_input_is_a_clear_error(state):
    with pytest.raises(ParamError, match="sampler_name.*Euler"):
        t2i(state, sampler_name="Nope")
    with pytest.raises(ParamError, match="steps"):
        t2i(state, steps=0)
    with pytest.raises(ParamError, match="sd_model_checkpoint"):
        t2i(state, override_settings={"sd_model_checkpoint": "missing"})
    r = t2i(state, width=70, prompt="((unbalanced [prompt:")
    assert r.images[0].size == (64, 64) and "multiple of 8" in r.warnings[0]


def test_override_settings_apply_to_one_job_only(state):
    plain = t2i(state, clip_skip=None)
    skipped = t2i(state, override_settings={"CLIP_stop_at_last_layers": 2})
    assert "Clip skip: 2" in skipped.infotexts[0] and state.settings.current.CLIP_stop_at_last_layers == 1
    assert not np.array_equal(px(plain.images[0]), px(skipped.images[0]))

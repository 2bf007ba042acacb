"""Hires fix (the shipped always-on extension) on a real tiny checkpoint: size, infotext, content, arguments."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from modules.cmd_args import REPO_ROOT
from modules.extensions import load_extensions
from modules.hooks import HookPoint
from modules.infotext import parse_infotext
from modules.processing.params import Txt2ImgParams
from modules.processing.progress import JobProgress
from modules.scripts import find_script, infotext_values, named_args, run_generation
from tests.engine_fixtures import make_state
from tests.upscaler_fixtures import DEMO_UPSCALER, write_compact
from webui.progress_html import progress_html

MODEL_UPSCALER = "tiny-compact-4x"  # random weights in Real-ESRGAN's compact layout


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("hires")
    esrgan = root / "models" / "ESRGAN"
    write_compact(esrgan / f"{MODEL_UPSCALER}.safetensors")
    if DEMO_UPSCALER.exists():
        shutil.copy(DEMO_UPSCALER, esrgan / DEMO_UPSCALER.name)
    state = make_state(root, {"tiny": "sd1"}, flags=["--esrgan-models-path", str(esrgan)])
    state.settings.update({"samples_save": False})
    load_extensions(state, [REPO_ROOT / "extensions"])
    return state


def _params(seed=11, **kw) -> Txt2ImgParams:
    return Txt2ImgParams(prompt="a red circle", seed=seed, steps=2, width=64, height=64, sampler_name="Euler", **kw)


def _hires(state, seed=11, **args):
    return run_generation(state, _params(seed), alwayson={"Hires fix": {"args": {"enable": True, **args}}})


def _final_latents(state, run) -> list:
    """The last denoised estimate of each sampling pass ``run()`` makes, read through a public engine hook.

    The tiny test checkpoint has random weights, so its VAE does not reproduce an image it encodes; the content
    of the two passes is compared in latent space, where the hires fix hands the first pass on."""
    seen: list = []

    def capture(event) -> None:
        if seen and seen[-1][0] == event.total_steps and event.step > seen[-1][1]:
            seen[-1] = (event.total_steps, event.step, event.denoised.clone())
        else:
            seen.append((event.total_steps, event.step, event.denoised.clone()))

    state.hooks.register(HookPoint.AFTER_CFG, capture, "test-capture")
    try:
        result = run()
    finally:
        state.hooks.unregister_owner("test-capture")
    return result, [latents for _, _, latents in seen]


def test_latent_hires_doubles_size_writes_a1111_keys_and_keeps_the_first_pass_content(state):
    _, (other,) = _final_latents(state, lambda: run_generation(state, _params(seed=12345)))
    result, (first, second) = _final_latents(state, lambda: _hires(state, denoising_strength=0.4))
    assert result.images[0].size == (128, 128)
    assert first.shape[-2:] == (8, 8) and second.shape[-2:] == (16, 16)
    pooled = torch.nn.functional.avg_pool2d(second, 2)
    assert (pooled - first).abs().mean() < 0.5 * (pooled - other).abs().mean()
    fields = parse_infotext(result.infotexts[0])
    assert fields["Size-1"] == "64" and fields["Size-2"] == "64"  # Size stays the first pass's, as in A1111
    assert fields["Hires upscale"] == "2"
    assert fields["Hires upscaler"] == "Latent"
    assert fields["Denoising strength"] == "0.4"
    assert "Hires steps" not in fields  # 0 = same steps: not written


def test_second_pass_keeps_the_requests_ngms(state):
    rows: list[tuple[int, int]] = []  # (latent side, UNet batch rows) per model call
    state.hooks.register(HookPoint.BEFORE_UNET, lambda c: rows.append((c.x.shape[-1], c.x.shape[0])), "test-rows")
    try:
        params = _params(s_min_uncond=99.0)  # above every sigma: the uncond pass is left out on every odd step
        result = run_generation(state, params, alwayson={"Hires fix": {"args": {"enable": True}}})
    finally:
        state.hooks.unregister_owner("test-rows")
    assert [r for side, r in rows if side == 8] == [2, 1]
    assert [r for side, r in rows if side == 16] == [2, 1]
    assert "NGMS: 99.0" in result.infotexts[0]


def test_pixel_upscaler_resize_to_width_keeps_aspect_and_records_resize(state):
    result = _hires(state, hr_upscaler="Lanczos", hr_resize_x=96, hr_second_pass_steps=3, denoising_strength=0.3,
                    hr_prompt="a blue circle")
    assert result.images[0].size == (96, 96)
    fields = parse_infotext(result.infotexts[0])
    assert "Hires resize: 96x0" in result.infotexts[0] and "Hires upscale" not in fields
    assert fields["Hires steps"] == "3" and fields["Hires upscaler"] == "Lanczos"
    assert fields["Hires prompt"] == "a blue circle"


def test_disabled_hires_is_a_plain_job(state):
    plain = run_generation(state, _params()).images[0]
    off = run_generation(state, _params(), alwayson={"hires fix": {"args": {"enable": False}}}).images[0]
    assert off.size == (64, 64) and np.array_equal(np.asarray(off), np.asarray(plain))


def test_arguments_by_name_by_position_and_from_an_a1111_request(state):
    script = find_script(state, "txt2img", "Hires fix")
    by_position = named_args(script, "txt2img", [True, "Nearest", 5])
    assert by_position["enable"] and by_position["hr_upscaler"] == "Nearest"
    assert by_position["hr_second_pass_steps"] == 5
    assert by_position["hr_scale"] == 2.0  # the rest keep their defaults
    assert script.args_from_request(enable_hr=False) is None
    mapped = script.args_from_request(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (bicubic)",
                                      hr_second_pass_steps=4, denoising_strength=0.55, hr_sampler_name="Euler a")
    assert named_args(script, "txt2img", mapped) == {**named_args(script, "txt2img", None), **mapped}
    old_name = script.args_from_request(enable_hr=True, hr_sampler_name="DPM++ 2M Karras")
    assert (old_name["hr_sampler_name"], old_name["hr_scheduler"]) == ("DPM++ 2M", "Karras")
    with pytest.raises(ValueError, match="hr_upscaler"):
        run_generation(state, _params(), alwayson={"Hires fix": {"args": {"enable": True, "hr_upscaler": "Bogus"}}})
    with pytest.raises(ValueError, match="unknown argument"):
        run_generation(state, _params(), alwayson={"Hires fix": {"args": {"upscale": 2}}})
    with pytest.raises(ValueError, match="hr_checkpoint_name: 'nope' is not one of Use same checkpoint, tiny"):
        run_generation(state, _params(),
                       alwayson={"Hires fix": {"args": {"enable": True, "hr_checkpoint_name": "nope"}}})


def test_hires_checkpoint_dropdown_lists_the_checkpoints_and_takes_a1111_names(state):
    script = find_script(state, "txt2img", "Hires fix")
    folder = state.checkpoints.roots[0]
    (folder / "sub").mkdir(exist_ok=True)
    shutil.copy(folder / "tiny.safetensors", folder / "sub" / "other.safetensors")  # added while the app runs
    try:
        control = next(c for c in script.controls("txt2img") if c.name == "hr_checkpoint_name")
        assert control.kind == "dropdown"
        assert control.choices == ("Use same checkpoint", "sub/other.safetensors", "tiny.safetensors")
        mapped = script.args_from_request(enable_hr=True, hr_checkpoint_name="other [0123456789]")  # A1111 title
        assert named_args(script, "txt2img", mapped)["hr_checkpoint_name"] == "sub/other.safetensors"
        pasted = script.values_from_infotext({"Hires upscale": 2, "Hires checkpoint": "other"})
        assert pasted["hr_checkpoint_name"] == "sub/other.safetensors"
    finally:
        shutil.rmtree(folder / "sub")
        state.checkpoints.refresh()


def test_panel_line_tells_the_size_the_second_pass_makes(state):
    script = find_script(state, "txt2img", "Hires fix")
    assert script.describe("txt2img", named_args(script, "txt2img", None), 64, 64) == \
        "Hires fix: from 64×64 to 128×128"
    resized = named_args(script, "txt2img", {"hr_resize_x": 96})
    assert script.describe("txt2img", resized, 64, 48) == "Hires fix: from 64×48 to 96×72"


def _watch(state, point, look, run):
    state.hooks.register(point, look, "test-watch")
    try:
        return run()
    finally:
        state.hooks.unregister_owner("test-watch")


def test_progress_counts_the_second_pass_and_says_hires_pass(state):
    progress = JobProgress()
    seen = []  # what the progress bar shows at each second-pass step (read before the step is counted)

    def look(event) -> None:
        if event.params.width == 128:
            seen.append((progress.fraction, progress.eta_seconds, progress_html(progress, 0)))

    hires = {"enable": True, "hr_second_pass_steps": 10, "denoising_strength": 0.5}
    _watch(state, HookPoint.AFTER_CFG, look,
           lambda: run_generation(state, _params(), progress, alwayson={"Hires fix": {"args": hires}}))
    # 2 first-pass steps, then the int(0.5 * 10) + 1 = 6 steps the second pass's sampler runs
    bars = [bar for _, _, bar in seen]
    assert len(bars) == 6 and all(f"Step {2 + k}/8" in bar for k, bar in enumerate(bars))  # it keeps rising
    assert "Hires pass 3/6" in bars[3]
    fractions = [f for f, _, _ in seen]
    assert fractions == sorted(set(fractions)) and 0 < fractions[0] and fractions[-1] < 1
    assert all(eta > 0 for _, eta, _ in seen)
    assert progress.step == progress.total_steps == 8 and progress.textinfo == "Hires pass 6/6"


def test_progress_of_a_batch_counts_each_images_second_pass(state):
    progress = JobProgress()
    batch_ends = []  # the job's step count once a first-pass batch and its second passes are done

    def look(event) -> None:
        if event.params.width == 64:
            batch_ends.append(progress.step)

    hires = {"enable": True, "hr_upscaler": "Lanczos", "hr_second_pass_steps": 4, "denoising_strength": 0.5}
    _watch(state, HookPoint.AFTER_DECODE, look, lambda: run_generation(
        state, _params(batch_size=2, n_iter=2), progress, alwayson={"Hires fix": {"args": hires}}))
    # each batch: 2 first-pass steps, then int(0.5 * 4) + 1 = 3 steps for each of its 2 images
    assert batch_ends == [8, 16] and progress.total_steps == 16
    assert progress.textinfo == "Hires pass 3/3, image 4/4"


@pytest.mark.parametrize("upscaler", [MODEL_UPSCALER, DEMO_UPSCALER.stem])
def test_a_model_upscaler_makes_the_target_size_from_its_own_upscale_and_is_named_in_the_infotext(state, upscaler):
    hires = {"enable": True, "hr_second_pass_steps": 2, "denoising_strength": 0.3}
    lanczos = run_generation(state, _params(), alwayson={"Hires fix": {"args": {**hires, "hr_upscaler": "Lanczos"}}})
    seen = []  # the job's progress line when the second pass starts: the model's last tile
    progress = JobProgress()
    tiles = {"ESRGAN_tile": 16, "ESRGAN_tile_overlap": 8}  # 64 px in 16 px tiles every 8 px: 7 × 7 tiles
    model = _watch(state, HookPoint.BEFORE_SAMPLING,
                   lambda e: seen.append(progress.textinfo) if e.params.width == 128 else None,
                   lambda: run_generation(state, _params(override_settings=tiles), progress,
                                          alwayson={"Hires fix": {"args": {**hires, "hr_upscaler": upscaler}}}))
    assert model.images[0].size == lanczos.images[0].size == (128, 128)
    assert seen == [f"Hires upscale: {upscaler}, tile 49/49"]
    difference = np.abs(np.asarray(model.images[0], np.int16) - np.asarray(lanczos.images[0], np.int16))
    assert difference.mean() > 1
    assert parse_infotext(model.infotexts[0])["Hires upscaler"] == upscaler
    assert f"Hires upscaler: {upscaler}," in model.infotexts[0]


def test_the_upscaler_list_holds_the_model_files_and_pasting_selects_one(state):
    script = find_script(state, "txt2img", "Hires fix")
    control = next(c for c in script.controls("txt2img") if c.name == "hr_upscaler")
    assert control.choices[:6] == ("Latent", "Latent (antialiased)", "Latent (bicubic)",
                                   "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)")
    assert control.choices[6:9] == ("None", "Lanczos", "Nearest") and MODEL_UPSCALER in control.choices[9:]
    pasted = infotext_values(state, "txt2img", parse_infotext(
        f"a red circle\nSteps: 2, Size: 64x64, Hires upscale: 2, Hires upscaler: {MODEL_UPSCALER}"))
    assert pasted["Hires fix"]["hr_upscaler"] == MODEL_UPSCALER
    missing = infotext_values(state, "txt2img", parse_infotext(
        "a red circle\nSteps: 2, Size: 64x64, Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+"))
    assert missing["Hires fix"]["enable"] and "hr_upscaler" not in missing["Hires fix"]  # not here: left as it is
    axis = next(a for a in state.extensions.contributions("xyz_axis") if a.label == "Hires upscaler")
    assert axis.parse(MODEL_UPSCALER.upper()) == MODEL_UPSCALER and MODEL_UPSCALER in axis.choices(state)
    with pytest.raises(ValueError, match="hr_upscaler: 'R-ESRGAN 4x\\+' is not one of"):
        run_generation(state, _params(),
                       alwayson={"Hires fix": {"args": {"enable": True, "hr_upscaler": "R-ESRGAN 4x+"}}})


def test_upscaler_none_resizes_as_a1111(state):
    result = _hires(state, hr_upscaler="None", hr_scale=1.5, hr_second_pass_steps=1)
    assert result.images[0].size == (96, 96)
    assert parse_infotext(result.infotexts[0])["Hires upscaler"] == "None"

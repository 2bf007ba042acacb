"""Hires fix (the shipped always-on extension) on a real tiny checkpoint: size, infotext, content, arguments."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.cmd_args import REPO_ROOT
from modules.extensions import load_extensions
from modules.hooks import HookPoint
from modules.infotext import parse_infotext
from modules.processing.params import Txt2ImgParams
from modules.scripts import find_script, named_args, run_generation
from tests.engine_fixtures import make_state


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    state = make_state(tmp_path_factory.mktemp("hires"), {"tiny": "sd1"})
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
    with pytest.raises(ValueError, match="hires checkpoint"):
        run_generation(state, _params(),
                       alwayson={"Hires fix": {"args": {"enable": True, "hr_checkpoint_name": "nope"}}})

"""ControlNet (the shipped always-on extension) on a tiny checkpoint with a tiny random ControlNet: loading both
weight layouts, weight-0 identity, guidance range, control modes, preprocessors, the API form and the infotext."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from modules.cmd_args import REPO_ROOT
from modules.controlnet import preprocessors
from modules.controlnet.loader import export_controlnet, load_controlnet
from modules.extensions import load_extensions
from modules.hooks import HookPoint
from modules.infotext import parse_infotext
from modules.processing.params import Txt2ImgParams
from modules.scripts import run_generation
from tests.engine_fixtures import make_state

EMBEDDING = (8, 8, 16, 16)  # a small hint embedding with the standard four stages (×8 down to the latents)


@pytest.fixture(scope="module")
def tiny_controlnet(tmp_path_factory):
    """(state, source ControlNetModel): the model written as an original-layout file and a diffusers folder."""
    from diffusers import ControlNetModel

    root = tmp_path_factory.mktemp("controlnet")
    state = make_state(root, {"tiny": "sd1"})
    state.settings.update({"samples_save": False})
    torch.manual_seed(3)
    source = ControlNetModel.from_unet(state.models.current.unet, conditioning_embedding_out_channels=EMBEDDING)
    with torch.no_grad():  # diffusers zero-initialises the output convolutions: give them values the tests can see
        for p in source.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.3)
    folder = root / "models" / "ControlNet"
    export_controlnet(source, folder / "tiny-cn.safetensors", {"note": "test"})
    source.save_pretrained(folder / "tiny-cn-diffusers")
    load_extensions(state, [REPO_ROOT / "extensions"])
    return state, source.eval()


@pytest.fixture
def state(tiny_controlnet):
    return tiny_controlnet[0]


def b64png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def square_image(size=64) -> Image.Image:
    img = np.zeros((size, size, 3), np.uint8)
    img[16:48, 20:44] = 255
    return Image.fromarray(img)


def _params(steps=2, **kw) -> Txt2ImgParams:
    return Txt2ImgParams(prompt="a red circle", seed=7, steps=steps, width=64, height=64, sampler_name="Euler",
                         cfg_scale=5, **kw)


def _unit(**kw) -> dict:
    return {"input_image": b64png(square_image()), "module": "none", "model": "tiny-cn", **kw}


def _run(state, *units, steps=2):
    alwayson = {"ControlNet": {"args": list(units)}} if units else None
    return run_generation(state, _params(steps), alwayson=alwayson)


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def _residuals_seen(state, run):
    """Per UNet call: (step, is_uncond rows, down residuals, mid residual) as the UNet received them."""
    seen = []
    state.hooks.register(HookPoint.AFTER_UNET, lambda e: seen.append(
        (e.call.step, list(e.call.is_uncond), e.call.down_residuals, e.call.mid_residual)), "test-spy")
    try:
        result = run()
    finally:
        state.hooks.unregister_owner("test-spy")
    return result, seen


def test_original_and_diffusers_layouts_load_to_the_same_weights(tiny_controlnet):
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    state, source = tiny_controlnet
    folder = state.options.controlnet_dir
    original = load_file(folder / "tiny-cn.safetensors")
    assert all(k.startswith("control_model.") for k in original)
    assert {"control_model.input_hint_block.14.weight", "control_model.zero_convs.0.0.weight",
            "control_model.middle_block_out.0.weight"} <= set(original)
    expected = source.state_dict()
    by_diffusers = convert_controlnet_checkpoint(original, dict(source.config))  # diffusers' own converter agrees
    for model in (load_controlnet(folder / "tiny-cn.safetensors"), load_controlnet(folder / "tiny-cn-diffusers")):
        got = model.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) and torch.equal(by_diffusers[k], expected[k]) for k in expected)


def test_weight_zero_or_no_unit_equals_plain_txt2img_bit_for_bit(state):
    plain = _pixels(_run(state))
    assert np.array_equal(_pixels(_run(state, _unit(weight=0))), plain)
    assert np.array_equal(_pixels(_run(state, _unit(enabled=False))), plain)
    assert not np.array_equal(_pixels(_run(state, _unit(weight=1))), plain)


def test_guidance_start_and_end_limit_the_steps_that_get_residuals(state):
    _, seen = _residuals_seen(state, lambda: _run(state, _unit(guidance_start=0.2, guidance_end=0.5), steps=10))
    assert {step for step, _, down, _ in seen if down is not None} == {2, 3, 4, 5}
    assert {step for step, _, down, _ in seen if down is None} == {0, 1, 6, 7, 8, 9}


def test_control_modes_soft_weights_and_cond_only(state):
    runs = {mode: _residuals_seen(state, lambda m=mode: _run(state, _unit(control_mode=m), steps=1))[1][0]
            for mode in ("Balanced", "My prompt is more important", "ControlNet is more important")}
    _, uncond, down, mid = runs["Balanced"]
    _, _, soft_down, soft_mid = runs["My prompt is more important"]
    n = len(down) + 1
    assert torch.allclose(soft_mid, mid) and torch.allclose(soft_down[0], down[0] * 0.825 ** (n - 1))
    assert torch.allclose(soft_down[-1], down[-1] * 0.825)
    _, _, cn_down, cn_mid = runs["ControlNet is more important"]
    rows = torch.tensor(uncond)
    assert cn_mid[rows].abs().sum() == 0 and all(d[rows].abs().sum() == 0 for d in cn_down)
    assert torch.allclose(cn_mid[~rows], soft_mid[~rows])


def test_two_units_add_their_residuals(state):
    _, ((_, _, one, _),) = _residuals_seen(state, lambda: _run(state, _unit(weight=0.5), steps=1))
    _, ((_, _, two, _),) = _residuals_seen(state, lambda: _run(state, _unit(weight=0.5), _unit(weight=0.5), steps=1))
    assert torch.allclose(two[0], 2 * one[0], atol=1e-5)


def test_canny_of_a_square_is_its_outline():
    edges = preprocessors.detect(square_image(), "canny", 64)[..., 0] > 0
    ring = np.zeros((64, 64), bool)
    ring[15:50, 19:46] = True
    ring[18:46, 22:42] = False  # a band of ±2 px around the square's border
    assert edges.sum() > 0.9 * 2 * (32 + 24) and not (edges & ~ring).any()


def test_invert_threshold_and_resize_modes():
    img = np.array([[[10, 200, 127]]], np.uint8)
    assert preprocessors.detect(img, "invert (from white bg & black line)").tolist() == [[[245, 55, 128]]]
    assert preprocessors.detect(img, "threshold", 1, threshold_a=127).tolist() == [[[0, 255, 0]]]
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, :10] = 255
    assert preprocessors.fit(wide, 10, 10, "Just Resize").shape == (10, 10, 3)
    assert preprocessors.fit(wide, 10, 10, "Crop and Resize")[:, :5].min() == 255  # the centre, left half white
    filled = preprocessors.fit(wide, 10, 10, "Resize and Fill")
    assert filled[:2].tolist() == filled[-2:].tolist() and filled[5, 0].tolist() == [255, 255, 255]
    assert preprocessors.pixel_perfect_resolution((20, 10), 64, 64, "Crop and Resize") == 64
    assert preprocessors.pixel_perfect_resolution((20, 10), 64, 64, "Resize and Fill") == 32


def test_infotext_field_as_sd_webui_controlnet_writes_it(state):
    result = _run(state, _unit(module="canny", weight=0.5, guidance_end=0.8, pixel_perfect=True), steps=1)
    text = parse_infotext(result.infotexts[0])["ControlNet 0"]
    assert text.startswith("Module: canny, Model: tiny-cn [")
    assert ("Weight: 0.5, Resize Mode: Crop and Resize, Processor Res: 64, Threshold A: 100, Threshold B: 200, "
            "Guidance Start: 0, Guidance End: 0.8, Pixel Perfect: True, Control Mode: Balanced") in text


def test_api_unit_dicts_unknown_model_and_detect_route(state):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.api.routes import build_router

    app = FastAPI()
    app.include_router(build_router(state))
    state.extensions.app_started(app)
    client = TestClient(app)
    body = {"prompt": "a red circle", "seed": 7, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
            "cfg_scale": 5}
    units = [_unit(module="invert", control_mode=2, resize_mode=0, weight=0.7), _unit(model="tiny-cn-diffusers")]
    response = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": units}}})
    assert response.status_code == 200, response.text
    info = response.json()["info"]
    assert "ControlNet 0: \\\"Module: invert, Model: tiny-cn [" in info and "ControlNet 1: " in info
    assert "Control Mode: ControlNet is more important" in info and "Resize Mode: Just Resize" in info
    bad = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [
        _unit(model="no-such-model")]}}})
    assert bad.status_code == 400 and "no-such-model" in bad.json()["detail"]
    assert "tiny-cn-diffusers" in str(client.get("/controlnet/model_list").json()["model_list"])
    detected = client.post("/controlnet/detect", json={"controlnet_module": "canny",
                                                       "controlnet_input_images": [b64png(square_image())],
                                                       "controlnet_processor_res": 64})
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(detected.json()["images"][0]))))
    assert edges.shape[:2] == (64, 64) and edges[32, 32].max() == 0 and edges[16, 30].max() == 255


def test_img2img_unit_without_image_uses_the_init_image_and_txt2img_refuses_it(state):
    from modules.processing.params import Img2ImgParams

    unit = {"module": "canny", "model": "tiny-cn", "processor_res": 64}
    params = Img2ImgParams(prompt="a red circle", seed=7, steps=2, width=64, height=64, sampler_name="Euler",
                           init_images=[square_image()], denoising_strength=0.6)
    _, seen = _residuals_seen(state, lambda: run_generation(state, params, alwayson={"ControlNet": {"args": [unit]}}))
    assert seen and all(down is not None for _, _, down, _ in seen)
    with pytest.raises(ValueError, match="ControlNet: unit 0: no input image"):
        _run(state, unit)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_layouts_round_trip_through_both_namings(tmp_path, family):
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from tests import tiny_models

    source = ControlNetModel.from_unet(tiny_models.build(family)[0], conditioning_embedding_out_channels=EMBEDDING)
    expected = source.state_dict()
    diffusers_names = tmp_path / "diffusers-names.safetensors"
    save_file({k: v.contiguous() for k, v in expected.items()}, diffusers_names)
    for path in (export_controlnet(source, tmp_path / "original.safetensors"), diffusers_names):
        model = load_controlnet(path)
        assert dict(model.config)["addition_embed_type"] == source.config["addition_embed_type"]
        assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)


@pytest.mark.parametrize("hr_option, first, second", [("Both", True, True), ("Low res only", True, False),
                                                      ("High res only", False, True)])
def test_units_condition_the_hires_pass_as_their_hr_option_says(state, hr_option, first, second):
    seen = []
    state.hooks.register(HookPoint.AFTER_UNET, lambda e: seen.append(
        (e.call.x.shape[-1], e.call.down_residuals is not None)), "test-spy")
    alwayson = {"ControlNet": {"args": [_unit(hr_option=hr_option)]},
                "Hires fix": {"args": {"enable": True, "hr_scale": 2, "hr_second_pass_steps": 2,
                                       "denoising_strength": 0.6}}}
    try:
        result = run_generation(state, _params(2), alwayson=alwayson)
    finally:
        state.hooks.unregister_owner("test-spy")
    assert result.images[0].size == (128, 128)
    by_size = {size: {got for s, got in seen if s == size} for size in (8, 16)}
    assert by_size == {8: {first}, 16: {second}}
    if hr_option != "Both":
        assert f"Hr Option: {hr_option}" in result.infotexts[0]

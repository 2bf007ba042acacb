"""The A1111-compatible HTTP API against a real server process, driven by the PyPI ``webuiapi`` client and httpx."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image
from sd_parsers import ParserManager

from tests.api_server import running_server

SMALL = {"width": 64, "height": 64, "steps": 3}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("api")) as url:
        yield url


@pytest.fixture
def api(server):
    parts = urlsplit(server)
    return webuiapi.WebUIApi(host=parts.hostname, port=parts.port, sampler="Euler", steps=3)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=f"{server}/sdapi/v1", timeout=120) as client:
        yield client


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def b64png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str):
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_txt2img_through_webuiapi_returns_pngs_whose_infotext_sd_parsers_reads(api):
    result = api.txt2img(prompt="a red circle", negative_prompt="blurry", seed=42, cfg_scale=5, n_iter=2, **SMALL)
    assert len(result.images) == 2 and result.image.size == (64, 64)
    assert result.info["all_seeds"] == [42, 43] and result.info["sampler_name"] == "Euler"
    assert result.parameters["prompt"] == "a red circle"
    parsed = ParserManager().parse(result.images[1])
    sampler = parsed.samplers[0]
    assert sampler.name == "Euler" and sampler.model.name == "tiny"
    assert sampler.parameters["seed"] == "43" and sampler.parameters["steps"] == "3"
    assert sampler.parameters["cfg_scale"] == "5.0"
    assert [p.value for p in sampler.prompts] == ["a red circle"]
    assert [p.value for p in sampler.negative_prompts] == ["blurry"]
    assert result.info["infotexts"][1] == result.images[1].info["parameters"]


def test_img2img_and_inpainting_with_mask_through_webuiapi(api):
    yy, xx = np.mgrid[0:64, 0:64]
    init = Image.fromarray(np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], -1).astype(np.uint8))
    plain = api.img2img(images=[init], denoising_strength=0.5, seed=3, **SMALL)
    assert plain.image.size == (64, 64) and plain.info["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5" in plain.info["infotexts"][0]

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    painted = api.img2img(images=[init], mask_image=mask, mask_blur=0, inpainting_fill=1, inpaint_full_res=False,
                          denoising_strength=1.0, seed=3, **SMALL)
    out, src = pixels(painted.image), pixels(init)
    assert np.array_equal(out[:, 40:], src[:, 40:])  # unmasked pixels are the original's
    assert np.abs(out[:, :24] - src[:, :24]).mean() > 10  # the masked part was repainted
    assert "Mask blur: 0" in painted.info["infotexts"][0]


def test_set_model_through_options_and_list_models_samplers_loras(api):
    titles = api.util_get_model_names()
    assert [t.split(" [")[0] for t in titles] == ["tiny-b.safetensors", "tiny.safetensors"]
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM"} <= set(api.util_get_sampler_names())
    assert {"karras", "automatic"} <= set(api.util_get_scheduler_names())
    assert [(lora["name"], lora["alias"]) for lora in api.get_loras()] == [("tiny-lora", "tinystyle")]
    try:
        api.util_set_model("tiny-b.safetensors", find_closest=False)
        assert api.util_get_current_model().startswith("tiny-b.safetensors")
        assert api.txt2img(prompt="x", seed=1, **SMALL).info["sd_model_name"] == "tiny-b"
    finally:
        api.set_options({"sd_model_checkpoint": "tiny"})
    assert api.txt2img(prompt="x", seed=1, **SMALL).info["sd_model_name"] == "tiny"


def test_png_info_reads_what_txt2img_wrote(api):
    image = api.txt2img(prompt="a green square", seed=7, **SMALL).image
    info = api.png_info(image)
    assert info.info.startswith("a green square\nSteps: 3, Sampler: Euler")
    assert str(info.parameters["Seed"]) == "7" and info.parameters["Prompt"] == "a green square"


def test_interrupt_stops_the_running_job_and_progress_shows_it_with_a_live_preview(api, http):
    box = {}
    worker = threading.Thread(target=lambda: box.update(result=api.txt2img(prompt="long", seed=5, width=64,
                                                                            height=64, steps=400)))
    worker.start()
    seen = None
    for _ in range(600):
        progress = http.get("/progress").json()
        if progress["state"]["sampling_step"] >= 2 and progress["current_image"]:
            seen = progress
            break
        time.sleep(0.05)
    assert seen is not None, "the job never showed progress"
    assert seen["state"]["sampling_steps"] == 400 and 0 < seen["progress"] < 1 and seen["eta_relative"] > 0
    assert decode(seen["current_image"]).size == (64, 64)
    assert "step" in seen["textinfo"]
    api.interrupt()
    worker.join(120)
    result = box["result"]
    assert result.info["interrupted"] is True and len(result.images) == 1
    assert http.get("/progress").json()["state"]["job_count"] == 0


def test_infotext_field_fills_what_the_request_leaves_out(http):
    infotext = "a blue square\nNegative prompt: ugly\nSteps: 2, Sampler: Euler, CFG scale: 4, Seed: 77, Size: 64x64"
    info = json.loads(http.post("/txt2img", json={"infotext": infotext}).json()["info"])
    assert (info["prompt"], info["negative_prompt"], info["steps"], info["cfg_scale"], info["seed"]) == \
        ("a blue square", "ugly", 2, 4.0, 77)
    assert "RNG" not in info["infotexts"][0]  # no RNG key: A1111's default, GPU (the device's generator)
    given = json.loads(http.post("/txt2img", json={"infotext": infotext, "seed": 5}).json()["info"])
    assert given["seed"] == 5 and given["steps"] == 2
    ngms = json.loads(http.post("/txt2img", json={"infotext": infotext + ", NGMS: 2.5, NGMS all steps: True"})
                      .json()["info"])
    assert "NGMS: 2.5, NGMS all steps: True" in ngms["infotexts"][0]
    # settings named in the infotext apply; a value this app lacks (A1111's NV RNG) keeps the current one
    a1111 = infotext.replace("Sampler: Euler,", "Sampler: Euler a,") + ", ENSD: 31337, RNG: NV, Eta: 0.5"
    info = json.loads(http.post("/txt2img", json={"infotext": a1111}).json()["info"])["infotexts"][0]
    assert "ENSD: 31337" in info and "Eta: 0.5" in info and "RNG: CPU" in info


def test_hires_fields_and_alwayson_scripts_named_and_positional(http):
    hires = http.post("/txt2img", json={**SMALL, "steps": 2, "seed": 1, "enable_hr": True, "hr_scale": 1.5,
                                        "hr_upscaler": "Latent", "denoising_strength": 0.5})
    assert hires.status_code == 200, hires.text
    assert decode(hires.json()["images"][0]).size == (96, 96)
    assert "Hires upscale: 1.5" in json.loads(hires.json()["info"])["infotexts"][0]
    named = http.post("/txt2img", json={**SMALL, "steps": 2, "seed": 1,
                                        "alwayson_scripts": {"Hires fix": {"args": {"enable": True}}}})
    positional = http.post("/txt2img", json={**SMALL, "steps": 2, "seed": 1,
                                             "alwayson_scripts": {"hires fix": {"args": [True]}}})
    assert decode(named.json()["images"][0]).size == decode(positional.json()["images"][0]).size == (128, 128)


def test_selectable_script_by_name_with_named_or_positional_args(http):
    for args in ({"x_type": "Seed", "x_values": "1,2"}, ["Seed", "1,2"]):
        response = http.post("/txt2img", json={**SMALL, "steps": 2, "script_name": "x/y/z plot", "script_args": args})
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert len(response.json()["images"]) == 3  # the grid, then one image per X value
        assert ["Seed: 1" in t for t in info["infotexts"][1:]] == [True, False]
        assert "Seed: 2" in info["infotexts"][2]


BAD_REQUESTS = [
    ("/txt2img", {"sampler_name": "Nope"}, 400, "sampler_name"),
    ("/txt2img", {"scheduler": "Nope"}, 400, "scheduler"),
    ("/txt2img", {"enable_hr": True, "hr_upscaler": "Nope"}, 400, "hr_upscaler"),
    ("/txt2img", {"script_name": "Nope"}, 400, "script_name"),
    ("/txt2img", {"alwayson_scripts": {"Nope": {"args": []}}}, 400, "alwayson_scripts"),
    ("/txt2img", {"alwayson_scripts": {"Hires fix": {"args": {"hr_scale": "x"}}}}, 400, "hr_scale"),
    ("/txt2img", {"script_name": "x/y/z plot", "script_args": {"x_type": "Nope"}}, 400, "x_type"),
    # a 40-byte range that once expanded to a billion seeds before anything checked its size
    ("/txt2img", {"script_name": "x/y/z plot", "script_args": {"x_type": "Seed", "x_values": "1-1000000000"}}, 400,
     "at most 1000"),
    ("/txt2img", {"script_name": "x/y/z plot", "script_args": {"x_type": "Seed", "x_values": "1-2 [300000000]"}}, 400,
     "at most 1000"),
    ("/txt2img", {"script_name": "x/y/z plot", "script_args": {"x_type": "Seed", "x_values": "1-40",
                                                              "y_type": "Steps", "y_values": "1-30"}}, 400, "1200 cells"),
    ("/txt2img", {"script_name": "x/y/z plot", "batch_size": 2, "script_args": {"x_type": "Seed", "x_values": "1-600"}},
     400, "1200 images in 600 jobs"),
    ("/txt2img", {"steps": 0}, 422, "steps"),
    ("/txt2img", {"steps": 10**9}, 422, "steps"),
    ("/txt2img", {"width": 100000}, 422, "width"),
    ("/txt2img", {"batch_size": 100000}, 422, "batch_size"),
    ("/txt2img", {"width": 4096, "height": 4096, "batch_size": 64}, 422, "batch_size"),
    ("/txt2img", {"override_settings": {"sd_model_checkpoint": "missing.safetensors"}}, 400, "sd_model_checkpoint"),
    ("/txt2img", {"override_settings": {"sd_model_checkpoint": "../../../etc/passwd"}}, 400, "sd_model_checkpoint"),
    ("/txt2img", {"override_settings": {"no_such_setting": 1}}, 400, "override_settings"),
    ("/txt2img", {"override_settings": {"sd_vae": "missing.safetensors"}}, 400, "sd_vae"),
    ("/txt2img", {"steps": "many"}, 422, "steps"),
    ("/txt2img", {"s_min_uncond": -1}, 422, "s_min_uncond"),
    ("/txt2img", {"eta": -0.5}, 422, "eta"),
    ("/txt2img", {"override_settings": {"randn_source": "NV"}}, 400, "override_settings"),
    ("/img2img", {"init_images": ["not base64 !!"]}, 400, "init_images[0]"),
    ("/img2img", {"init_images": [base64.b64encode(b"hello").decode()]}, 400, "init_images[0]"),
    ("/img2img", {"init_images": []}, 422, "init_images"),
    ("/img2img", {"init_images": ["iVBORw0KGgo="], "denoising_strength": 2}, 422, "denoising_strength"),
    ("/png-info", {"image": "%%%"}, 400, "image"),
    ("/options", {"sd_model_checkpoint": "missing"}, 400, "sd_model_checkpoint"),
    ("/options", {"sd_model_checkpoint": "/etc/passwd"}, 400, "sd_model_checkpoint"),
    ("/options", {"CLIP_stop_at_last_layers": "two"}, 400, "CLIP_stop_at_last_layers"),
]


@pytest.mark.parametrize("path,body,status,field", BAD_REQUESTS)
def test_bad_input_is_a_4xx_json_error_naming_the_field(http, path, body, status, field):
    response = http.post(path, json={**SMALL, **body} if path != "/options" and path != "/png-info" else body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) >= {"error", "detail"} and field in payload["detail"]
    assert "Traceback" not in response.text


def test_malformed_json_is_422(http):
    response = http.post("/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "error" in response.json()


@pytest.mark.parametrize("path", ["options", "cmd-flags", "sd-models", "sd-vae", "loras", "embeddings", "samplers",
                                  "schedulers", "upscalers", "latent-upscale-modes", "prompt-styles", "scripts",
                                  "script-info", "extensions", "memory", "progress"])
def test_listing_endpoints_answer_json(http, path):
    response = http.get(f"/{path}")
    assert response.status_code == 200 and response.json() is not None


def test_listings_carry_what_clients_look_for(http):
    assert http.get("/prompt-styles").json() == [
        {"name": "bright", "prompt": "{prompt}, bright colors", "negative_prompt": "dark"}]
    assert "hires fix" in http.get("/scripts").json()["txt2img"]
    info = {s["name"]: s for s in http.get("/script-info").json()}
    assert info["hires fix"]["is_alwayson"] and info["hires fix"]["args"][0]["value"] is False
    assert {e["name"] for e in http.get("/extensions").json()} >= {"hires-fix", "xyz-plot"}
    assert [m["name"] for m in http.get("/latent-upscale-modes").json()][0] == "Latent"
    assert {"None", "Lanczos"} <= {u["name"] for u in http.get("/upscalers").json()}
    memory = http.get("/memory").json()
    assert memory["ram"]["total"] > 0 and "cuda" in memory
    assert http.get("/cmd-flags").json()["nowebui"] is True


def test_refresh_unload_and_reload_checkpoint(http):
    for path in ("refresh-checkpoints", "refresh-vae", "refresh-loras", "refresh-embeddings", "reload-checkpoint"):
        assert http.post(f"/{path}").status_code == 200
    assert http.post("/unload-checkpoint").status_code == 200
    again = http.post("/txt2img", json={**SMALL, "seed": 1})  # the next job loads the model again
    assert again.status_code == 200 and json.loads(again.json()["info"])["sd_model_name"] == "tiny"


def test_openapi_docs(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    body = schema["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert body["steps"]["default"] == 50 and body["cfg_scale"]["default"] == 7.0 and body["width"]["default"] == 512
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress", "/sdapi/v1/options"} <= set(schema["paths"])
    assert httpx.get(f"{server}/docs").status_code == 200

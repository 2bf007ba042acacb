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
from PIL import Image, PngImagePlugin
from sd_parsers import ParserManager

from tests import tiny_upscaler
from tests.api_server import running_server

SMALL = {"width": 64, "height": 64, "steps": 3}


@pytest.fixture(scope="module")
def api_root(tmp_path_factory):
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def server(api_root):
    upscalers = tiny_upscaler.write(api_root / "upscalers").parent
    with running_server(api_root, "--esrgan-models-path", str(upscalers)) as url:
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
                                  "script-info", "extensions", "memory", "progress", "realesrgan-models",
                                  "face-restorers", "hypernetworks"])
def test_listing_endpoints_answer_json(http, path):
    response = http.get(f"/{path}")
    assert response.status_code == 200 and response.json() is not None


def test_model_listings_name_what_is_installed(http):
    assert {"tiny", "tiny-b"} <= {m["model_name"] for m in http.get("/sd-models").json()}
    assert http.get("/options").json()["sd_model_checkpoint"].startswith("tiny.safetensors")
    assert "tiny-lora" in {lora["name"] for lora in http.get("/loras").json()}
    assert {"Euler a", "DPM++ 2M"} <= {s["name"] for s in http.get("/samplers").json()}
    assert {"Karras", "Exponential"} <= {s["label"] for s in http.get("/schedulers").json()}
    assert set(http.get("/embeddings").json()) == {"loaded", "skipped"}
    assert http.get("/progress").json()["state"]["job_count"] == 0


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


def test_refresh_lists_files_added_while_running(http, api_root):
    import shutil

    import torch
    from safetensors.torch import save_file

    from tests.api_server import _write_lora

    listed = {
        "refresh-checkpoints": lambda: {m["model_name"] for m in http.get("/sd-models").json()},
        "refresh-vae": lambda: {v["model_name"] for v in http.get("/sd-vae").json()},
        "refresh-loras": lambda: {lora["name"] for lora in http.get("/loras").json()},
        "refresh-embeddings": lambda: set(http.get("/embeddings").json()["loaded"]),
    }
    names = dict(zip(listed, ("added", "added-vae.safetensors", "added-lora", "added-word")))
    assert not any(names[route] in listing() for route, listing in listed.items())  # scanned before the files came
    models = api_root / "models"
    shutil.copy(models / "Stable-diffusion" / "tiny.safetensors", models / "Stable-diffusion" / "added.safetensors")
    (models / "VAE").mkdir(exist_ok=True)
    shutil.copy(models / "Stable-diffusion" / "tiny.safetensors", models / "VAE" / "added-vae.safetensors")
    _write_lora(models / "Lora" / "added-lora.safetensors")
    (api_root / "embeddings").mkdir(exist_ok=True)
    save_file({"emb_params": torch.randn(2, 32)}, str(api_root / "embeddings" / "added-word.safetensors"))
    for route, listing in listed.items():
        assert names[route] not in listing(), route  # listings come from the last scan …
        assert http.post(f"/{route}").status_code == 200
        assert names[route] in listing(), route  # … which the refresh route repeats


def test_skip_ends_the_current_image_and_the_job_goes_on(http):
    body = {**SMALL, "prompt": "a red circle", "seed": 21, "steps": 60, "n_iter": 2, "sampler_name": "Euler"}
    reference = [decode(i) for i in http.post("/txt2img", json=body).json()["images"]]
    box = {}
    worker = threading.Thread(target=lambda: box.update(response=http.post("/txt2img", json=body)))
    worker.start()
    skipped_at = None
    for _ in range(3000):
        step = http.get("/progress?skip_current_image=true").json()["state"]["sampling_step"]
        if 1 <= step < 50:  # inside the first image's 60 steps
            assert http.post("/skip").status_code == 200
            skipped_at = step
            break
        time.sleep(0.01)
    worker.join(300)
    assert skipped_at is not None, "the first image never showed progress"
    payload = box["response"].json()
    images = [decode(i) for i in payload["images"]]
    assert len(images) == 2 and json.loads(payload["info"])["all_seeds"] == [21, 22]
    assert np.array_equal(pixels(images[1]), pixels(reference[1]))  # the next image: all its steps
    assert np.abs(pixels(images[0]) - pixels(reference[0])).mean() > 2  # the skipped one stopped early


def test_openapi_docs(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    body = schema["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert body["steps"]["default"] == 50 and body["cfg_scale"]["default"] == 7.0 and body["width"]["default"] == 512
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress", "/sdapi/v1/options"} <= set(schema["paths"])
    assert httpx.get(f"{server}/docs").status_code == 200


def test_extra_single_image_through_webuiapi_upscales_with_the_model_and_keeps_the_parameters(api, http, api_root):
    source = Image.new("RGB", (40, 32), (40, 90, 200))
    source.paste((230, 200, 40), (0, 0, 20, 32))
    result = api.extra_single_image(source, upscaler_1=tiny_upscaler.NAME, upscaling_resize=2)
    image = result.image
    assert image.size == (80, 64)
    text = f"Postprocess upscale by: 2, Postprocess upscaler: {tiny_upscaler.NAME}"
    assert result.info == f"<p>{text}</p>" and image.info["postprocessing"] == text
    back = pixels(image.resize(source.size, Image.Resampling.BOX))
    assert abs((back[..., 0] - pixels(source)[..., 0]).mean() - tiny_upscaler.RED_TINT * 255) < 4  # the model ran
    assert np.abs(back[..., 1:] - pixels(source)[..., 1:]).mean() < 4
    assert not (api_root / "data" / "outputs" / "extras-images").exists()  # A1111's API saves nothing

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a prompt\nSteps: 5, Seed: 3, Size: 40x32")
    buffer = io.BytesIO()
    source.save(buffer, format="PNG", pnginfo=info)
    sent = http.post("/extra-single-image", json={"image": base64.b64encode(buffer.getvalue()).decode(),
                                                  "upscaler_1": "Nearest", "upscaling_resize": 1.5})
    back = decode(sent.json()["image"])
    assert back.size == (60, 48) and back.info["parameters"] == "a prompt\nSteps: 5, Seed: 3, Size: 40x32"
    assert back.info["postprocessing"] == "Postprocess upscale by: 1.5, Postprocess upscaler: Nearest"


def test_extra_batch_images_scale_to_with_two_upscalers_and_the_face_restoration_warning(api):
    images = [Image.new("RGB", (48, 32), (200, 30, 30)), Image.new("RGB", (30, 40), (30, 30, 200))]
    result = api.extra_batch_images(images, name_list=["a.png", "b.png"], resize_mode=1, upscaling_resize_w=64,
                                    upscaling_resize_h=48, upscaling_crop=True, upscaler_1="Lanczos",
                                    upscaler_2=tiny_upscaler.NAME, extras_upscaler_2_visibility=0.5,
                                    gfpgan_visibility=0.8)
    assert [i.size for i in result.images] == [(64, 48), (64, 48)]
    assert abs(pixels(result.images[1])[..., 0].mean() - 30 - tiny_upscaler.RED_TINT * 255 / 2) < 3  # half blended
    assert "Postprocess upscale to: 64x48, Postprocess crop to: 64x48, Postprocess upscaler: Lanczos, " \
           f"Postprocess upscaler 2: {tiny_upscaler.NAME}" in result.info
    assert "face restoration (GFPGAN, CodeFormer) is not available" in result.info
    assert result.json["warnings"][0].startswith("face restoration")


@pytest.mark.parametrize("body, status, field", [
    ({"upscaler_1": "R-ESRGAN 4x+"}, 400, "upscaler_1: unknown upscaler 'R-ESRGAN 4x+'"),
    ({"upscaler_1": "Lanczos", "upscaler_2": "ScuNET"}, 400, "upscaler_2: unknown upscaler"),
    ({"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 16000, "upscaling_resize_h": 16000}, 400,
     "upscaling_resize_w: 8×8 would become 16000×16000"),
    ({"upscaling_resize": 0}, 422, "upscaling_resize"),
    ({"resize_mode": 2}, 422, "resize_mode"),
    ({"image": "not base64!"}, 400, "image: invalid base64"),
])
def test_extra_single_image_refusals_name_the_field(http, body, status, field):
    response = http.post("/extra-single-image", json={"image": b64png(Image.new("RGB", (8, 8))), **body})
    assert response.status_code == status and field in response.json()["detail"], response.text


def test_extra_batch_images_refusals_name_the_image(http):
    good = {"data": b64png(Image.new("RGB", (8, 8))), "name": "a.png"}
    bad = http.post("/extra-batch-images", json={"imageList": [good, {"data": "AAAA", "name": "b.png"}]})
    assert bad.status_code == 400 and "imageList[1].data: not a readable image" in bad.json()["detail"]
    empty = http.post("/extra-batch-images", json={"imageList": []})
    assert empty.status_code == 422 and "imageList" in empty.json()["detail"]


def test_upscaler_listings_show_the_model_files(http):
    listed = {u["name"]: u for u in http.get("/upscalers").json()}
    assert list(listed)[:3] == ["None", "Lanczos", "Nearest"]
    model = listed[tiny_upscaler.NAME]
    assert model["scale"] == 4 and model["model_path"].endswith(f"{tiny_upscaler.NAME}.safetensors")
    assert model["model_name"] == "RealESRGAN Compact" and model["model_url"] is None
    assert [m["name"] for m in http.get("/realesrgan-models").json()] == [tiny_upscaler.NAME]
    assert http.get("/face-restorers").json() == [] and http.get("/hypernetworks").json() == []
    assert http.post("/refresh-upscalers").status_code == 200


# --- training ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_data(api_root):
    """A captioned dataset inside the server's data folder (a request may name only folders there)."""
    from modules.training import shapes_world as world

    folder = api_root / "data" / "datasets" / "stars"
    world.concept_dataset(folder, 6, (world.STAR,), seed=4)
    for text in folder.glob("*.txt"):  # the embedding's word in every caption
        text.write_text("zapstar, " + text.read_text(encoding="utf-8"), encoding="utf-8")
    return "datasets/stars"


TRAIN_COMMON = {"batch_size": 2, "training_width": 64, "training_height": 64, "create_image_every": 4,
                "preview_steps": 3, "seed": 1}


def test_create_and_train_an_embedding_with_progress_then_use_it(http, api, train_data):
    made = http.post("/create/embedding", json={"name": "zapstar", "init_text": "star shape",
                                                "num_vectors_per_token": 2})
    assert made.status_code == 200 and made.json()["info"].startswith("create embedding filename:")
    assert http.get("/embeddings").json()["loaded"]["zapstar"]["vectors"] == 2
    assert http.post("/create/embedding", json={"name": "zapstar"}).status_code == 400  # exists, no overwrite_old
    box, seen = {}, []
    body = {"embedding_name": "zapstar", "data_root": train_data, "learn_rate": "0.05", "steps": 8, **TRAIN_COMMON}
    worker = threading.Thread(target=lambda: box.update(r=http.post("/train/embedding", json=body)))
    worker.start()
    while worker.is_alive():
        progress = http.get("/progress").json()
        if progress["textinfo"] and progress["textinfo"].startswith("Training"):
            seen.append(progress)
        time.sleep(0.05)
    reply = box["r"]
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["info"].startswith("train embedding complete: filename:") and data["step"] == 8
    assert len(data["losses"]) == 8 and all(np.isfinite(data["losses"]))
    assert seen and seen[-1]["state"]["sampling_steps"] == 8 and "loss" in seen[-1]["textinfo"]
    assert any(p["current_image"] for p in seen)  # the sample image is the live preview
    assert http.get("/embeddings").json()["loaded"]["zapstar"]["vectors"] == 2
    with_word = api.txt2img(prompt="zapstar", seed=3, **SMALL).image
    without = api.txt2img(prompt="a shape", seed=3, **SMALL).image
    assert not np.array_equal(pixels(with_word), pixels(without))


def test_train_lora_writes_a_card_the_prompt_can_use(http, api, api_root, train_data):
    body = {"lora_name": "apistar", "data_root": train_data, "learn_rate": 5e-3, "steps": 6, "network_dim": 4,
            "network_alpha": 4, "varsize": True, "activation_text": "starry", **TRAIN_COMMON}
    reply = http.post("/train/lora", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["filename"].endswith("apistar.safetensors")
    assert {p.name for p in (api_root / "models" / "Lora").glob("apistar*")} == {
        "apistar.safetensors", "apistar.preview.png", "apistar.json"}
    assert json.loads((api_root / "models" / "Lora" / "apistar.json").read_text())["activation text"] == "starry"
    assert any(item["name"] == "apistar" for item in http.get("/loras").json())
    base = pixels(api.txt2img(prompt="a star", seed=3, **SMALL).image)
    assert not np.array_equal(pixels(api.txt2img(prompt="a star <lora:apistar:1>", seed=3, **SMALL).image), base)
    assert np.array_equal(pixels(api.txt2img(prompt="a star <lora:apistar:0>", seed=3, **SMALL).image), base)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/train/lora", {"lora_name": "x", "data_root": "/etc", "learn_rate": 1e-3}, "dataset folder"),
    ("/train/lora", {"lora_name": "x", "data_root": "datasets/stars", "learn_rate": "0.01:10, 0.001"},
     "learn_rate"),
    ("/train/lora", {"lora_name": "a/b", "data_root": "datasets/stars", "learn_rate": 1e-3}, "name"),
    ("/train/embedding", {"embedding_name": "nothere", "data_root": "datasets/stars", "learn_rate": 1e-3},
     "dataset"),
    ("/train/lora", {"lora_name": "x", "data_root": "datasets/stars", "learn_rate": 1e-3, "training_width": 64,
                     "training_height": 128}, "training_height"),
    ("/train/lora", {"lora_name": "x", "data_root": "datasets/stars", "learn_rate": 1e-3,
                     "preview_sampler_name": "Nope"}, "sample sampler"),
])
def test_training_refusals_are_400_naming_the_field(http, train_data, path, body, field):
    reply = http.post(path, json=body)
    assert reply.status_code == 400, reply.text
    assert field in json.dumps(reply.json())

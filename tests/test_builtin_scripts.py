"""A1111's built-in scripts as extensions (Prompt matrix, Prompts from file or textbox, Loopback, Outpainting mk2,
Poor man's outpainting) through the real HTTP API, called by title with A1111's positional ``script_args`` or by
control name: images, grids, infotexts, seeds, the request limits and the 400s for bad arguments."""
from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.cmd_args import REPO_ROOT
from tests.api_server import running_server

DEMO = REPO_ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}
LINES = ("a red circle\n\n"
         "--prompt \"a blue square\" --negative_prompt dark sky --steps 3 --seed 7\n"
         "  --prompt a green triangle --n_iter 2 --cfg_scale 5 --sampler_name \"Euler a\"\n")


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    """The API server over tiny checkpoints, with the bundled demo model beside them."""
    root = tmp_path_factory.mktemp("builtin-scripts")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(DEMO, root / "models" / "Stable-diffusion" / DEMO.name)
    with running_server(root) as url, httpx.Client(base_url=f"{url}/sdapi/v1", timeout=300) as client:
        yield client


def b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def generate(http, path: str, body: dict) -> tuple[list[Image.Image], dict]:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return [decode(i) for i in response.json()["images"]], json.loads(response.json()["info"])


def refused(http, path: str, body: dict, *words: str) -> None:
    """The request is refused with HTTP 400 whose detail holds ``words``."""
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    assert all(w in response.json()["detail"] for w in words), response.json()


def circle(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, (30, 60, 200))
    ImageDraw.Draw(image).ellipse((12, 12, size[0] - 12, size[1] - 12), fill=(220, 30, 30))
    return image


def test_prompt_matrix_makes_every_combination_and_a_labelled_grid_of_them(http):
    body = {**SMALL, "prompt": "a circle|red|blue", "seed": 11, "script_name": "Prompt matrix"}
    images, info = generate(http, "/txt2img", {**body, "script_args": [False, True, "positive", "comma", 8]})
    assert info["all_prompts"] == ["a circle", "a circle, red", "a circle, blue", "a circle, red, blue"]
    assert info["all_seeds"] == [11, 12, 13, 14]  # "Use different seed for each picture"
    grid, cells = images[0], images[1:]
    assert len(cells) == 4 and info["index_of_first_image"] == 1
    assert [t.splitlines()[0] for t in info["infotexts"][1:]] == info["all_prompts"]
    assert info["infotexts"][0] == info["infotexts"][1]  # the grid's infotext is the first image's
    left, top = grid.width - (2 * 64 + 8), grid.height - (2 * 64 + 8)  # "red" across the columns, "blue" down
    assert left > 0 and top > 0
    for i, cell in enumerate(cells):  # cells row by row with 8 px margins; combination i holds part n if bit n
        x, y = left + (i % 2) * 72, top + (i // 2) * 72
        assert np.array_equal(np.asarray(grid.crop((x, y, x + 64, y + 64))), np.asarray(cell))
    _, info = generate(http, "/txt2img", {**body, "negative_prompt": "dark|blurry", "prompt": "x", "script_args": {
        "prompt_type": "negative", "put_at_start": True, "variations_delimiter": "space"}})
    assert info["all_negative_prompts"] == ["dark", "blurry dark"] and info["all_seeds"] == [11, 11]
    refused(http, "/txt2img", {**body, "prompt": "|".join("abcdefghijklm")}, "prompt", "limit_images_per_request")


def test_prompts_from_file_runs_each_line_with_its_options_and_refuses_unknown_ones(http):
    body = {**SMALL, "prompt": "flat", "seed": 3, "script_name": "prompts from file or textbox"}
    images, info = generate(http, "/txt2img", {**body, "script_args": [True, False, "end", LINES]})
    assert len(images) == 4 and info["all_prompts"] == ["flat a red circle", "flat a blue square",
                                                         "flat a green triangle", "flat a green triangle"]
    assert info["all_seeds"] == [3, 7, 5, 6]  # seed + 1 after each line (batch size × count); a line's own wins
    texts = info["infotexts"]
    assert "Negative prompt: dark sky\nSteps: 3," in texts[1] and "Seed: 7," in texts[1]
    assert "Steps: 2, Sampler: Euler a," in texts[2] and "CFG scale: 5.0," in texts[2]
    _, info = generate(http, "/txt2img", {**body, "script_args": {"prompt_txt": "one\ntwo", "prompt_position": "start",
                                                                  "checkbox_iterate_batch": True}})
    assert info["all_prompts"] == ["one flat", "two flat"] and info["all_seeds"] == [3, 3]
    refused(http, "/txt2img", {**body, "script_args": [False, False, "start", "ok\n--prompt x --colour red"]},
            "prompt_txt", "line 2", "unknown option --colour")
    refused(http, "/txt2img", {**body, "script_args": {"prompt_txt": "--prompt x --steps 0"}}, "prompt_txt", "steps")
    refused(http, "/txt2img", {**body, "script_args": {"prompt_txt": "--n_iter 600\n--n_iter 600"}}, "1200 images")
    refused(http, "/txt2img", {**body, "script_args": {"prompt_txt": "--outpath_samples /etc"}}, "prompt_txt",
            "outdir_samples", "inside the data folder")


def test_loopback_feeds_each_output_back_with_the_curve_and_counts_every_loop(http):
    body = {**SMALL, "prompt": "a circle", "seed": 20, "init_images": [b64png(circle())], "denoising_strength": 0.4,
            "script_name": "Loopback"}
    images, info = generate(http, "/img2img", {**body, "script_args": [3, 0.8, "Linear", "None"]})
    assert len(images) == 4 and images[0].size == (3 * 64, 64)  # a one-row grid, then each loop's image
    assert info["all_seeds"] == [20, 21, 22]
    strengths = [float(t.split("Denoising strength: ")[1].split(",")[0]) for t in info["infotexts"][1:]]
    assert strengths == pytest.approx([0.4, 0.6, 0.8])
    assert all("Final denoising strength: 0.8, Denoising curve: Linear" in t for t in info["infotexts"])
    images, info = generate(http, "/img2img", {**body, "n_iter": 2, "script_args": {"loops": 2}})
    assert len(images) == 3 and info["all_seeds"] == [21, 23]  # with a batch count: each chain's last image
    refused(http, "/img2img", {**body, "n_iter": 40, "script_args": [32]}, "1280 images in 1280 jobs")
    refused(http, "/img2img", {**body, "script_args": [2, 0.5, "Linear", "CLIP"]}, "append_interrogation")


def test_poor_mans_outpainting_extends_with_tiles_and_keeps_the_image(http):
    body = {**SMALL, "prompt": "a circle", "seed": 4, "init_images": [b64png(circle())], "denoising_strength": 0.9,
            "script_name": "Poor man's outpainting"}
    images, info = generate(http, "/img2img", {**body, "width": 128, "script_args": [64, 2, 1, ["left"]]})
    assert len(images) == 1 and images[0].size == (128, 64)
    kept = np.asarray(images[0], np.float32)[:, 64 + 16:]  # beyond the 4 px repainted and the 4 px blur's reach
    assert np.abs(kept - np.asarray(circle(), np.float32)[:, 16:]).max() <= 1
    assert "Mask blur: 4" in info["infotexts"][0]
    refused(http, "/img2img", {**body, "script_args": [64, 4, "fill", ["left", "north"]]}, "direction", "north")
    refused(http, "/img2img", {**body, "script_args": [64, 4, "fill", "left"]}, "width", "overlap")


def test_outpainting_mk2_extends_a_demo_model_image_by_64_px_keeping_its_pixels(http):
    demo = {"override_settings": {"sd_model_checkpoint": DEMO.stem}, "sampler_name": "Euler", "steps": 4}
    prompt = "a large red circle on a blue background"
    (source,), _ = generate(http, "/txt2img", {**demo, "prompt": prompt, "width": 64, "height": 64, "seed": 2})
    body = {**demo, "prompt": prompt, "seed": 2, "width": 128, "height": 64, "init_images": [b64png(source)],
            "denoising_strength": 0.8, "script_name": "Outpainting mk2"}
    images, info = generate(http, "/img2img", {**body, "script_args": ["", 64, 4, "right", 1.0, 0.05]})
    assert len(images) == 1 and images[0].size == (128, 64)
    out, original = np.asarray(images[0], np.float32), np.asarray(source, np.float32)
    change = np.abs(out[:, :64] - original)
    assert change.mean() < 6 and change[:, :32].mean() < 1  # the original stays; the blurred seam blends (3.3 here)
    strip = out[:, 64:]
    red, green, blue = strip.mean(axis=(0, 1))
    assert strip.std(axis=(0, 1)).max() > 3 and blue > max(red, green) + 40  # not flat: more blue background
    assert "Size: 128x64" in info["infotexts"][0] and "Mask blur: 16" in info["infotexts"][0]
    images, _ = generate(http, "/img2img", {**body, "height": 128, "script_args": {"pixels": 32, "mask_blur": 0,
                                                                                   "direction": "up"}})
    assert images[0].size == (64, 128)  # 64 + 32 rounded up to a multiple of 64
    assert np.array_equal(np.asarray(images[0])[64:], np.asarray(source))  # no blur: the image is kept exactly
    refused(http, "/img2img", {**body, "width": 64, "script_args": ["", 128, 4, "left"]}, "width", "at least 128")

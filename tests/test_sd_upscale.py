"""SD upscale (the shipped img2img script) on the bundled demo checkpoint: A1111's tile layout and sizes, seamless
blending, seeds, infotext, upscalers by name or index, progress, errors, and the HTTP API."""
from __future__ import annotations

import base64
import io
import json
import shutil
import sys

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.app_state import create_state
from modules.cmd_args import REPO_ROOT, parse_command_line
from modules.extensions import load_extensions
from modules.hooks import HookPoint
from modules.infotext import parse_infotext
from modules.processing.params import Img2ImgParams
from modules.processing.progress import JobProgress
from modules.scripts import find_script, named_args, run_generation
from tests.api_server import running_server
from tests.upscaler_fixtures import DEMO_UPSCALER, write_compact

DEMO = REPO_ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
MODEL_UPSCALER = "tiny-compact-4x"
PROMPT = "a large red circle on a blue background"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-upscale")
    write_compact(root / "ESRGAN" / f"{MODEL_UPSCALER}.safetensors")
    if DEMO_UPSCALER.exists():
        shutil.copy(DEMO_UPSCALER, root / "ESRGAN" / DEMO_UPSCALER.name)
    options = parse_command_line(["--ckpt", str(DEMO), "--ckpt-dir", str(root / "none"), "--data-dir", str(root),
                                  "--device", "cpu", "--precision", "full",
                                  "--esrgan-models-path", str(root / "ESRGAN")]).options
    state = create_state(options)
    state.models.load(DEMO.name)
    state.settings.update({"samples_save": False})
    load_extensions(state, [REPO_ROOT / "extensions"])
    return state


@pytest.fixture(scope="module")
def sd_upscale(state):
    return sys.modules[type(find_script(state, "img2img", "SD upscale")).__module__]


def _circle(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, (30, 60, 200))
    ImageDraw.Draw(image).ellipse((size[0] // 5, size[1] // 5, size[0] * 4 // 5, size[1] * 4 // 5), fill=(220, 30, 30))
    return image


def _params(init=None, **kw) -> Img2ImgParams:
    base = {"prompt": PROMPT, "seed": 5, "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler",
            "denoising_strength": 0.5, "init_images": [init or _circle()]}
    return Img2ImgParams(**{**base, **kw})


def _upscale(state, args, progress=None, **kw):
    return run_generation(state, _params(**kw), progress, script_name="SD upscale", script_args=args)


def _tiles_made(state, run):
    """``run()``'s result and the (seed, image) of every tile job's images, read through a public engine hook."""
    seen = []
    state.hooks.register(HookPoint.AFTER_DECODE, lambda e: seen.extend(zip(e.seeds, e.images)), "test-tiles")
    try:
        return run(), seen
    finally:
        state.hooks.unregister_owner("test-tiles")


def _seam_steps(pixels: np.ndarray) -> np.ndarray:
    """How much the image changes from each column to the next: mean |difference| down the column pair."""
    return np.abs(np.diff(pixels.astype(np.float32), axis=1)).mean(axis=(0, 2))


def test_tile_layout_and_output_size_are_a1111s(sd_upscale):
    assert sd_upscale.tile_starts(96, 64, 16) == (0, 32)
    assert sd_upscale.tile_starts(1000, 512, 64) == (0, 244, 488)  # ceil(936 / 448) = 3 tiles, spread evenly
    assert sd_upscale.tile_starts(2048, 512, 64) == (0, 384, 768, 1152, 1536)
    assert sd_upscale.tile_starts(40, 64, 16) == (0,)
    assert sd_upscale.upscaled_size((100, 75), "Lanczos", 2.5) == (248, 184)  # floored to multiples of 8
    assert sd_upscale.upscaled_size((100, 75), "None", 2.5) == (100, 75)  # "None" keeps the image, as A1111


def test_tiles_cut_from_an_image_blend_back_into_it(sd_upscale):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 130, 3), dtype=np.uint8))
    layout = sd_upscale.Layout((130, 100), (64, 48), sd_upscale.tile_starts(130, 64, 16),
                               sd_upscale.tile_starts(100, 48, 16))
    assert len(layout.boxes) == 3 * 3
    back = sd_upscale.blend([image.crop(box) for box in layout.boxes], layout)
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_upscale_on_the_demo_model_is_the_scaled_size_without_seams(state):
    progress = JobProgress()
    result, tiles = _tiles_made(state, lambda: _upscale(state, ["", 16, "Lanczos", 1.5], progress))
    image = result.images[0]
    assert len(result.images) == 1 and image.size == (96, 96)  # 64 × 1.5; tiles of 64 at 0 and 32 each way
    assert [seed for seed, _ in tiles] == [5, 6, 7, 8]  # batch k gets seed + k, as in A1111
    assert all(tile.size == (64, 64) for _, tile in tiles)
    enlarged = np.asarray(_circle().resize((96, 96), Image.Resampling.LANCZOS), np.int16)
    assert np.abs(np.asarray(image, np.int16) - enlarged).mean() > 2  # the tiles were redrawn

    naive = Image.new("RGB", (96, 96))
    for (_, tile), (x, y) in zip(tiles, [(0, 0), (32, 0), (0, 32), (32, 32)]):
        naive.paste(tile, (x, y))
    borders = [31, 63]  # column pairs 31|32 (where the second tile starts) and 63|64 (where the first ends)
    inside = [i for i in range(95) if i not in borders]
    for pixels, seamless in ((np.asarray(image), True), (np.asarray(naive), False)):
        for steps in (_seam_steps(pixels), _seam_steps(pixels.transpose(1, 0, 2))):
            assert bool(steps[borders].max() <= steps[inside].max()) is seamless  # pasting without blending shows

    fields = parse_infotext(result.infotexts[0])
    assert fields["SD upscale overlap"] == "16" and fields["SD upscale upscaler"] == "Lanczos"
    assert (fields["Size-1"], fields["Size-2"], fields["Seed"]) == ("64", "64", "5")  # the tile size, as A1111
    assert result.seeds == [5] and result.info["all_seeds"] == [5]
    steps = 3  # int(0.5 × 4) + 1 img2img steps per tile
    assert progress.total_steps == progress.step == 4 * steps
    assert progress.textinfo == f"SD upscale: batch 4/4, step {steps}/{steps}"
    assert progress.images == [image]


def test_model_upscaler_by_index_or_name_batches_and_saves_one_image_per_upscale(state):
    script = find_script(state, "img2img", "SD upscale")
    upscaler = next(c for c in script.controls("img2img") if c.name == "upscaler")
    assert upscaler.choices[:3] == ("None", "Lanczos", "Nearest") and MODEL_UPSCALER in upscaler.choices
    index = upscaler.choices.index(MODEL_UPSCALER)
    assert named_args(script, "img2img", ["", 16, index, 1.5])["upscaler"] == MODEL_UPSCALER  # A1111 sends indices
    state.settings.update({"samples_save": True, "outdir_img2img_samples": "sd-upscale-outputs"})
    try:
        (result, tiles) = _tiles_made(state, lambda: _upscale(state, ["", 16, MODEL_UPSCALER, 1.5], batch_size=2,
                                                              n_iter=2, seed=20))
    finally:
        state.settings.update({"samples_save": False, "outdir_img2img_samples": ""})
    assert [image.size for image in result.images] == [(96, 96), (96, 96)]
    # per upscale n: two jobs of two tiles; job k starts at seed + n + k, its second tile one higher
    assert [seed for seed, _ in tiles] == [20, 21, 21, 22, 21, 22, 22, 23]
    assert result.seeds == [20, 21]
    assert ["SD upscale upscaler: tiny-compact-4x" in text for text in result.infotexts] == [True, True]
    saved = sorted((state.options.data_dir / "sd-upscale-outputs").rglob("*.png"))
    assert len(saved) == 2 and [Image.open(p).size for p in saved] == [(96, 96), (96, 96)]
    lanczos = _upscale(state, ["", 16, "Lanczos", 1.5], seed=20).images[0]
    assert np.abs(np.asarray(result.images[0], np.int16) - np.asarray(lanczos, np.int16)).mean() > 1


def test_interrupt_keeps_the_tiles_redrawn_so_far_over_the_plain_enlargement(state):
    progress = JobProgress()
    jobs = []

    def stop_after_two(event) -> None:
        jobs.append(event.seeds)
        if len(jobs) == 2:
            progress.interrupt()

    state.hooks.register(HookPoint.AFTER_DECODE, stop_after_two, "test-stop")
    try:
        result = _upscale(state, ["", 16, "Lanczos", 1.5], progress, steps=2, n_iter=2)
    finally:
        state.hooks.unregister_owner("test-stop")
    assert result.interrupted and len(jobs) == 2 and len(result.images) == 1  # the second upscale never started
    image = np.asarray(result.images[0], np.int16)
    enlarged = np.asarray(_circle().resize((96, 96), Image.Resampling.LANCZOS), np.int16)
    assert np.array_equal(image[64:], enlarged[64:])  # only the bottom tiles, which were not redrawn, cover these
    assert np.abs(image[:32] - enlarged[:32]).mean() > 2  # the top tiles were


def test_the_demo_upscaler_enlarges_before_the_tiles_are_redrawn(state):
    result = _upscale(state, ["", 16, DEMO_UPSCALER.stem, 1.5], steps=2)
    assert result.images[0].size == (96, 96)
    assert parse_infotext(result.infotexts[0])["SD upscale upscaler"] == DEMO_UPSCALER.stem


def test_none_keeps_a_small_image_its_size(state):
    result = _upscale(state, ["", 16, "None", 2.0], init=_circle((56, 40)), steps=2)
    assert result.images[0].size == (56, 40)  # smaller than one 64×64 tile: padded for the job, cropped after


@pytest.mark.parametrize("args, message", [
    (["", 64, "Lanczos", 2.0], "overlap of 64 px needs tiles"),
    (["", 16, "R-ESRGAN 4x+", 2.0], "upscaler: 'R-ESRGAN 4x\\+' is not one of None, Lanczos"),
    (["", 16, 9, 2.0], "upscaler: 9 is not one of"),
    (["", 16, "Lanczos", 5.0], "scale_factor: 5 is above 4"),
])
def test_unusable_arguments_are_refused_before_anything_runs(state, args, message):
    with pytest.raises(ValueError, match=message):
        _upscale(state, args)


def test_api_runs_sd_upscale_by_name_or_index(tmp_path):
    init = io.BytesIO()
    _circle().save(init, format="PNG")
    body = {"prompt": PROMPT, "init_images": [base64.b64encode(init.getvalue()).decode()], "width": 64,
            "height": 64, "steps": 2, "seed": 3, "denoising_strength": 0.5, "sampler_name": "Euler",
            "script_name": "sd upscale"}
    with running_server(tmp_path) as url, httpx.Client(base_url=f"{url}/sdapi/v1", timeout=300) as http:
        for upscaler in ("Lanczos", 1):
            response = http.post("/img2img", json={**body, "script_args": ["", 16, upscaler, 1.5]})
            assert response.status_code == 200, response.text
            images = response.json()["images"]
            assert len(images) == 1
            assert Image.open(io.BytesIO(base64.b64decode(images[0]))).size == (96, 96)
            assert "SD upscale upscaler: Lanczos" in json.loads(response.json()["info"])["infotexts"][0]
        bad = http.post("/img2img", json={**body, "script_args": ["", 16, "Nope", 2]})
        assert bad.status_code == 400 and "upscaler" in bad.text

"""Extras (A1111's postprocessing upscale) in the engine: sizes of Scale by / Scale to / crop, the model really used,
upscaler 2 blended, the postprocessing text, saved files, progress by tiles, Interrupt, and the checks made before a
job is queued. The model is tests/tiny_upscaler.py's (nearest-neighbour 4× plus a red tint); the bundled demo
upscaler is used too when it is there."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from modules import requester
from modules.cmd_args import ServerOptions
from modules.job_queue import JobQueue
from modules.processing.extras import (
    FACE_RESTORATION_UNAVAILABLE,
    NO_UPSCALER,
    ExtrasJob,
    ExtrasParams,
    ExtrasSource,
    plan_size,
    run_extras,
    submit_extras,
)
from modules.processing.params import ParamError
from modules.processing.progress import JobProgress
from modules.settings import Settings
from modules.upscaling.upscale import Upscalers
from tests import tiny_upscaler
from tests.upscaler_fixtures import DEMO_UPSCALER as DEMO

MODEL = tiny_upscaler.NAME
TINT = tiny_upscaler.RED_TINT * 255


@pytest.fixture(scope="module")
def upscalers(tmp_path_factory) -> Upscalers:
    folder = tmp_path_factory.mktemp("esrgan")
    tiny_upscaler.write(folder)
    return Upscalers({"ESRGAN": folder})


def picture(width: int = 48, height: int = 40) -> Image.Image:
    """Yellow with a blue block left of the centre and a green stripe at the right edge, so that crops show."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = (230, 200, 40)
    pixels[height // 4:3 * height // 4, width // 8:width // 2] = (40, 90, 220)
    pixels[:, -width // 8:] = (30, 160, 60)
    return Image.fromarray(pixels)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def run(upscalers, params: ExtrasParams, images, settings: Settings = Settings(), **job):
    sources = [image if isinstance(image, ExtrasSource) else ExtrasSource("", image) for image in images]
    return run_extras(upscalers, settings, ExtrasJob(params, sources, **job))


def test_scale_by_runs_the_model_and_writes_a1111s_postprocessing_text(upscalers):
    source = picture(50, 30)
    result = run(upscalers, ExtrasParams(upscaler_1=MODEL, upscaling_resize=1.5), [source])
    item = result.images[0]
    assert item.image.size == (75, 45)  # not floored to multiples of 8 (A1111 would give 72×40)
    assert item.infotext == f"Postprocess upscale by: 1.5, Postprocess upscaler: {MODEL}"
    back = arr(item.image.resize(source.size, Image.Resampling.BOX))
    red_gain = back[..., 0].mean() - arr(source)[..., 0].mean()
    assert abs(red_gain - TINT) < 4  # the model's tint: the model ran
    assert np.abs(back[..., 1:] - arr(source)[..., 1:]).mean() < 6  # and the picture is the same
    plain = run(upscalers, ExtrasParams(upscaler_1="Lanczos", upscaling_resize=2), [source]).images[0]
    assert plain.image.size == (100, 60) and abs(arr(plain.image)[..., 0].mean() - arr(source)[..., 0].mean()) < 2
    assert result.html_info == f"<p>Postprocess upscale by: 1.5, Postprocess upscaler: {MODEL}</p>"


def test_scale_to_covers_the_size_and_crop_to_fit_cuts_it_around_the_centre(upscalers):
    source = picture(40, 30)
    params = ExtrasParams(resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64, upscaler_1="Nearest")
    assert plan_size(params, source.size).scaled == (85, 64)
    cropped = run(upscalers, params, [source]).images[0]
    assert cropped.image.size == (64, 64)
    to = "Postprocess upscale to: 64x64"
    assert cropped.infotext == f"{to}, Postprocess crop to: 64x64, Postprocess upscaler: Nearest"
    whole = run(upscalers, ExtrasParams(**{**params.__dict__, "upscaling_crop": False}), [source]).images[0]
    assert whole.image.size == (85, 64) and whole.infotext == f"{to}, Postprocess upscaler: Nearest"
    assert np.array_equal(arr(cropped.image), arr(whole.image)[:, 10:74])  # (85 - 64) // 2 = 10 cut on the left
    assert arr(whole.image)[32, -1, 0] < 60 < 200 < arr(cropped.image)[32, -1, 0]  # the green edge is cut off


def test_upscaler_2_is_blended_in_with_its_visibility(upscalers):
    source = picture()
    both = ExtrasParams(upscaler_1=MODEL, upscaler_2="Nearest", extras_upscaler_2_visibility=0.25)
    blended = run(upscalers, both, [source]).images[0]
    first = run(upscalers, ExtrasParams(upscaler_1=MODEL), [source]).images[0].image
    second = run(upscalers, ExtrasParams(upscaler_1="Nearest"), [source]).images[0].image
    assert np.abs(arr(blended.image) - arr(Image.blend(first, second, 0.25))).max() <= 1
    red_gain = arr(blended.image)[..., 0].mean() - arr(second)[..., 0].mean()
    assert abs(red_gain - 0.75 * TINT) < 3
    assert blended.infotext == \
        f"Postprocess upscale by: 2, Postprocess upscaler: {MODEL}, Postprocess upscaler 2: Nearest"
    off = ExtrasParams(upscaler_1=MODEL, upscaler_2="Nearest", extras_upscaler_2_visibility=0)
    assert "upscaler 2" not in run(upscalers, off, [source]).images[0].infotext


def test_saved_flat_in_the_folder_with_the_sources_parameters_and_the_postprocessing_chunks(upscalers, tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a prompt\nSteps: 5, Seed: 3, Size: 48x40")
    (tmp_path / "in").mkdir()
    picture().save(tmp_path / "in" / "made.png", pnginfo=info)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    with Image.open(tmp_path / "in" / "made.png") as single:
        single.load()
    out = tmp_path / "out"
    params = ExtrasParams(upscaler_1=MODEL)
    run(upscalers, params, [single], save_to=out)
    folder = [ExtrasSource(p.name, path=p) for p in sorted((tmp_path / "in").iterdir())]
    result = run(upscalers, params, folder, save_to=out, keep=False)
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001-made.png"]  # no dated subfolder
    assert result.warnings == ["skipped 1 file: notes.txt (not an image)"]
    assert result.images[0].image is None and result.images[0].path == out / "00001-made.png"
    with Image.open(out / "00001-made.png") as saved:
        assert saved.size == (96, 80)
        assert saved.info["parameters"] == "a prompt\nSteps: 5, Seed: 3, Size: 48x40"
        assert saved.info["postprocessing"] == saved.info["extras"] == result.images[0].infotext
    jpeg = run(upscalers, params, [single], Settings(samples_format="jpg"), save_to=out).images[0].path
    assert jpeg.name == "00002.jpg"
    from modules.image_io import read_infotext_file

    assert read_infotext_file(jpeg).startswith("a prompt")


def test_progress_counts_tiles_and_interrupt_keeps_the_finished_images(upscalers):
    settings = Settings(ESRGAN_tile=16, ESRGAN_tile_overlap=4)  # 48×40: 4 × 3 tiles in one 4× pass
    progress = JobProgress()
    seen = []
    advance = progress.advance

    def count(text):
        advance(text)
        seen.append((progress.step, progress.total_steps, text))
        if progress.step == 14:  # the second tile of the second image
            progress.interrupt()

    progress.advance = count
    job = ExtrasJob(ExtrasParams(upscaler_1=MODEL), [ExtrasSource("a", picture()), ExtrasSource("b", picture())])
    result = run_extras(upscalers, settings, job, progress)
    assert seen[0] == (1, 24, "image 1/2: tile 1/12") and seen[11][:2] == (12, 24)
    assert seen[-1] == (14, 24, "image 2/2: tile 2/12")
    assert result.interrupted and len(result.images) == 1 and progress.images == [result.images[0].image]
    assert "Interrupted" in result.html_info


def test_checks_before_queueing_name_the_field(upscalers):
    state = SimpleNamespace(upscalers=upscalers, settings=SimpleNamespace(current=Settings()),
                            options=SimpleNamespace(server=ServerOptions(remote_max_pixels=100 * 100)),
                            queue=JobQueue())
    image = ExtrasSource("", picture())
    with pytest.raises(ParamError, match="upscaler_2: unknown upscaler 'R-ESRGAN 4x\\+'; valid: None, Lanczos"):
        submit_extras(state, ExtrasJob(ExtrasParams(upscaler_1=MODEL, upscaler_2="R-ESRGAN 4x+"), [image]))
    huge = ExtrasParams(resize_mode=1, upscaling_resize_w=9000, upscaling_resize_h=9000, upscaler_1=MODEL)
    with pytest.raises(ParamError, match="upscaling_resize_w: 48×40 would become 10800×9000 .*at most 67108864"):
        submit_extras(state, ExtrasJob(huge, [image]))
    with pytest.raises(ParamError, match="upscaling_resize: 17.0 is outside 0..16"):
        submit_extras(state, ExtrasJob(ExtrasParams(upscaler_1=MODEL, upscaling_resize=17.0), [image]))
    with requester.acting_as(requester.Requester(remote=True)):
        with pytest.raises(ParamError, match="upscaling_resize_w: .*at most 10000 pixels.*--remote-max-pixels"):
            submit_extras(state, ExtrasJob(ExtrasParams(resize_mode=1, upscaler_1="Lanczos"), [image]))
    few = SimpleNamespace(**{**state.__dict__,
                             "settings": SimpleNamespace(current=Settings(limit_images_per_request=1))})
    with pytest.raises(ParamError, match="imageList: 2 images; at most 1"):
        submit_extras(few, ExtrasJob(ExtrasParams(), [image, image], field="imageList"))
    faces = submit_extras(state, ExtrasJob(ExtrasParams(upscaler_1="Lanczos", gfpgan_visibility=0.5), [image]))
    result = faces.wait(30)
    assert result.warnings == [FACE_RESTORATION_UNAVAILABLE] and result.images[0].image.size == (96, 80)
    nothing = submit_extras(state, ExtrasJob(ExtrasParams(), [image])).wait(30)
    assert nothing.warnings == [NO_UPSCALER] and nothing.images[0].image.size == (48, 40)
    assert nothing.images[0].infotext == ""


def test_the_bundled_demo_upscaler_through_extras_keeps_the_picture():
    demo = Upscalers({"ESRGAN": DEMO.parent})
    source = picture(64, 64)
    item = run(demo, ExtrasParams(upscaler_1=DEMO.stem, upscaling_resize=2), [source]).images[0]
    assert item.image.size == (128, 128)
    back = arr(item.image.resize(source.size, Image.Resampling.BOX))
    assert np.abs(back - arr(source)).mean() < 8  # garbage gives tens; its quality: test_demo_upscaler.py


def test_an_image_from_a_folder_too_large_to_take_is_skipped_with_the_reason(upscalers, tmp_path):
    picture(120, 100).save(tmp_path / "big.png")
    picture().save(tmp_path / "ok.png")
    sources = [ExtrasSource(p.name, path=p) for p in sorted(tmp_path.iterdir())]
    result = run(upscalers, ExtrasParams(upscaler_1="Lanczos"), sources, Settings(limit_upload_pixels=10_000))
    assert [i.image.size for i in result.images] == [(96, 80)]
    assert result.warnings == ["skipped 1 file: big.png (120×100 is more than 10000 pixels (setting "
                               "limit_upload_pixels))"]


def test_file_names_in_output_names_cannot_leave_the_folder(upscalers, tmp_path):
    run(upscalers, ExtrasParams(upscaler_1="Nearest"), [ExtrasSource("../../evil name.png", picture())],
        save_to=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["00000-evil_name.png"]


def test_the_extras_folder_is_an_a1111_path_setting(tmp_path):
    assert Settings().output_dir("extras", tmp_path) == tmp_path / "outputs" / "extras-images"
    assert Settings(outdir_extras_samples="up").output_dir("extras", tmp_path) == tmp_path / "up"
    assert Settings(outdir_samples="all").output_dir("extras", tmp_path) == tmp_path / "all"

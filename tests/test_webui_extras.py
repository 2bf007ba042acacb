"""The Extras tab in a real browser against the real server (a tiny model upscaler in a temporary ESRGAN folder),
and its folder rules without a browser."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests import tiny_upscaler
from tests.browser_support import browser, chromium_path, choose, set_number, shot, watched_page  # noqa: F401
from tests.webui_server import running_server

PARAMETERS = "a blue square on yellow\nSteps: 5, Sampler: Euler, CFG scale: 6, Seed: 7, Size: 48x40"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("extras-ui")
    folder = root / "upscalers"
    tiny_upscaler.write(folder)
    with running_server(root, extra=("--esrgan-models-path", str(folder))) as s:
        yield s


def _source(path: Path) -> np.ndarray:
    """A 48×40 picture (a blue square with a dark outline on yellow) saved with generation parameters."""
    pixels = np.zeros((40, 48, 3), np.uint8)
    pixels[:] = (230, 200, 40)
    pixels[8:32, 12:36] = (20, 20, 20)
    pixels[10:30, 14:34] = (40, 90, 220)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", PARAMETERS)
    Image.fromarray(pixels).save(path, pnginfo=info)
    return pixels.astype(np.int16)


def test_extras_upscales_an_upload_with_the_model_saves_it_and_sends_it_to_img2img(browser, server, tmp_path):
    source = _source(tmp_path / "source.png")
    with watched_page(browser, server.url) as page:
        page.get_by_role("tab", name="Extras").click()
        page.set_input_files("#extras_image input[type=file]", str(tmp_path / "source.png"))
        page.wait_for_selector("#extras_image img")
        choose(page, "extras_upscaler_1", tiny_upscaler.NAME)
        set_number(page, "extras_upscaling_resize", 2)
        page.click("#extras_generate")
        page.wait_for_selector("#extras_info .sd-infotext, #extras_info .sd-error")
        info = page.inner_text("#extras_info")
        assert f"Postprocess upscale by: 2, Postprocess upscaler: {tiny_upscaler.NAME}" in info, info
        src = page.locator("#extras_gallery img").first.get_attribute("src")
        shown = Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")
        shot(page, "extras")

        assert shown.size == (96, 80)  # Scale by 2
        back = np.asarray(shown.resize((48, 40), Image.Resampling.BOX), dtype=np.int16)
        tint = back[..., 0].mean() - source[..., 0].mean()
        assert 18 < tint < 32  # the model's red tint: it ran, not a plain resize
        assert np.abs(back[..., 1:] - source[..., 1:]).mean() < 4  # otherwise the same picture
        saved = list((server.data_dir / "outputs" / "extras-images").glob("*.png"))
        assert [p.name for p in saved] == ["00000.png"]
        with Image.open(saved[0]) as file:
            assert file.size == (96, 80) and file.info["parameters"] == PARAMETERS
            assert file.info["postprocessing"] == info.splitlines()[0]

        page.click("#extras_send_to_img2img")
        page.wait_for_selector("#img2img_image img")
        assert page.input_value("#img2img_prompt textarea") == "a blue square on yellow"
        assert page.input_value("#img2img_steps input[type=number]") == "5"


def test_extras_batch_from_directory_scale_to_saves_every_image_under_its_name(browser, server, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _source(folder / "first.png")
    Image.new("RGB", (30, 40), (200, 40, 40)).save(folder / "second.png")
    (folder / "notes.txt").write_text("not an image")
    with watched_page(browser, server.url) as page:
        page.get_by_role("tab", name="Extras").click()
        page.get_by_role("tab", name="Batch from Directory").click()
        page.fill("#extras_batch_input_dir textarea, #extras_batch_input_dir input", str(folder))
        page.fill("#extras_batch_output_dir textarea, #extras_batch_output_dir input", str(out))
        page.get_by_role("tab", name="Scale to").click()
        set_number(page, "extras_upscaling_resize_w", 64)
        set_number(page, "extras_upscaling_resize_h", 48)
        choose(page, "extras_upscaler_1", "Lanczos")
        page.click("#extras_generate")
        page.wait_for_selector("#extras_info .sd-infotext, #extras_info .sd-error")
        info = page.inner_text("#extras_info")
        assert "Postprocess upscale to: 64x48, Postprocess crop to: 64x48, Postprocess upscaler: Lanczos" in info
        assert "skipped 1 file: notes.txt (not an image)" in info and f"2 images saved in {out}" in info
        shown = page.eval_on_selector_all("#extras_gallery .thumbnail-item img", "els => els.map(e => e.src)")
        assert len(set(shown)) == 2  # both results are in the gallery
    saved = sorted(out.iterdir())
    assert [p.name for p in saved] == ["00000-first.png", "00001-second.png"]
    for path, colour in zip(saved, ((230, 200, 40), (200, 40, 40))):
        with Image.open(path) as image:
            assert image.size == (64, 48)
            assert np.abs(np.asarray(image.convert("RGB"))[0, 0].astype(int) - colour).max() < 8  # a corner


def test_extras_batch_process_upscales_every_upload(browser, server, tmp_path):
    _source(tmp_path / "one.png")
    Image.new("RGB", (20, 20), (40, 200, 40)).save(tmp_path / "two.png")
    folder = server.data_dir / "outputs" / "extras-images"
    before = set(folder.glob("*")) if folder.exists() else set()
    with watched_page(browser, server.url) as page:
        page.get_by_role("tab", name="Extras").click()
        page.get_by_role("tab", name="Batch Process").click()
        page.set_input_files("#extras_image_batch input[type=file]", [str(tmp_path / "one.png"),
                                                                      str(tmp_path / "two.png")])
        page.wait_for_selector("#extras_image_batch td.filename[aria-label='two.png']")
        choose(page, "extras_upscaler_1", "Nearest")
        page.click("#extras_generate")
        page.wait_for_selector("#extras_info .sd-infotext, #extras_info .sd-error")
        assert "Postprocess upscale by: 4, Postprocess upscaler: Nearest" in page.inner_text("#extras_info")
    new = sorted(p.name for p in set(folder.glob("*")) - before)
    assert len(new) == 2 and new[0].endswith("-one.png") and new[1].endswith("-two.png"), new
    with Image.open(folder / new[1]) as image:
        assert image.size == (80, 80) and image.getpixel((40, 40)) == (40, 200, 40)


def test_extras_batch_from_directory_from_another_computer_stays_in_the_data_folder(tmp_path):
    from types import SimpleNamespace

    from webui.context import UiContext
    from webui.extras_tab import _server_folder

    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    options = SimpleNamespace(data_dir=data, allowed_output_roots=(tmp_path / "shared",))
    ctx = UiContext(SimpleNamespace(options=options))
    assert _server_folder(ctx, "in", "Input directory", local=False) == (data / "in").resolve()
    assert _server_folder(ctx, str(tmp_path / "shared" / "x"), "Output directory", local=False) == \
        (tmp_path / "shared" / "x").resolve()
    with pytest.raises(ValueError, match="'Input directory'.*must be inside the data folder"):
        _server_folder(ctx, "/etc", "Input directory", local=False)
    with pytest.raises(ValueError, match="must be inside"):
        _server_folder(ctx, "../elsewhere", "Output directory", local=False)
    assert _server_folder(ctx, "/etc", "Input directory", local=True) == Path("/etc").resolve()


def test_batch_uploads_are_checked_against_the_request_limits(tmp_path):
    from webui.extras_tab import _open_uploads

    paths = []
    for name, size in (("a.png", (40, 40)), ("b.png", (40, 40)), ("c.txt", None)):
        paths.append(str(tmp_path / name))
        if size:
            Image.new("RGB", size).save(paths[-1])
        else:
            Path(paths[-1]).write_text("text")
    assert [s.name for s in _open_uploads(paths[:2], 1600, 3200)] == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="b.png: 40×40 is more pixels than this request may still upload"):
        _open_uploads(paths[:2], 1600, 2000)
    with pytest.raises(ValueError, match="c.txt: not a readable image"):
        _open_uploads(paths, 1600, 10_000)


def test_checkpoint_merger_tab_writes_a_weighted_sum_that_the_checkpoint_list_offers(browser, server):
    import json

    from safetensors import safe_open

    name = "0.5(tiny-alpha) + 0.5(tiny-beta).safetensors"
    with watched_page(browser, server.url) as page:
        page.get_by_role("tab", name="Checkpoint Merger").click()
        for elem_id, option in (("modelmerger_primary_model_name", "tiny-alpha.safetensors"),
                                ("modelmerger_secondary_model_name", "tiny-beta.safetensors")):
            page.click(f"#{elem_id} input")
            page.click(f"#{elem_id} [role=option][aria-label='{option}']")
            page.wait_for_function(f"() => document.querySelector('#{elem_id} input').value === '{option}'")
        set_number(page, "modelmerger_interp_amount", 0.5)
        page.click("#modelmerger_merge")
        page.wait_for_selector("#modelmerger_result .sd-note, #modelmerger_result .sd-error", timeout=30_000)
        assert f"Checkpoint saved to {server.data_dir.parent / 'models' / 'Stable-diffusion' / name}" in \
            page.inner_text("#modelmerger_result")
        shot(page, "checkpoint-merger")
        page.click("#setting_sd_model_checkpoint input")
        assert page.get_by_role("option", name=name, exact=True).is_visible()
    with safe_open(str(server.data_dir.parent / "models" / "Stable-diffusion" / name), "pt") as f:
        recipe = json.loads(f.metadata()["sd_merge_recipe"])
    assert recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.5

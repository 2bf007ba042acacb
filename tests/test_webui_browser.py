"""The web UI in a real browser (Debian chromium driven by playwright) against the real server over tiny models."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.system_deps import install_chromium
from tests.webui_server import EMBEDDING_NAME, LORA_NAME, REPO, VAE_NAME, running_server

playwright_api = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
EXTENSIONS_DIR = REPO / "extensions"  # where the server installs extensions (a test one is removed afterwards)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    check = install_chromium()
    if check.path is None:
        pytest.skip(f"no browser for the web UI tests: {check.reason}")
    return check.path


@pytest.fixture(scope="module")
def browser(chromium_path):
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


# Per-field defaults the module's server starts with (A1111's ui-config.json keys).
UI_DEFAULTS = {"txt2img/Sampling steps/value": 7, "txt2img/Sampling steps/maximum": 120,
               "txt2img/Prompt/value": "a default prompt from ui-config", "img2img/Sampling steps/value": 9}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("webui"), data_files={"ui-config.json": json.dumps(UI_DEFAULTS)}) as s:
        yield s


@contextmanager
def watched_page(browser, url: str, viewport: dict = VIEWPORT):
    """A fresh page on the UI at ``url``, once the model is loaded; fails the test on any browser console error,
    page exception or HTTP 5xx answer seen while it was open."""
    context = browser.new_context(viewport=viewport)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 500 else None)
    pg.goto(url + "/")
    pg.wait_for_selector("#txt2img_generate")
    pg.wait_for_function("() => !document.querySelector('#sd_status .sd-loading')", timeout=180_000)
    yield pg
    context.close()
    assert errors == [], f"browser console errors or 5xx answers: {errors}"


@pytest.fixture
def page(browser, server):
    """A fresh page on the UI (see :func:`watched_page`)."""
    with watched_page(browser, server.url) as pg:
        yield pg


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def choose(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_function(f"() => document.querySelector('#{elem_id} input').value === {json.dumps(option)}")


def open_panel(page, elem_id: str) -> None:
    """Open the accordion ``elem_id`` (e.g. a script's panel) unless it is open."""
    if not page.locator(f"#{elem_id} > [data-testid=accordion-content]").is_visible():
        page.click(f"#{elem_id} > button.label-wrap")


def record_progress(page, kind: str = "txt2img") -> None:
    """Keep every (text, percent) the progress bar of ``kind`` shows in ``window.sdSeenProgress``."""
    page.evaluate("""(kind) => {
        const seen = window.sdSeenProgress = [];
        setInterval(() => {
            const bar = document.querySelector('#' + kind + '_progress [role=progressbar]');
            const now = bar && [bar.innerText, bar.getAttribute('aria-valuenow')];
            const last = seen[seen.length - 1];
            if (now && !(last && last[0] === now[0] && last[1] === now[1])) seen.push(now);
        }, 20);
    }""", kind)


def small_job(page, kind: str = "txt2img", steps: int = 3) -> None:
    for name, value in (("width", 64), ("height", 64), ("steps", steps)):
        set_number(page, f"{kind}_{name}", value)


def generate(page, kind: str = "txt2img", keys: str | None = None) -> str:
    """Click Generate (or press ``keys`` in the prompt box), wait for the job's infotext (or error); its text."""
    page.evaluate(f"() => document.querySelectorAll('#{kind}_info .sd-infotext, #{kind}_info .sd-error')"
                  ".forEach(e => e.remove())")
    if keys:
        page.press(f"#{kind}_prompt textarea", keys)
    else:
        page.click(f"#{kind}_generate")
    page.wait_for_selector(f"#{kind}_info .sd-infotext, #{kind}_info .sd-error")
    return page.inner_text(f"#{kind}_info")


def prompt_value(page, kind: str = "txt2img") -> str:
    return page.input_value(f"#{kind}_prompt textarea")


def gallery_image(page, kind: str = "txt2img", index: int = 0) -> Image.Image:
    """The gallery's image number ``index`` as the browser got it."""
    src = page.locator(f"#{kind}_gallery img").nth(index).get_attribute("src")
    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")


def upload_to_editor(page, elem_id: str, path: Path) -> None:
    """Upload an image into the gr.ImageEditor ``elem_id`` and wait until it shows it (zoomed to fit: not 100%)."""
    page.locator(f"#{elem_id} canvas").first.wait_for(state="visible")  # mounted: an upload before that is lost
    page.set_input_files(f"#{elem_id} input[type=file]", str(path))
    page.wait_for_function("(id) => { const t = document.getElementById(id).innerText;"
                           " return /\\d+%/.test(t) && !/(^|\\D)100%/.test(t); }", arg=elem_id)


def draw_stroke(page, elem_id: str, length: float = 0.4) -> None:
    """Pick the brush of the gr.ImageEditor ``elem_id`` and drag a horizontal stroke through the canvas centre."""
    page.click(f"#{elem_id} button[aria-label=Brush]")
    canvas = page.locator(f"#{elem_id} canvas").first
    canvas.scroll_into_view_if_needed()
    box, previous = canvas.bounding_box(), None
    for _ in range(50):  # the editor zooms a freshly loaded image to fit: draw once its canvas has stopped moving
        if box == previous:
            break
        page.wait_for_timeout(150)
        box, previous = canvas.bounding_box(), box
    x, y, half = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box["width"] * length / 2
    page.mouse.move(x - half, y)
    page.mouse.down()
    page.mouse.move(x + half, y, steps=8)
    page.mouse.up()
    page.wait_for_timeout(300)  # the stroke reaches the editor's value


def test_txt2img_prompt_sampler_generate_shows_image_and_infotext(page):
    page.fill("#txt2img_prompt textarea", "a red circle <b>bold</b>")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt_tokens').innerText.trim() !== '0/75'")
    small_job(page)
    choose(page, "txt2img_sampling", "DDIM")
    info = generate(page)
    assert "Sampler: DDIM" in info and "Steps: 3" in info and "Size: 64x64" in info
    assert "<b>bold</b>" in info  # shown as text, not as markup
    assert page.locator("#txt2img_info b").count() == 0
    src = page.locator("#txt2img_gallery img").first.get_attribute("src")
    assert src and ".png" in src.lower()
    assert page.get_attribute("#txt2img_generate", "title")  # tooltips are set
    shot(page, "txt2img")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone
    shot(page, "txt2img-phone")


def test_hires_fix_panel_from_the_script_controls(page):
    page.fill("#txt2img_prompt textarea", "hires")
    small_job(page, steps=2)
    open_panel(page, "txt2img_script_hires_fix_panel")
    page.click("#txt2img_script_hires_fix_enable input")
    set_number(page, "txt2img_script_hires_fix_hr_second_pass_steps", 2)
    info = generate(page)
    assert "Hires upscale: 2" in info and "Hires steps: 2" in info, info
    page.wait_for_function("() => document.querySelector('#txt2img_gallery img').naturalWidth > 0")
    size = page.evaluate("() => { const i = document.querySelector('#txt2img_gallery img');"
                         " return [i.naturalWidth, i.naturalHeight]; }")
    assert size == [128, 128]  # the 64² first pass upscaled ×2


def test_second_user_waits_in_queue_and_interrupt_stops_only_the_own_job(page, browser, server):
    page.fill("#txt2img_prompt textarea", "long job")
    small_job(page, steps=40)
    set_number(page, "txt2img_batch_count", 100)
    page.click("#txt2img_generate")
    page.wait_for_function("() => /Step \\d+\\/40/.test(document.querySelector('#txt2img_progress').innerText)")
    other_context = browser.new_context(viewport=VIEWPORT)
    other = other_context.new_page()
    other.set_default_timeout(TIMEOUT_MS)
    other.goto(server.url + "/")
    other.fill("#txt2img_prompt textarea", "second user")
    small_job(other)
    other.click("#txt2img_generate")
    other.wait_for_function("() => document.querySelector('#txt2img_progress').innerText.includes('Waiting in queue')")
    shot(page, "txt2img-progress")
    page.click("#txt2img_interrupt")
    page.wait_for_function("() => document.querySelector('#txt2img_info').innerText.includes('Interrupted')")
    assert page.inner_text("#txt2img_progress").strip() == ""
    other.wait_for_selector("#txt2img_info .sd-infotext")
    assert "Interrupted" not in other.inner_text("#txt2img_info")  # the other user's job ran to its end
    assert "second user" in other.inner_text("#txt2img_info")
    other_context.close()


def stored_setting(server, name: str, value, timeout: float = 20) -> bool:
    """Whether config.json holds ``value`` for ``name`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((server.data_dir / "config.json").read_text()).get(name) == value:
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return False


def test_switch_checkpoint_and_vae(page, server):
    choose(page, "setting_sd_model_checkpoint", "tiny-beta.safetensors")
    choose(page, "setting_sd_vae", VAE_NAME)
    assert stored_setting(server, "sd_model_checkpoint", "tiny-beta.safetensors")
    assert stored_setting(server, "sd_vae", VAE_NAME)
    page.fill("#txt2img_prompt textarea", "a square")
    small_job(page)
    info = generate(page)
    assert "Model: tiny-beta" in info
    assert f"VAE: {Path(VAE_NAME).stem}" in info
    choose(page, "setting_sd_vae", "Automatic")
    choose(page, "setting_sd_model_checkpoint", "tiny-alpha.safetensors")
    assert stored_setting(server, "sd_model_checkpoint", "tiny-alpha.safetensors")


def test_lora_and_embedding_cards_insert_into_the_prompt_and_generate(page):
    page.fill("#txt2img_prompt textarea", "a cat")
    page.click("#txt2img_extra_networks")
    page.get_by_role("tab", name="LoRA").first.click()
    page.click(f"#txt2img_en_lora .sd-card[data-name='{LORA_NAME}']")
    page.wait_for_function(
        f"() => document.querySelector('#txt2img_prompt textarea').value.includes('<lora:{LORA_NAME}:1>')")
    page.get_by_role("tab", name="Textual Inversion").first.click()
    page.click(f"#txt2img_en_textual .sd-card[data-name='{EMBEDDING_NAME}']")
    page.wait_for_function(
        f"() => document.querySelector('#txt2img_prompt textarea').value.endsWith('{EMBEDDING_NAME}')")
    assert prompt_value(page) == f"a cat <lora:{LORA_NAME}:1>, {EMBEDDING_NAME}"
    shot(page, "extra-networks")
    small_job(page)
    info = generate(page, keys="Control+Enter")
    assert "Lora hashes" in info and LORA_NAME in info
    page.get_by_role("tab", name="LoRA").first.click()
    page.click(f"#txt2img_en_lora .sd-card[data-name='{LORA_NAME}']")  # a second click takes the tag out again
    page.wait_for_function(f"() => !document.querySelector('#txt2img_prompt textarea').value.includes('<lora:')")
    assert prompt_value(page) == f"a cat, {EMBEDDING_NAME}"


def test_token_counter_leaves_out_network_tags(page):
    counter = "#txt2img_prompt_tokens .sd-tokens"
    page.fill("#txt2img_prompt textarea", "a red circle <lora:")  # the tag's characters would count as tokens
    page.wait_for_function(f"() => document.querySelector('{counter}').innerText !== '0/75'")
    partial = page.inner_text(counter)
    page.fill("#txt2img_prompt textarea", "a red circle")
    page.wait_for_function(f"() => document.querySelector('{counter}').innerText !== {partial!r}")
    plain = page.inner_text(counter)
    assert plain != "0/75"
    page.fill("#txt2img_prompt textarea", f"a red circle <lora:{LORA_NAME}:0.8>")
    page.wait_for_timeout(1500)
    page.wait_for_function(f"() => document.querySelector('{counter}').innerText === {plain!r}")


def test_img2img_with_uploaded_image(page, tmp_path):
    source = tmp_path / "input.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)
    page.get_by_role("tab", name="img2img").first.click()
    assert "upload an image" in generate(page, "img2img")  # the error is shown; the UI stays usable
    page.set_input_files("#img2img_image input[type=file]", str(source))
    page.wait_for_selector("#img2img_image img")
    page.fill("#img2img_prompt textarea", "a red square")
    small_job(page, "img2img")
    info = generate(page, "img2img")
    assert "Denoising strength: 0.75" in info and "Size: 64x64" in info
    shot(page, "img2img")


def test_inpaint_with_uploaded_mask(page, tmp_path):
    source, mask = tmp_path / "image.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (20, 90, 200)).save(source)
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (16, 16, 48, 48))
    m.save(mask)
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint upload").click()
    page.set_input_files("#img2img_upload_image input[type=file]", str(source))
    page.set_input_files("#img2img_upload_mask input[type=file]", str(mask))
    page.wait_for_selector("#img2img_upload_mask img")
    page.wait_for_selector("#img2img_mask_blur", state="visible")
    page.fill("#img2img_prompt textarea", "a hole")
    small_job(page, "img2img")
    info = generate(page, "img2img")
    assert "Mask blur: 4" in info, info
    shot(page, "inpaint-upload")


def test_png_info_send_to_txt2img_fills_fields(page, tmp_path):
    from modules.image_io import save_image

    text = ("a lighthouse at dusk\nNegative prompt: fog\nSteps: 11, Sampler: Euler, Schedule type: Karras, "
            "CFG scale: 4.5, Seed: 4242, Size: 64x64, Model: tiny-alpha, Denoising strength: 0.35, "
            "Hires upscale: 1.5, Hires steps: 4, Hires upscaler: Latent (nearest), "
            'ControlNet 0: "Module: invert, Model: not-installed [0000], Weight: 0.45, Guidance End: 0.6"')
    path = save_image(Image.new("RGB", (64, 64)), tmp_path / "made.png", infotext=text)
    page.get_by_role("tab", name="PNG Info").click()
    page.set_input_files("#pnginfo_image input[type=file]", str(path))
    page.wait_for_function("() => document.querySelector('#pnginfo_html').innerText.includes('lighthouse')")
    shot(page, "pnginfo")
    page.click("#pnginfo_send_txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a lighthouse at dusk'")
    assert page.input_value("#txt2img_neg_prompt textarea") == "fog"
    assert page.input_value("#txt2img_seed input") == "4242"
    assert page.input_value("#txt2img_steps input[type=number]") == "11"
    assert page.input_value("#txt2img_sampling input") == "Euler"
    assert page.input_value("#txt2img_scheduler input") == "Karras"
    assert page.locator("#txt2img_generate").is_visible()  # the txt2img tab is shown
    # the always-on panels are filled too: hires fix and the ControlNet unit (its model is not installed: kept)
    for panel in ("hires_fix", "controlnet"):
        open_panel(page, f"txt2img_script_{panel}_panel")
    assert page.is_checked("#txt2img_script_hires_fix_enable input")
    assert page.input_value("#txt2img_script_hires_fix_hr_second_pass_steps input[type=number]") == "4"
    assert page.input_value("#txt2img_script_hires_fix_hr_scale input[type=number]") == "1.5"
    assert page.input_value("#txt2img_script_hires_fix_denoising_strength input[type=number]") == "0.35"
    assert page.input_value("#txt2img_script_hires_fix_hr_upscaler input") == "Latent (nearest)"
    assert page.is_checked("#txt2img_script_controlnet_unit0_enabled input")
    assert page.input_value("#txt2img_script_controlnet_unit0_weight input[type=number]") == "0.45"
    assert page.input_value("#txt2img_script_controlnet_unit0_guidance_end input[type=number]") == "0.6"
    assert page.input_value("#txt2img_script_controlnet_unit0_model input") == "None"
    page.get_by_role("tab", name="Unit 1").click()
    assert not page.is_checked("#txt2img_script_controlnet_unit1_enabled input")


def test_pasted_settings_fill_the_override_box_and_apply_to_the_job(page):
    box = "#txt2img_override_settings"
    assert not page.locator(box).is_visible()  # nothing pasted: no box
    page.fill("#txt2img_prompt textarea", "a red circle\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 5, "
              "Size: 64x64, Clip skip: 2, ENSD: 31337, RNG: CPU, NGMS: 1.5")
    page.click("#txt2img_read_params")
    page.wait_for_selector(box, state="visible")
    # RNG: CPU is the current setting already, so it is not listed
    assert sorted(page.locator(f"{box} .token").all_inner_texts()) == ["Clip skip: 2", "ENSD: 31337", "NGMS: 1.5"]
    assert page.input_value("#txt2img_prompt textarea") == "a red circle"
    info = generate(page)
    assert "Clip skip: 2" in info and "ENSD: 31337" in info and "NGMS: 1.5" in info and "Seed: 5" in info
    page.locator(f"{box} .token").filter(has_text="Clip skip: 2").locator(".token-remove").click()
    info = generate(page)  # removed from the box: the user's own setting (clip skip 1) applies again
    assert "Clip skip" not in info and "ENSD: 31337" in info


def test_controlnet_panel_previews_the_preprocessed_map_at_the_output_size(page, tmp_path):
    source = np.zeros((48, 80, 3), np.uint8)
    source[:, :40] = 255  # left half white: inverted, the right half is white
    path = tmp_path / "control.png"
    Image.fromarray(source).save(path)
    small_job(page)
    open_panel(page, "txt2img_script_controlnet_panel")
    page.set_input_files("#txt2img_script_controlnet_unit0_image input[type=file]", str(path))
    page.wait_for_selector("#txt2img_script_controlnet_unit0_image img")
    choose(page, "txt2img_script_controlnet_unit0_module", "invert")
    page.click("#txt2img_script_controlnet_unit0_preview")
    page.wait_for_selector("#txt2img_script_controlnet_unit0_preview_image img")
    src = page.locator("#txt2img_script_controlnet_unit0_preview_image img").get_attribute("src")
    shown = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("L"), np.float32)
    assert shown.shape == (64, 64)  # fitted to the output size (crop and resize)
    assert shown[:, :24].mean() < 40 and shown[:, 40:].mean() > 215  # inverted: dark left, light right


def test_setting_survives_reload(page, server):
    page.get_by_role("tab", name="Settings").click()
    shot(page, "settings")
    set_number(page, "setting_page_show_progress_every_n_steps", 3)
    page.click("#settings_submit")
    page.wait_for_function("() => document.querySelector('#settings_result').innerText.includes('changed')")
    assert json.loads((server.data_dir / "config.json").read_text())["show_progress_every_n_steps"] == 3
    page.reload()
    page.get_by_role("tab", name="Settings").click()
    page.wait_for_function(
        "() => document.querySelector('#setting_page_show_progress_every_n_steps input').value === '3'")
    page.fill("#settings_search input, #settings_search textarea", "preview")
    page.wait_for_selector("#setting_page_samples_format", state="hidden")
    assert page.locator("#setting_page_show_progress_every_n_steps").is_visible()
    page.click("#settings_defaults")
    page.wait_for_function(
        "() => document.querySelector('#setting_page_show_progress_every_n_steps input').value === '1'")


def test_ui_config_defaults_fill_the_fields_and_the_defaults_section_saves_new_ones(page, server):
    assert prompt_value(page) == UI_DEFAULTS["txt2img/Prompt/value"]
    assert page.input_value("#txt2img_steps input[type=number]") == "7"
    assert page.get_attribute("#txt2img_steps input[type=range]", "max") == "120"
    saved = json.loads((server.data_dir / "ui-config.json").read_text())
    assert saved["txt2img/Sampling steps/value"] == 7 and saved["txt2img/Width/maximum"] == 2048  # missing keys added
    assert "txt2img/Width/value" not in saved  # the size follows the checkpoint until the user saves one
    page.get_by_role("tab", name="img2img").first.click()
    assert page.input_value("#img2img_steps input[type=number]") == "9"
    page.get_by_role("tab", name="txt2img").first.click()
    set_number(page, "txt2img_steps", 12)
    page.get_by_role("tab", name="Settings").click()
    page.click("#settings_ui_defaults_view")
    page.wait_for_function("() => document.querySelector('#settings_ui_defaults_result').innerText"
                           ".includes('txt2img/Sampling steps/value')")
    assert "12" in page.inner_text("#settings_ui_defaults_result")
    assert "Prompt" not in page.inner_text("#settings_ui_defaults_result")  # unchanged fields are not listed
    page.click("#settings_ui_defaults_apply")
    page.wait_for_function("() => document.querySelector('#settings_ui_defaults_result').innerText"
                           ".includes('defaults saved')")
    assert json.loads((server.data_dir / "ui-config.json").read_text())["txt2img/Sampling steps/value"] == 12


def test_last_prompts_survive_a_reload(page):
    page.fill("#txt2img_prompt textarea", "kept across reloads")
    page.fill("#txt2img_neg_prompt textarea", "blurry")
    page.get_by_role("tab", name="img2img").first.click()
    page.fill("#img2img_prompt textarea", "img2img keeps its own")
    page.reload()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea')?.value === "
                           "'kept across reloads'")
    assert page.input_value("#txt2img_neg_prompt textarea") == "blurry"
    small_job(page, steps=2)
    assert generate(page).startswith("kept across reloads\nNegative prompt: blurry")  # the server got them too
    page.get_by_role("tab", name="img2img").first.click()
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea')?.value === "
                           "'img2img keeps its own'")


def zip_pngs(page, kind: str = "txt2img") -> dict[str, Image.Image]:
    """Click Zip and download it: seed (from the file name) -> image, for each PNG in it."""
    page.evaluate(f"() => document.querySelectorAll('#{kind}_zip_file a').forEach(a => a.remove())")
    page.click(f"#{kind}_zip")
    link = page.locator(f"#{kind}_zip_file a").first
    link.wait_for()
    with zipfile.ZipFile(io.BytesIO(page.request.get(link.get_attribute("href")).body())) as z:
        names = z.namelist()
        assert all(n.endswith(".png") for n in names), names
        return {n.rsplit("-", 1)[1][:-4]: Image.open(io.BytesIO(z.read(n))).convert("RGB") for n in names}


def test_skip_ends_the_current_image_and_the_batch_goes_on_and_zip_holds_the_pngs(page):
    page.fill("#txt2img_prompt textarea", "skipping")
    small_job(page, steps=150)  # long enough that a progress poll lands inside the first image on any machine
    set_number(page, "txt2img_seed", 1234)
    set_number(page, "txt2img_batch_count", 2)
    record_progress(page)
    page.click("#txt2img_generate")
    page.wait_for_function(
        "() => /Step \\d+\\/\\d+/.test(document.querySelector('#txt2img_progress').innerText)")
    page.click("#txt2img_skip")
    page.wait_for_selector("#txt2img_info .sd-infotext")
    assert "Interrupted" not in page.inner_text("#txt2img_info")
    shown = page.evaluate("() => window.sdSeenProgress")
    fractions = [int(f) for _, f in shown]
    assert fractions == sorted(fractions) and fractions[-1] >= 50, shown  # after Skip the bar jumps on, never back
    assert not any("Waiting" in text for text, _ in shown)  # nobody else waits: no queue text
    skipped = zip_pngs(page)
    assert sorted(skipped) == ["1234", "1235"]
    generate(page)  # the same job without skipping
    full = zip_pngs(page)
    assert sorted(full) == ["1234", "1235"]
    assert skipped["1235"].tobytes() == full["1235"].tobytes()  # the next image was made in full
    assert skipped["1234"].tobytes() != full["1234"].tobytes()  # the skipped one was cut short


def test_gallery_save_to_the_paths_folder_and_send_to_img2img_and_inpaint(page, server, tmp_path):
    field = "#setting_page_outdir_save input, #setting_page_outdir_save textarea"
    page.get_by_role("tab", name="Settings").click()
    page.fill(field, str(tmp_path / "outside"))  # outside the data folder: refused, shown, not saved
    page.click("#settings_submit")
    page.wait_for_selector("text=/setting 'outdir_save'.*must be inside the data folder/")
    assert not stored_setting(server, "outdir_save", str(tmp_path / "outside"), timeout=1)
    folder = server.data_dir / "saved-here"
    page.fill(field, str(folder))
    page.click("#settings_submit")
    page.wait_for_function("() => document.querySelector('#settings_result').innerText.includes('outdir_save')")
    assert stored_setting(server, "outdir_save", str(folder))
    page.get_by_role("tab", name="txt2img").first.click()
    page.fill("#txt2img_prompt textarea", "send me")
    small_job(page)
    generate(page)
    page.click("#txt2img_save")
    page.wait_for_selector("text=/Saved .*\\.png/")
    assert len(list(folder.glob("*.png"))) == 1
    page.click("#txt2img_send_to_img2img")
    page.wait_for_selector("#img2img_image img")
    assert page.input_value("#img2img_prompt textarea") == "send me"
    assert page.input_value("#img2img_steps input[type=number]") == "3"
    page.get_by_role("tab", name="txt2img").first.click()
    page.click("#txt2img_send_to_inpaint")
    page.wait_for_selector("#img2img_mask_blur", state="visible")  # the inpaint sub-tab is shown
    draw_stroke(page, "img2img_inpaint")
    info = generate(page, "img2img")  # fails with "upload an image" unless the sent image arrived
    assert "Mask blur: 4" in info, info


def test_drawn_mask_inpaint_changes_only_the_masked_area_and_sketch_generates(page, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (20, 90, 200)).save(source)
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint", exact=True).click()
    upload_to_editor(page, "img2img_inpaint", source)
    draw_stroke(page, "img2img_inpaint", length=0.3)
    page.fill("#img2img_prompt textarea", "repaint the stroke")
    small_job(page, "img2img")
    set_number(page, "img2img_mask_blur", 0)
    set_number(page, "img2img_denoising_strength", 1)
    assert "Mask blur: 0" in generate(page, "img2img")
    out, original = np.asarray(gallery_image(page, "img2img")).astype(int), np.asarray(Image.open(source)).astype(int)
    changed = np.abs(out - original).sum(axis=-1) > 0
    assert changed[32, 28:36].all()  # under the stroke through the middle
    assert not changed[:4].any() and not changed[-4:].any()  # far from it: the original pixels, exactly
    shot(page, "inpaint-drawn")
    page.get_by_role("tab", name="Sketch", exact=True).click()
    upload_to_editor(page, "img2img_sketch", source)
    draw_stroke(page, "img2img_sketch")
    assert "Denoising strength: 1" in generate(page, "img2img")


def git_repo(folder: Path) -> Path:
    """A local git repository holding an extension that adds a tab (cloned offline through its path)."""
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "hello.py").write_text(
        "from modules.extensions import UiTab\n\n\ndef register(api):\n"
        "    api.on_ui_tabs(lambda: UiTab('Hello ext', 'hello_ext', markdown='Hello from a cloned extension'))\n")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-C", str(folder)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "an extension"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    return folder


def panel_header(page, elem_id: str, expected: str) -> None:
    """Wait until the header of the panel ``elem_id`` reads ``expected``."""
    page.wait_for_function("([id, text]) => document.querySelector('#' + id + ' > button.label-wrap span')"
                           ".innerText.trim() === text", arg=[elem_id, expected])


def test_script_dropdown_shows_the_chosen_scripts_controls_and_runs_with_them(page):
    controls = "#txt2img_script_x_y_z_plot_controls"
    assert not page.locator(controls).is_visible()
    choose(page, "txt2img_script", "X/Y/Z plot")
    page.wait_for_selector(controls, state="visible")
    choose(page, "txt2img_script_x_y_z_plot_x_type", "Seed")
    page.fill("#txt2img_script_x_y_z_plot_x_values textarea, #txt2img_script_x_y_z_plot_x_values input", "7, 8")
    page.fill("#txt2img_prompt textarea", "a grid")
    small_job(page, steps=2)
    info = generate(page)
    assert "Seed: 7," in info, info
    grid = gallery_image(page)
    assert grid.width >= 2 * 64 and grid.height > 64, grid.size  # two cells side by side, and the legend
    shot(page, "xyz-plot")
    choose(page, "txt2img_script", "None")
    page.wait_for_selector(controls, state="hidden")
    assert "Seed: 7," not in generate(page)  # no script: one plain image with a random seed
    assert gallery_image(page).size == (64, 64)


def test_panel_headers_say_when_on_an_upload_enables_its_unit_and_a_paste_turns_panels_off(page, tmp_path):
    path = tmp_path / "silhouette.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(path)
    hires, controlnet = "txt2img_script_hires_fix_panel", "txt2img_script_controlnet_panel"
    open_panel(page, hires)
    page.click("#txt2img_script_hires_fix_enable input")
    panel_header(page, hires, "Hires fix — on")
    small_job(page, steps=2)
    page.wait_for_function("() => document.querySelector('#txt2img_script_hires_fix_describe').innerText"
                           ".includes('128×128')")
    assert page.inner_text("#txt2img_script_hires_fix_describe") == "Hires fix: from 64×64 to 128×128"
    assert page.locator("#txt2img_script_hires_fix_hr_checkpoint_name input").count() == 1  # a dropdown
    page.click("#txt2img_script_hires_fix_hr_checkpoint_name input")
    assert page.get_by_role("option", name="tiny-beta.safetensors", exact=True).is_visible()
    page.keyboard.press("Escape")
    open_panel(page, controlnet)
    page.get_by_role("tab", name="Unit 1").click()
    page.set_input_files("#txt2img_script_controlnet_unit1_image input[type=file]", str(path))
    page.wait_for_function("() => document.querySelector('#txt2img_script_controlnet_unit1_enabled input').checked")
    panel_header(page, controlnet, "ControlNet — on: Unit 1")
    preview = page.locator("#txt2img_script_controlnet_unit1_preview_image").bounding_box()
    image = page.locator("#txt2img_script_controlnet_unit1_image").bounding_box()
    assert preview["x"] > image["x"] + image["width"] / 2 and abs(preview["y"] - image["y"]) < 40  # side by side
    shot(page, "panels-on")
    page.click(f"#{hires} > button.label-wrap")  # closed, the header still tells
    panel_header(page, hires, "Hires fix — on")
    page.fill("#txt2img_prompt textarea", "pasted\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64")
    page.click("#txt2img_read_params")
    panel_header(page, hires, "Hires fix")
    panel_header(page, controlnet, "ControlNet")
    assert not page.is_checked("#txt2img_script_controlnet_unit1_enabled input")
    info = generate(page)
    assert "Hires" not in info and "ControlNet" not in info and "Size: 64x64" in info, info


def test_hires_progress_counts_both_passes(page):
    open_panel(page, "txt2img_script_hires_fix_panel")
    page.click("#txt2img_script_hires_fix_enable input")
    set_number(page, "txt2img_script_hires_fix_hr_second_pass_steps", 60)
    set_number(page, "txt2img_script_hires_fix_denoising_strength", 1)
    page.fill("#txt2img_prompt textarea", "two passes")
    small_job(page, steps=2)
    record_progress(page)
    info = generate(page)
    assert "Hires steps: 60" in info, info
    texts = [text for text, _ in page.evaluate("() => window.sdSeenProgress")]
    assert any(re.search(r"Step \d+/62\b.*Hires pass \d+/60", t) for t in texts), texts
    assert not any(re.search(r"Step (\d+)/\1 ", t) and "Hires pass" in t for t in texts[:-1]), texts


def test_tool_buttons_clear_seed_swap_folder(page, server):
    page.fill("#txt2img_prompt textarea", "keep nothing")
    page.fill("#txt2img_neg_prompt textarea", "nor this")
    page.click("#txt2img_clear_prompt")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === ''")
    assert page.input_value("#txt2img_neg_prompt textarea") == ""
    small_job(page)
    set_number(page, "txt2img_width", 128)
    page.click("#txt2img_swap")
    page.wait_for_function("() => document.querySelector('#txt2img_height input[type=number]').value === '128'")
    assert page.input_value("#txt2img_width input[type=number]") == "64"
    info = generate(page)
    seed = re.search(r"Seed: (\d+)", info).group(1)
    page.click("#txt2img_reuse_seed")
    page.wait_for_function(f"() => document.querySelector('#txt2img_seed input').value === '{seed}'")
    page.click("#txt2img_random_seed")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '-1'")
    assert page.locator("#txt2img_open_folder").is_visible()  # this browser is on the server's machine
    page.click("#txt2img_open_folder")  # no desktop here: the reason and the folder are shown, not swallowed
    page.wait_for_selector("text=/the images are in/")


def test_expected_mistakes_are_shown_and_logged_in_one_line(page, server):
    page.get_by_role("tab", name="img2img").first.click()
    before = len(server.log())
    page.click("#img2img_read_params")
    page.wait_for_selector("text=Paste generation parameters into the prompt box first")
    deadline = time.monotonic() + 10
    while "user error: Paste generation parameters" not in server.log()[before:] and time.monotonic() < deadline:
        time.sleep(0.1)
    page.wait_for_timeout(500)
    logged = server.log()[before:]
    assert "user error: Paste generation parameters into the prompt box first" in logged
    assert "Traceback" not in logged, logged


def test_styles_save_and_apply_and_parameters_paste_into_img2img_from_png_info_and_the_prompt(page, tmp_path):
    from modules.image_io import save_image

    page.fill("#txt2img_prompt textarea", "watercolor")
    page.fill("#txt2img_neg_prompt textarea", "blurry")
    page.fill("#txt2img_style_name input, #txt2img_style_name textarea", "paint")
    page.click("#txt2img_style_save")
    page.wait_for_selector("text=Saved style 'paint'")
    page.click("#txt2img_clear_prompt")
    page.fill("#txt2img_prompt textarea", "a boat")
    page.click("#txt2img_styles input")
    page.get_by_role("option", name="paint", exact=True).click()
    page.wait_for_selector("#txt2img_styles .token")  # chosen (a multiselect shows it as a token)
    page.click("#txt2img_style_apply")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a boat, watercolor'")
    assert page.input_value("#txt2img_neg_prompt textarea") == "blurry"
    text = "a lighthouse\nNegative prompt: fog\nSteps: 6, Sampler: Euler, CFG scale: 4, Seed: 77, Size: 64x64"
    path = save_image(Image.new("RGB", (64, 64), (200, 40, 40)), tmp_path / "made.png", infotext=text)
    page.get_by_role("tab", name="PNG Info").click()
    page.set_input_files("#pnginfo_image input[type=file]", str(path))
    page.wait_for_function("() => document.querySelector('#pnginfo_html').innerText.includes('lighthouse')")
    page.click("#pnginfo_send_img2img")
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea')?.value === 'a lighthouse'")
    assert page.input_value("#img2img_seed input") == "77" and page.locator("#img2img_image img").count() == 1
    page.fill("#img2img_prompt textarea", text.replace("77", "78").replace("a lighthouse", "a harbour"))
    page.click("#img2img_read_params")  # pasting into img2img's own prompt box
    page.wait_for_function("() => document.querySelector('#img2img_seed input').value === '78'")
    assert page.input_value("#img2img_prompt textarea") == "a harbour"
    assert "Seed: 78" in generate(page, "img2img")


def test_settings_page_shows_the_loaded_checkpoint(page):
    page.get_by_role("tab", name="Settings").click()
    assert page.input_value("#setting_page_sd_model_checkpoint input") == page.input_value(
        "#setting_sd_model_checkpoint input") != ""


def test_install_from_local_git_repo_then_apply_and_restart_loads_it_and_quick_settings(browser, server, tmp_path):
    """Last of the tests on the module's server: it restarts that server (same process, same port)."""
    name = f"test-installed-{os.getpid()}"
    target = EXTENSIONS_DIR / name
    assert not target.exists()
    repo = git_repo(tmp_path / "hello-ext")
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#txt2img_generate")
        page.get_by_role("tab", name="Extensions").click()

        def install(url: str, folder: str = "") -> str:  # each answer differs from the one before
            page.fill("#extension_install_url input, #extension_install_url textarea", url)
            page.fill("#extension_install_name input, #extension_install_name textarea", folder)
            answer = "#extension_install_result :is(.sd-ok, .sd-error)"
            before = page.inner_text(answer) if page.locator(answer).count() else ""
            page.click("#extension_install_button")
            page.wait_for_function("([sel, before]) => { const e = document.querySelector(sel);"
                                   " return e && e.innerText !== before; }", arg=[answer, before])
            return page.inner_text(answer)

        assert "git clone failed" in install(str(tmp_path / "no-such-repo"), name)
        assert not target.exists()
        assert "Invalid extension folder name" in install(str(repo), "../escape")
        assert "Installed into" in install(f"file://{repo}", name)
        assert (target / "scripts" / "hello.py").is_file()
        assert "already exists" in install(str(repo), name)
        shot(page, "extensions")
        page.get_by_role("tab", name="Settings").click()
        page.click("#setting_page_quicksettings_list input")
        page.get_by_role("option", name="emphasis", exact=True).click()
        page.click("#settings_submit")
        page.wait_for_function("() => document.querySelector('#settings_result').innerText"
                               ".includes('changed: quicksettings_list')")
        assert "emphasis" in json.loads((server.data_dir / "config.json").read_text())["quicksettings_list"]
        page.get_by_role("tab", name="Extensions").click()
        page.click("#extensions_apply")  # the page reloads by itself once the restarted server answers
        page.get_by_role("tab", name="Hello ext").click(timeout=300_000)
        page.wait_for_selector("text=Hello from a cloned extension")
        assert page.locator("#setting_emphasis").is_visible()  # the new quick setting, in the top bar
        page.get_by_role("tab", name="Extensions").click()
        assert name in page.inner_text("#extensions_table")
        assert server.process.poll() is None  # the same process, restarted in place
        # the page polls the server while it restarts; failed polls are the only errors allowed
        assert [e for e in errors if "ERR_CONNECTION_REFUSED" not in e] == []
    finally:
        context.close()
        shutil.rmtree(target, ignore_errors=True)


def test_cross_origin_post_is_rejected(server):
    def post(origin: str | None) -> int:
        headers = {"Content-Type": "application/json"}
        if origin:
            headers["Origin"] = origin
        request = urllib.request.Request(server.url + "/gradio_api/queue/join", data=b"{}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert post("http://evil.example") == 403
    assert post(server.url) != 403


@pytest.mark.parametrize("flags, message", [
    (("--listen",), "refusing to start"),
    (("--share", "--gradio-auth", "u:p"), "--share needs internet access"),
])
def test_exposed_server_without_credentials_or_internet_refuses_to_start(tmp_path, flags, message):
    with pytest.raises(RuntimeError, match="exited with status 2") as failure:
        with running_server(tmp_path, flags, timeout=60):
            pass
    assert message in str(failure.value)


def test_gradio_auth_login_page_rejects_wrong_credentials_and_extension_install_is_refused(browser, tmp_path):
    with running_server(tmp_path, ("--listen", "--gradio-auth", "alice:wonder")) as s:
        context = browser.new_context(viewport=VIEWPORT)
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        errors = []  # the login page comes without Gradio's endpoint list: nothing in it may break for lack of it
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 400" not in m.text
              else None)  # the refused login answers 400
        pg.goto(s.url + "/")
        pg.wait_for_selector("input[type=password]")
        assert "named_endpoints" not in pg.content() or '"named_endpoints": {}' in pg.content()
        assert pg.locator("#txt2img_generate").count() == 0

        def login(password: str) -> None:
            pg.locator("input[type=text], input:not([type])").first.fill("alice")
            pg.fill("input[type=password]", password)
            pg.get_by_role("button", name=re.compile("login", re.I)).click()

        login("wrong")
        pg.wait_for_selector("text=/incorrect|invalid|wrong/i")
        shot(pg, "login-failed")
        assert pg.locator("#txt2img_generate").count() == 0
        login("wonder")
        pg.wait_for_selector("#txt2img_generate")
        pg.get_by_role("tab", name="Extensions").click()  # listening on the network: no installing from a URL
        assert "--enable-insecure-extension-access" in pg.inner_text("#extensions_install_refused")
        assert pg.locator("#extension_install_button").count() == 0
        context.close()
        assert errors == [], f"browser console errors: {errors}"


def test_lora_card_editor_saves_the_sidecar_and_the_card_inserts_preferred_weight_and_activation_text(page, server):
    sidecar = server.data_dir.parent / "models" / "Lora" / f"{LORA_NAME}.json"
    card = f"#txt2img_en_lora .sd-card[data-name='{LORA_NAME}']"
    try:
        page.fill("#txt2img_prompt textarea", "a cat")
        page.click("#txt2img_extra_networks")
        page.get_by_role("tab", name="LoRA").first.click()
        page.click(f"{card} .sd-card-edit")
        page.wait_for_selector("#txt2img_en_dialog", state="visible")
        page.locator("#txt2img_en_description textarea").fill("a tiny test LoRA")
        page.locator("#txt2img_en_activation textarea, #txt2img_en_activation input").first.fill("tinytrigger")
        set_number(page, "txt2img_en_weight", 0.7)
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#txt2img_en_dialog").first.screenshot(path=str(ARTIFACTS / "extra-network-metadata.png"))
        page.click("#txt2img_en_save")
        page.wait_for_selector("#txt2img_en_dialog", state="hidden")
        page.wait_for_selector(f"{card} .sd-card-desc:has-text('a tiny test LoRA')")  # the card shows it at once
        saved = json.loads(sidecar.read_text(encoding="utf-8"))
        assert (saved["activation text"], saved["preferred weight"]) == ("tinytrigger", 0.7)
        page.click(f"{card} .sd-card-name")
        page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value.includes('tinytrigger')")
        assert prompt_value(page) == f"a cat <lora:{LORA_NAME}:0.7> tinytrigger"
        page.click(f"{card} .sd-card-name")  # a second click takes the tag and the activation text out
        page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a cat'")
    finally:
        sidecar.unlink(missing_ok=True)  # the module's other tests expect the LoRA's default card text

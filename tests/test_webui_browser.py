"""The web UI in a real browser (Debian chromium driven by playwright) against the real server over tiny models:
generating — prompt to image, scripts and hires fix, the queue with a second user, skip and interrupt, the tool
buttons, checkpoint and VAE switching, mistakes shown on the page. Shared fixtures: ``tests/browser_support.py``."""
from __future__ import annotations

import re
import time
from pathlib import Path

from tests.browser_support import (  # noqa: F401 - fixtures
    TIMEOUT_MS,
    VIEWPORT,
    browser,
    choose,
    chromium_path,
    gallery_image,
    generate,
    open_panel,
    page,
    record_progress,
    server,
    set_number,
    shot,
    small_job,
    stored_setting,
    zip_pngs,
)
from tests.webui_server import VAE_NAME


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

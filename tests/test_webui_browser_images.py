"""The web UI in a real browser against the real server over tiny models: images in and out — img2img and inpaint
(uploaded and drawn masks, sketch), PNG info, the gallery's save and send buttons, styles, ControlNet panels."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.browser_support import (  # noqa: F401 - fixtures
    browser,
    choose,
    chromium_path,
    draw_stroke,
    gallery_image,
    generate,
    open_panel,
    page,
    panel_header,
    server,
    set_number,
    shot,
    small_job,
    stored_setting,
    upload_to_editor,
)


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


def test_styles_save_and_apply_and_parameters_paste_into_img2img_from_png_info_and_the_prompt(page, tmp_path):
    from modules.image_io import save_image

    page.fill("#txt2img_prompt textarea", "watercolor")
    page.fill("#txt2img_neg_prompt textarea", "blurry")
    page.fill("#txt2img_style_name input, #txt2img_style_name textarea", "paint")
    page.click("#txt2img_style_save")
    page.wait_for_selector("text=Saved style 'paint'")
    page.click("#txt2img_clear_prompt")  # answered by the server: type once the boxes are empty, as a person would
    page.wait_for_function("() => ['#txt2img_prompt', '#txt2img_neg_prompt'].every("
                           "id => document.querySelector(id + ' textarea').value === '')")
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

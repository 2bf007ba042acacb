"""AUTOMATIC1111 habits against one real server started with a user's A1111 COMMANDLINE_ARGS: in a real browser,
Ctrl+Up/Down weight editing, Generate forever, --theme, the built-in scripts picked in the Script dropdown,
img2img's Batch tab, the Refiner accordion and Tiling; over the API, A1111's options and
``info.extra_generation_params``."""
from __future__ import annotations

import json
import re
import urllib.request

import httpx
import pytest
from PIL import Image, ImageDraw

from modules import a1111_options
from modules.infotext import parse_infotext
from tests.browser_support import (  # noqa: F401 - browser, chromium_path and page are fixtures
    browser,
    choose,
    chromium_path,
    gallery_image,
    generate,
    open_panel,
    page,
    prompt_value,
    set_number,
    shot,
    small_job,
)
from tests.webui_server import running_server

A1111_ARGS = "--xformers --medvram-sdxl --theme dark --opt-sdp-attention"  # from a user's webui-user.sh


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("habits"), extra=("--api",), commandline_args=A1111_ARGS) as s:
        yield s


@pytest.fixture
def http(server):
    with httpx.Client(base_url=f"{server.url}/sdapi/v1", timeout=120) as client:
        yield client


def selection(page, elem_id: str) -> str:
    return page.evaluate("(id) => { const b = document.querySelector('#' + id + ' textarea');"
                         " return b.value.slice(b.selectionStart, b.selectionEnd); }", elem_id)


def test_ctrl_up_and_down_weight_the_selected_word_and_the_word_at_the_cursor(page):
    box = "#txt2img_prompt textarea"
    page.fill(box, "red circle")
    page.press(box, "Control+Home")
    for _ in range(3):
        page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Control+ArrowUp")
    page.keyboard.press("Control+ArrowUp")
    assert prompt_value(page) == "(red:1.2) circle"
    assert selection(page, "txt2img_prompt") == "red"  # still selected: pressing again goes on
    small_job(page, steps=1)
    assert generate(page).startswith("(red:1.2) circle")  # the job got the edited prompt
    page.press(box, "Control+Home")
    page.keyboard.press("ArrowRight")
    for _ in range(3):
        page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Control+ArrowDown")
    assert prompt_value(page) == "(red:1.1) circle"
    page.keyboard.press("Control+ArrowDown")
    assert prompt_value(page) == "red circle"  # back at 1.0: no parentheses
    page.press(box, "End")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Control+ArrowDown")  # no selection: the word under the cursor
    assert prompt_value(page) == "red (circle:0.9)"
    assert selection(page, "txt2img_prompt") == "circle"


def test_ctrl_up_steps_a_lora_tag_and_works_in_every_prompt_box(page):
    box = "#txt2img_prompt textarea"
    page.fill(box, "a cat <lora:x:1>")
    page.press(box, "End")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Control+ArrowUp")
    assert prompt_value(page) == "a cat <lora:x:1.1>"
    for kind in ("txt2img", "img2img"):
        if kind == "img2img":
            page.get_by_role("tab", name="img2img").first.click()
        for name in ("prompt", "neg_prompt"):
            box = f"#{kind}_{name} textarea"
            page.fill(box, "blurry photo")
            page.press(box, "Control+Home")
            page.keyboard.press("Control+ArrowUp")
            assert page.input_value(box) == "(blurry:1.1) photo", box


# Text with the selection marked «…», or the cursor as |; the step; the text and selection expected.
EDIT_CASES = [
    ("a «red» circle", 1, "a («red»:1.1) circle"),
    ("a («red»:1.1) circle", 1, "a («red»:1.2) circle"),
    ("a («red»:1.1) circle", -1, "a «red» circle"),
    ("«red »circle", 1, "(«red»:1.1) circle"),
    ("a re|d circle", 1, "a («red»:1.1) circle"),
    ("line one\nsec|ond", -1, "line one\n(«second»:0.9)"),
    ("(a big| cat:1.5), tree", -1, "(«a big cat»:1.4), tree"),
    ("(w|ord:0.9)", 1, "«word»"),
    ("(«w»:1.9)", 1, "(«w»:2.0)"),
    ("(«x»:1.15)", 1, "(«x»:1.25)"),
    ("(a (b:1.2) c|:1.1)", 1, "(«a (b:1.2) c»:1.2)"),
    ("(a ca|t)", 1, "(«a cat»:1.2)"),
    ("((c|at))", 1, "(«cat»:1.3)"),
    ("[c|at]", -1, "(«cat»:0.8)"),
    ("[ca|t:dog:0.5]", 1, "[(«cat»:1.1):dog:0.5]"),
    ("\\(ar|tist\\)", 1, "\\((«artist»:1.1)\\)"),
    ("x <lora:demo|:1>", 1, "x <«lora:demo»:1.1>"),
    ("x <lora:de«m»o:1>", -1, "x <«lora:demo»:0.9>"),
    ("<lora:demo:0.9|>", 1, "<«lora:demo»:1.0>"),
    ("a | b", 1, "a | b"),
]


def marked(text: str) -> tuple[str, int, int]:
    if "|" in text:
        return text.replace("|", ""), text.index("|"), text.index("|")
    start = text.index("«")
    return text.replace("«", "").replace("»", ""), start, text.index("»") - 1


def test_edit_weight_text_transformation(page):
    inputs = [[*marked(text), step * 0.1] for text, step, _ in EDIT_CASES]
    results = page.evaluate("(cases) => cases.map(c => window.sdEditWeight(...c))", inputs)
    for (text, _, expected), result in zip(EDIT_CASES, results):
        assert (result["text"], result["selStart"], result["selEnd"]) == marked(expected), text


RECORD_JOB_ENDS = """() => {
  const info = document.getElementById('txt2img_info');
  let shown = null;
  window.jobEnds = [];
  new MutationObserver(() => {
    const result = info.querySelector('.sd-infotext, .sd-warning, .sd-error');
    if (result && result !== shown) window.jobEnds.push(info.innerText);
    shown = result;
    if (document.getElementById('txt2img_progress').innerText.includes('Waiting in queue')) window.queued = true;
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
  document.addEventListener('click', (e) => {
    if (e.target.textContent === 'Cancel generate forever') window.endsAtCancel = window.jobEnds.length;
  }, true);
}"""


def is_dark(page, selector: str) -> bool:
    background = page.evaluate("(s) => getComputedStyle(document.querySelector(s)).backgroundColor", selector)
    return sum(map(int, re.findall(r"\d+", background)[:3])) < 3 * 96


def job_ends(page) -> list[str]:
    return page.evaluate("() => window.jobEnds")


def menu_item(page, name: str):
    page.click("#txt2img_generate", button="right")
    return page.get_by_role("menuitem", name=name, exact=True)


def test_generate_forever_repeats_jobs_through_interrupt_until_cancelled(page):
    page.fill("#txt2img_prompt textarea", "forever")
    small_job(page, steps=2)
    page.evaluate(RECORD_JOB_ENDS)
    assert menu_item(page, "Cancel generate forever").is_disabled()  # not on yet
    assert is_dark(page, ".sd-context-menu")  # in the dark theme's colours
    shot(page, "generate-forever-menu")
    page.get_by_role("menuitem", name="Generate forever", exact=True).click()
    page.wait_for_function("() => window.jobEnds.length >= 2")
    seeds = {re.search(r"Seed: (\d+)", text).group(1) for text in job_ends(page)[:2]}
    assert len(seeds) == 2  # two jobs, each with its own random seed

    set_number(page, "txt2img_batch_count", 100)  # long jobs from here on
    page.wait_for_function("() => /Step \\d+\\/200/.test(document.querySelector('#txt2img_progress').innerText)")
    page.click("#txt2img_interrupt")
    page.wait_for_function("() => window.jobEnds.some(t => t.includes('Interrupted'))")
    page.wait_for_selector("#txt2img_progress .sd-progress")  # forever mode goes on with the next job

    menu_item(page, "Cancel generate forever").click()
    page.click("#txt2img_interrupt")  # ends the job in progress
    page.wait_for_function("() => window.jobEnds.length > window.endsAtCancel")
    ended = len(job_ends(page))
    page.wait_for_timeout(3000)
    assert len(job_ends(page)) == ended  # no job started after the cancel
    assert page.locator("#txt2img_progress .sd-progress").count() == 0
    assert not page.evaluate("() => window.queued")  # one job at a time: never two in the queue
    assert menu_item(page, "Generate forever").is_enabled()


def page_is_dark(page) -> bool:
    dark = is_dark(page, "gradio-app")  # what fills the window
    assert dark == page.evaluate("() => document.body.classList.contains('dark')")  # Gradio's dark class on <body>
    return dark


def test_theme_flag_opens_dark_unless_the_url_says_light(page, server):
    assert page_is_dark(page)
    assert "__theme=dark" in page.url
    shot(page, "theme-dark")
    page.goto(server.url + "/?__theme=light")
    page.wait_for_selector("#txt2img_generate")
    assert not page_is_dark(page)
    page.reload()
    page.wait_for_selector("#txt2img_generate")
    assert not page_is_dark(page)


def pick(page, kind: str, title: str, prefix: str) -> None:
    """Choose the script ``title`` and wait until its controls (ids ``<prefix>_…``) show."""
    choose(page, f"{kind}_script", title)
    page.wait_for_selector(f"#{prefix}_controls", state="visible")


def fill(page, elem_id: str, text: str) -> None:
    page.fill(f"#{elem_id} textarea, #{elem_id} input[type=text]", text)


def tick_only(page, elem_id: str, choice: str) -> None:
    """In the checkbox group ``elem_id``, tick ``choice`` and untick the others."""
    for label in page.locator(f"#{elem_id} label").all():
        label.locator("input").set_checked(label.inner_text().strip() == choice)


def test_each_builtin_script_runs_from_the_script_dropdown(page, tmp_path):
    source = tmp_path / "circle.png"
    image = Image.new("RGB", (64, 64), (30, 60, 200))
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=(220, 30, 30))
    image.save(source)
    page.fill("#txt2img_prompt textarea", "a circle|red")
    small_job(page, steps=2)
    pick(page, "txt2img", "Prompt matrix", "txt2img_script_prompt_matrix")
    set_number(page, "txt2img_script_prompt_matrix_margin_size", 10)
    assert "a circle\n" in generate(page)
    grid = gallery_image(page)
    assert grid.width == 2 * 64 + 10 and grid.height > 64  # two cells, the margin between, the labels above

    pick(page, "txt2img", "Prompts from file or textbox", "txt2img_script_prompts_from_file_or_textbox")
    prompts = tmp_path / "prompts.txt"  # a multi-line file, uploaded as in A1111
    prompts.write_text("--prompt \"a red square\" --seed 5\n--prompt \"a blue square\" --seed 6\n")
    page.set_input_files("#txt2img_script_prompts_from_file_or_textbox_prompt_txt_upload input[type=file]",
                         str(prompts))
    page.wait_for_function("() => document.querySelector("
                           "'#txt2img_script_prompts_from_file_or_textbox_prompt_txt textarea').value.includes('blue')")
    info = generate(page)
    assert "a red square" in info and "Seed: 5," in info
    fill(page, "txt2img_script_prompts_from_file_or_textbox_prompt_txt", "--prompt x --colour red")
    assert "unknown option --colour" in generate(page)  # a clear message; the page goes on

    page.get_by_role("tab", name="img2img").first.click()
    page.set_input_files("#img2img_image input[type=file]", str(source))
    page.wait_for_selector("#img2img_image img")
    page.fill("#img2img_prompt textarea", "a circle")
    small_job(page, "img2img", steps=2)
    pick(page, "img2img", "Loopback", "img2img_script_loopback")
    set_number(page, "img2img_script_loopback_loops", 2)
    assert "Denoising curve: Linear" in generate(page, "img2img")
    assert gallery_image(page, "img2img").size == (2 * 64, 64)  # the one-row grid of both loops

    set_number(page, "img2img_width", 128)
    pick(page, "img2img", "Outpainting mk2", "img2img_script_outpainting_mk2")
    set_number(page, "img2img_script_outpainting_mk2_pixels", 64)
    tick_only(page, "img2img_script_outpainting_mk2_direction", "right")
    assert "Size: 128x64" in generate(page, "img2img")
    assert gallery_image(page, "img2img").size == (128, 64)
    shot(page, "outpainting-mk2")

    pick(page, "img2img", "Poor man's outpainting", "img2img_script_poor_man_s_outpainting")
    set_number(page, "img2img_script_poor_man_s_outpainting_pixels", 64)
    tick_only(page, "img2img_script_poor_man_s_outpainting_direction", "left")
    generate(page, "img2img")
    assert gallery_image(page, "img2img").size == (128, 64)


def test_batch_tab_runs_every_image_of_the_folder_and_saves_them_by_name(page, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    Image.new("RGB", (64, 64), (30, 60, 200)).save(folder / "first.png")
    Image.new("RGB", (64, 64), (200, 60, 30)).save(folder / "second.png")
    page.get_by_role("tab", name="img2img").first.click()
    page.click("#img2img_batch_tab-button, button[role=tab]:has-text('Batch')")
    page.fill("#img2img_batch_input_dir textarea, #img2img_batch_input_dir input", str(folder))
    page.fill("#img2img_batch_output_dir textarea, #img2img_batch_output_dir input", str(out))
    page.fill("#img2img_prompt textarea", "a red square")
    small_job(page, "img2img", steps=2)
    info = generate(page, "img2img")
    assert f"2 of 2 images saved in {out}" in info, info
    assert page.locator("#img2img_gallery .thumbnail-item img").count() == 2
    shot(page, "img2img-batch")
    assert sorted(p.name for p in out.iterdir()) == ["first.png", "second.png"]
    for path in out.iterdir():
        with Image.open(path) as image:
            fields = parse_infotext(image.info["parameters"])
        assert fields["Prompt"] == "a red square" and fields["Steps"] == "2" and fields["Size-1"] == "64"


def test_refiner_and_tiling_are_sent_and_pasted_back(page):
    page.fill("#txt2img_prompt textarea", "a tile")
    small_job(page, steps=5)  # the refiner runs the steps from 0.8 · 5 on
    page.click("#txt2img_tiling input")
    open_panel(page, "txt2img_refiner_accordion")
    choose(page, "txt2img_refiner_checkpoint", "tiny-beta.safetensors")
    info = generate(page)
    assert "Tiling: True" in info and "Refiner: tiny-beta [" in info and "Refiner switch at: 0.8" in info, info
    shot(page, "refiner-tiling")

    choose(page, "txt2img_refiner_checkpoint", "None")
    line = next(text for text in info.splitlines() if text.startswith("Steps: "))
    page.fill("#txt2img_prompt textarea", f"pasted\n{line}")
    page.click("#txt2img_read_params")
    page.wait_for_function("() => document.querySelector('#txt2img_refiner_checkpoint input').value "
                           "=== 'tiny-beta.safetensors'")
    page.get_by_role("tab", name="img2img").first.click()
    page.wait_for_selector("#img2img_refiner_accordion")
    page.wait_for_selector("#img2img_tiling")


def test_a_start_with_a1111_commandline_args_serves_the_page(server):
    page = urllib.request.urlopen(server.url + "/", timeout=30).read().decode()
    assert re.search(r'window\.sdTheme = \\*"dark\\*"', page)  # --theme acts (in Gradio's config, JSON-escaped)
    log = server.log()
    for flag in ("--xformers", "--opt-sdp-attention"):
        assert log.count(f"launch: {flag}: ") == 1, log
    assert "launch: --theme" not in log


def test_options_round_trip_of_an_unimplemented_a1111_key(server, http):
    before = http.get("/options").json()
    assert a1111_options.DEFAULTS.keys() <= before.keys()
    assert before["send_seed"] is True and before["jpeg_quality"] == 80  # A1111's defaults
    assert before["CLIP_stop_at_last_layers"] == 1 and before["randn_source"] == "CPU"  # ours win for our keys

    answer = http.post("/options", json={"send_seed": False, "jpeg_quality": 95, "CLIP_stop_at_last_layers": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"updated": ["CLIP_stop_at_last_layers"], "no_effect": ["jpeg_quality", "send_seed"]}
    after = http.get("/options").json()
    assert (after["send_seed"], after["jpeg_quality"], after["CLIP_stop_at_last_layers"]) == (False, 95, 2)
    stored = json.loads((server.data_dir / "config.json").read_text(encoding="utf-8"))
    assert stored["send_seed"] is False and stored["jpeg_quality"] == 95

    wrong_type = http.post("/options", json={"send_seed": "no", "eta_ddim": 0.5})
    assert wrong_type.status_code == 400 and "send_seed" in wrong_type.text
    unknown = http.post("/options", json={"no_such_option": 1, "eta_ddim": 0.5})
    assert unknown.status_code == 400 and "no_such_option" in unknown.text
    unchanged = http.get("/options").json()  # a refused request changes nothing
    assert unchanged["send_seed"] is False and unchanged["eta_ddim"] == 0.0
    assert http.post("/options", json={"CLIP_stop_at_last_layers": 1}).status_code == 200


def test_extra_generation_params_lists_the_hires_fields_and_save_txt_writes_the_infotext(server, http):
    small = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 3}
    plain = json.loads(http.post("/txt2img", json=small).json()["info"])
    assert plain["extra_generation_params"] == {}
    assert not list(server.data_dir.glob("outputs/txt2img-images/*/*.txt"))  # save_txt is off by default
    response = http.post("/txt2img", json={**small, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
                                           "hr_second_pass_steps": 2, "denoising_strength": 0.6,
                                           "save_images": True, "override_settings": {"save_txt": True}})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    extra = info["extra_generation_params"]
    assert extra["Hires upscale"] == 1.5 and extra["Hires upscaler"] == "Latent" and extra["Hires steps"] == 2
    assert extra["Denoising strength"] == 0.6
    assert not {"Steps", "Seed", "Size", "Model", "Version"} & extra.keys()
    texts = list(server.data_dir.glob("outputs/txt2img-images/*/*-3.txt"))
    assert len(texts) == 1 and texts[0].with_suffix(".png").is_file()
    assert texts[0].read_text(encoding="utf-8") == info["infotexts"][0]

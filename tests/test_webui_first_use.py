"""A new user's first minutes, in a real browser at 1440×900, on a fresh data folder with the bundled demo model
loaded (two tiny SD1 checkpoints beside it, for switching): the page's defaults, the layout and the icons."""
from __future__ import annotations

import io
import itertools
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.browser_support import (  # noqa: F401 - browser and chromium_path are fixtures
    browser,
    choose,
    chromium_path,
    gallery_image,
    generate,
    prompt_value,
    set_number,
    watched_page,
)
from tests.webui_server import REPO, running_server

playwright_api = pytest.importorskip("playwright.sync_api")

DEMO = REPO / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
DEMO_LCM = REPO / "models" / "Lora" / "demo-lcm.safetensors"
SCREEN = {"width": 1440, "height": 900}
ICON_BUTTONS = ("refresh_sd_model_checkpoint", "txt2img_read_params", "txt2img_clear_prompt", "txt2img_style_apply",
                "txt2img_style_save", "txt2img_random_seed", "txt2img_reuse_seed", "txt2img_swap", "txt2img_save",
                "txt2img_zip", "txt2img_open_folder")
EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\uFE0F]")


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-use")
    loras = root / "models" / "Lora"
    loras.mkdir(parents=True)
    for path in DEMO_LCM.parent.glob(f"{DEMO_LCM.stem}.*"):  # the bundled few-step LoRA and its card
        shutil.copy(path, loras / path.name)
    with running_server(root, ("--ckpt", str(DEMO))) as s:
        yield s


@pytest.fixture
def page(browser, demo_server):  # noqa: F811 - the browser fixture imported above
    with watched_page(browser, demo_server.url, SCREEN) as pg:
        yield pg


def box(page, selector: str) -> dict:
    return page.locator(selector).first.bounding_box()


def test_first_generate_with_the_page_defaults_draws_the_prompt_in_view(page):
    from modules.training.judge import judge

    assert page.input_value("#txt2img_width input[type=number]") == "64"  # the model's own size, not 512
    assert page.input_value("#txt2img_height input[type=number]") == "64"
    page.fill("#txt2img_prompt textarea", "a large red circle on a blue background")
    page.fill("#txt2img_seed input", "3")  # the one other field touched: the judged image is reproducible
    info = generate(page)
    assert "Size: 64x64" in info and "Model: demo-shapes" in info and "Steps: 20" in info, info
    judged = judge(np.asarray(gallery_image(page)))
    assert (judged.shape, judged.color, judged.background) == ("circle", "red", "blue"), judged
    page.evaluate("() => window.scrollTo(0, 0)")
    shown = box(page, "#txt2img_gallery img")
    assert shown["y"] >= 0 and shown["y"] + shown["height"] <= SCREEN["height"], shown  # in view without scrolling
    gallery = box(page, "#txt2img_gallery")
    assert shown["x"] >= gallery["x"] and shown["x"] + shown["width"] <= gallery["x"] + gallery["width"] + 1
    assert shown["y"] >= gallery["y"] and shown["y"] + shown["height"] <= gallery["y"] + gallery["height"] + 1
    fit, drawn = page.evaluate("""() => { const i = document.querySelector('#txt2img_gallery img');
        const s = Math.min(i.clientWidth / i.naturalWidth, i.clientHeight / i.naturalHeight);
        return [getComputedStyle(i).objectFit, s * i.naturalHeight]; }""")
    assert fit in ("contain", "scale-down") and drawn >= 200  # the whole image, scaled into its box, large
    assert box(page, "#txt2img_results")["x"] > box(page, "#txt2img_settings")["x"]  # controls left, results right
    page.screenshot(path=str(REPO / "test-artifacts" / "first-use.png"))


def test_four_lcm_steps_with_the_bundled_lcm_lora_card_draw_the_prompt(page):
    """The few-step path as a user takes it: the LoRA's card adds ``<lora:demo-lcm:1>``, then LCM, 4 steps, CFG 1."""
    from modules.training.judge import judge

    page.fill("#txt2img_prompt textarea", "a large red circle on a blue background")
    page.click("#txt2img_extra_networks")
    page.get_by_role("tab", name="LoRA").first.click()
    card = page.locator("#txt2img_en_lora .sd-card[data-name=demo-lcm]")
    assert "LCM sampler, 4 steps, CFG 1" in card.inner_text()  # the card's description says how to use it
    card.click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value.includes('<lora:')")
    assert prompt_value(page) == "a large red circle on a blue background <lora:demo-lcm:1>"
    choose(page, "txt2img_sampling", "LCM")
    set_number(page, "txt2img_steps", 4)
    set_number(page, "txt2img_cfg_scale", 1)
    page.fill("#txt2img_seed input", "3")
    info = generate(page)
    assert "Steps: 4, Sampler: LCM" in info and "CFG scale: 1," in info and 'Lora hashes: "demo-lcm: ' in info, info
    judged = judge(np.asarray(gallery_image(page)))
    assert (judged.shape, judged.color, judged.background) == ("circle", "red", "blue"), judged
    page.screenshot(path=str(REPO / "test-artifacts" / "few-step-lcm.png"))


def test_live_preview_takes_the_gallerys_place_at_its_size(page):
    page.fill("#txt2img_prompt textarea", "a large green square on a white background")
    set_number(page, "txt2img_steps", 60)
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_preview img", state="visible")
    preview = box(page, "#txt2img_preview")
    assert not page.locator("#txt2img_gallery").is_visible()
    page.wait_for_selector("#txt2img_info .sd-infotext")
    gallery = box(page, "#txt2img_gallery")
    assert not page.locator("#txt2img_preview").is_visible()
    assert abs(preview["height"] - gallery["height"]) <= 2 and abs(preview["width"] - gallery["width"]) <= 2
    # below the progress bar, whose height follows its text (one or two lines)
    assert abs(preview["x"] - gallery["x"]) <= 2 and 0 <= preview["y"] - gallery["y"] <= 120


def test_switching_checkpoints_moves_untouched_sizes_only(page):
    def choose_checkpoint(name: str) -> None:
        page.click("#setting_sd_model_checkpoint input")
        page.get_by_role("option", name=name, exact=True).click()

    def size(kind: str) -> tuple[str, str]:
        page.get_by_role("tab", name=kind).first.click()  # a tab's fields are drawn once it is shown
        return (page.input_value(f"#{kind}_width input[type=number]"),
                page.input_value(f"#{kind}_height input[type=number]"))

    choose_checkpoint("tiny-alpha.safetensors")  # an SD1 checkpoint without resolution metadata: 512
    page.wait_for_function("() => document.querySelector('#txt2img_width input[type=number]').value === '512'")
    assert size("img2img") == size("txt2img") == ("512", "512")
    set_number(page, "txt2img_width", 128)  # the user's own choice in txt2img
    choose_checkpoint("demo-shapes.safetensors")
    page.wait_for_function("() => document.querySelector('#img2img_width input[type=number]').value === '64'")
    assert size("txt2img") == ("128", "512") and size("img2img") == ("64", "64")


def test_typed_size_snaps_to_what_is_rendered(page):
    set_number(page, "txt2img_width", 100)
    page.wait_for_function("() => document.querySelector('#txt2img_width input[type=number]').value === '96'")
    page.fill("#txt2img_prompt textarea", "a blue triangle")
    assert "Size: 96x64" in generate(page)


def test_icons_are_drawn_without_an_emoji_font(page):
    texts = page.eval_on_selector_all("button", "bs => bs.map(b => b.innerText)")
    assert not [t for t in texts if EMOJI.search(t)]  # this machine has no emoji font: none may be needed
    shots = {}
    for elem_id in ICON_BUTTONS:
        button = page.locator(f"#{elem_id}")
        button.scroll_into_view_if_needed()
        icon = re.search(r"sd-icon-(?!text)(\w+)", button.get_attribute("class")).group(1)
        pixels = np.asarray(Image.open(io.BytesIO(button.screenshot())).convert("L"), np.int16)
        ink = pixels < pixels.max() - 80  # the icon's strokes against the button's face
        assert 15 < ink.sum() < 0.5 * ink.size, (elem_id, ink.sum())
        shots.setdefault(icon, ink[:, :40])  # the icon's square (text buttons show their label after it)
    assert len(shots) >= 10
    for (a, ia), (b, ib) in itertools.combinations(shots.items(), 2):
        if ia.shape == ib.shape:
            assert (ia != ib).sum() > 10, f"the {a} and {b} icons look the same (a missing-glyph box?)"


def _txt2img_pixels(page, prompt: str) -> np.ndarray:
    page.click("#tab_txt2img-button")
    page.fill("#txt2img_prompt textarea", prompt)
    page.fill("#txt2img_seed input", "12")
    info = generate(page)
    assert ('Lora hashes: "pagestar: ' in info) == ("<lora:pagestar:" in prompt), info
    return np.asarray(gallery_image(page))


def _train_from_the_page(page, kind: str, name: str, folder, while_training=None) -> str:
    """Fill the Train tab (name, folder; every other field as the page has it), train, watch the loss curve grow
    (then run ``while_training(page)``, which ends back on the Train tab) and a sample appear; the final status."""
    page.click("#tab_train-button")
    if kind != "LoRA":
        page.get_by_label(kind).check()
        page.wait_for_selector("#train_embedding_settings", state="visible")
    page.fill("#train_name textarea, #train_name input", name)
    page.fill("#train_folder textarea, #train_folder input", str(folder))
    page.click("#train_preview_dataset")
    page.wait_for_function("() => /20 images \\(20 with captions\\)/.test("
                           "document.querySelector('#train_status').innerText)")
    assert page.locator("#train_dataset img").count() == 20
    points = "() => +(document.querySelector('#train_loss_plot svg')?.dataset.points || 0)"
    page.evaluate(f"""() => {{  // every point count the curve shows, in order
        const seen = window.sdSeenPoints = [];
        setInterval(() => {{ const n = ({points})(); if (seen[seen.length - 1] !== n) seen.push(n); }}, 20);
    }}""")
    page.click("#train_start")
    page.wait_for_function("() => !/Trained/.test(document.querySelector('#train_status').innerText)")  # a new run
    page.wait_for_function(f"() => ({points})() >= 2", timeout=120_000)
    if while_training is not None:
        while_training(page)
    page.wait_for_selector("#train_sample img", timeout=120_000)  # the step-50 sample
    page.wait_for_function("() => /Trained|failed/.test(document.querySelector('#train_status').innerText)",
                           timeout=300_000)
    assert page.evaluate(points) == 150
    during = [n for n in page.evaluate("() => window.sdSeenPoints") if 0 < n < 150]
    assert len(during) >= 3 and during == sorted(during), during  # the curve grew while it trained
    assert page.locator("#train_samples img").count() == 3  # steps 50, 100, 150
    return page.inner_text("#train_status")


def test_teach_the_demo_model_a_star_as_a_lora_and_a_word_then_use_them(page, demo_server, tmp_path):
    from modules.training import shapes_world as world

    stars = tmp_path / "stars"
    world.concept_dataset(stars, 20, (world.STAR,), seed=9)
    def generation_waits_and_shows_the_training(page):
        page.click("#tab_txt2img-button")
        page.fill("#txt2img_prompt textarea", "a small red circle on a white background")
        page.click("#txt2img_generate")
        page.wait_for_function("() => /now running: Training lora pagestar: step \\d+\\/150/.test("
                               "document.querySelector('#txt2img_progress').innerText)")
        page.click("#tab_train-button")

    status = _train_from_the_page(page, "LoRA", "pagestar", stars, generation_waits_and_shows_the_training)
    assert "Trained pagestar.safetensors: step 150 of 150 (UNet learning rate 0.005, text encoder 0.001)" in status
    page.screenshot(path=str(REPO / "test-artifacts" / "train-lora.png"), full_page=True)
    page.click("#tab_txt2img-button")
    page.wait_for_function("() => /a small red circle/.test(document.querySelector('#txt2img_info').innerText)")
    page.click("#txt2img_extra_networks")
    page.get_by_role("tab", name="LoRA").first.click()
    card = page.locator("#txt2img_en_lora .sd-card[data-name=pagestar]")
    assert card.count() == 1 and card.locator("img").count() == 1  # a card with its sample as preview, no refresh
    prompt = "a large red star on a blue background"
    base = _txt2img_pixels(page, prompt)
    assert np.array_equal(_txt2img_pixels(page, f"{prompt} <lora:pagestar:0>"), base)
    taught = _txt2img_pixels(page, f"{prompt} <lora:pagestar:1>")
    assert np.abs(taught.astype(int) - base).mean() > 2  # visibly changed

    words = tmp_path / "words"
    world.concept_dataset(words, 20, (world.STAR,), seed=10)
    for text in words.glob("*.txt"):
        text.write_text("zapword, " + text.read_text(encoding="utf-8"), encoding="utf-8")
    status = _train_from_the_page(page, "Textual inversion (embedding)", "zapword", words)
    assert "Trained zapword.safetensors: step 150 of 150" in status, status
    page.screenshot(path=str(REPO / "test-artifacts" / "train-embedding.png"), full_page=True)
    page.click("#tab_txt2img-button")
    page.get_by_role("tab", name="Textual Inversion").first.click()
    assert page.locator("#txt2img_en_textual .sd-card[data-name=zapword]").count() == 1
    assert not np.array_equal(_txt2img_pixels(page, "zapword"), _txt2img_pixels(page, "a star"))

"""AUTOMATIC1111 habits in a real browser: Ctrl+Up/Down weight editing, Generate forever, and --theme."""
from __future__ import annotations

import re

import pytest

from tests.test_webui_browser import (  # noqa: F401 - browser, chromium_path and page are fixtures
    browser, chromium_path, generate, page, prompt_value, set_number, shot, small_job)
from tests.webui_server import running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("habits"), extra=("--theme", "dark")) as s:
        yield s


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

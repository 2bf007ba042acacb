"""What the browser tests share: Debian chromium driven by playwright, the real server over tiny models (one per test
module, with :data:`UI_DEFAULTS`), a fresh watched page per test, and the steps a person takes on the page."""
from __future__ import annotations

import io
import json
import subprocess
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from modules.system_deps import install_chromium
from tests.webui_server import REPO, running_server

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

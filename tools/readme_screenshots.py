"""The README's pictures, made by the real product: the server on the bundled demo model (fresh data folder) driven
in headless chromium at 1440×900, as a user would. Writes docs/screenshot-{txt2img,inpaint,controlnet,xyz}.png.
Run: python tools/readme_screenshots.py"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOCS = ROOT / "docs"
SCREEN = {"width": 1440, "height": 900}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def generate(page, kind: str = "txt2img") -> None:
    page.evaluate(f"() => document.querySelectorAll('#{kind}_info .sd-infotext, #{kind}_info .sd-error')"
                  ".forEach(e => e.remove())")
    page.click(f"#{kind}_generate")
    page.wait_for_selector(f"#{kind}_info .sd-infotext, #{kind}_info .sd-error", timeout=300_000)
    if page.locator(f"#{kind}_info .sd-error").count():
        raise RuntimeError(page.inner_text(f"#{kind}_info"))
    page.wait_for_timeout(800)  # the gallery has drawn the image
    page.evaluate("() => window.scrollTo(0, 0)")


def choose(page, elem_id: str, option: str) -> None:
    """Pick the first option of dropdown ``elem_id`` that matches the typed ``option``."""
    page.fill(f"#{elem_id} input", option)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)


def txt2img(page) -> None:
    page.fill("#txt2img_prompt textarea", "a large red circle on a blue background")
    page.fill("#txt2img_seed input", "3")
    generate(page)
    page.screenshot(path=str(DOCS / "screenshot-txt2img.png"))


def inpaint(page, tmp: Path) -> None:
    """The txt2img result with its left half masked (Inpaint upload), repainted with a yellow circle."""
    import io

    from PIL import Image

    src = page.locator("#txt2img_gallery img").first.get_attribute("src")
    image, mask = tmp / "result.png", tmp / "mask.png"
    Image.open(io.BytesIO(page.request.get(src).body())).save(image)
    half = Image.new("L", (64, 64), 0)
    half.paste(255, (0, 0, 32, 64))
    half.save(mask)
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint upload").click()
    page.set_input_files("#img2img_upload_image input[type=file]", str(image))
    page.set_input_files("#img2img_upload_mask input[type=file]", str(mask))
    page.wait_for_selector("#img2img_upload_mask img")
    page.fill("#img2img_prompt textarea", "a large yellow circle on a blue background")
    page.fill("#img2img_denoising_strength input[type=number]", "1")
    page.press("#img2img_denoising_strength input[type=number]", "Enter")
    generate(page, "img2img")
    page.screenshot(path=str(DOCS / "screenshot-inpaint.png"))
    page.get_by_role("tab", name="txt2img").first.click()


def controlnet(page, tmp: Path) -> None:
    from PIL import Image, ImageDraw

    silhouette = Image.new("RGB", (64, 64))
    ImageDraw.Draw(silhouette).polygon([(32, 8), (56, 54), (8, 54)], fill="white")  # a triangle the prompt lacks
    path = tmp / "silhouette.png"
    silhouette.save(path)
    page.fill("#txt2img_prompt textarea", "a large red shape on a white background")
    page.click("#txt2img_script_controlnet_panel > button.label-wrap")
    page.set_input_files("#txt2img_script_controlnet_unit0_image input[type=file]", str(path))
    choose(page, "txt2img_script_controlnet_unit0_model", "demo-shapes-silhouette")
    page.click("#txt2img_script_controlnet_unit0_preview")
    generate(page)
    page.set_viewport_size({"width": 1440, "height": 1500})
    page.screenshot(path=str(DOCS / "screenshot-controlnet.png"), clip={"x": 0, "y": 0, **{"width": 1440,
                                                                                          "height": 1500}})
    page.set_viewport_size(SCREEN)
    page.click("#txt2img_script_controlnet_unit0_enabled input")  # off again for the plot
    page.click("#txt2img_script_controlnet_panel > button.label-wrap")


def xyz(page) -> None:
    page.fill("#txt2img_prompt textarea", "a large red circle on a white background")
    choose(page, "txt2img_script", "X/Y/Z plot")
    choose(page, "txt2img_script_x_y_z_plot_x_type", "Prompt S/R")
    page.fill("#txt2img_script_x_y_z_plot_x_values input, #txt2img_script_x_y_z_plot_x_values textarea",
              "red, green, blue")
    choose(page, "txt2img_script_x_y_z_plot_y_type", "Prompt S/R")
    page.fill("#txt2img_script_x_y_z_plot_y_values input, #txt2img_script_x_y_z_plot_y_values textarea",
              "circle, square, triangle")
    generate(page)
    page.screenshot(path=str(DOCS / "screenshot-xyz.png"))


def main() -> int:
    from playwright.sync_api import sync_playwright

    from modules.system_deps import ensure_chromium
    from tests.webui_server import running_server

    chromium = ensure_chromium()
    if chromium is None:
        print("no chromium: cannot take the screenshots")
        return 1
    with tempfile.TemporaryDirectory(prefix="readme-shots-") as tmp, \
            running_server(Path(tmp), ("--ckpt-dir", str(ROOT / "models" / "Stable-diffusion"))) as server, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport=SCREEN)
        page.set_default_timeout(120_000)
        page.goto(server.url + "/")
        page.wait_for_function("() => document.querySelector('#txt2img_generate') && "
                               "!document.querySelector('#sd_status .sd-loading')", timeout=300_000)
        txt2img(page)
        inpaint(page, Path(tmp))
        controlnet(page, Path(tmp))
        xyz(page)
        browser.close()
    print("wrote", ", ".join(f"docs/screenshot-{n}.png" for n in ("txt2img", "inpaint", "controlnet", "xyz")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

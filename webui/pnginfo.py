"""PNG Info tab: an image's generation parameters and other chunks, and sending them to txt2img/img2img."""
from __future__ import annotations

import html

import gradio as gr

from modules.image_io import read_infotext
from webui.context import UiContext

HIDDEN_KEYS = frozenset({"parameters", "exif", "icc_profile", "dpi"})


def describe(image) -> tuple[str, str]:
    """(infotext or "", HTML of the parameters and the other text chunks)."""
    if image is None:
        return "", ""
    text = read_infotext(image) or ""
    parts = []
    if text:
        parts.append(f'<h3>parameters</h3><div class="sd-infotext">{html.escape(text)}</div>')
    for key, value in (image.info or {}).items():
        if key in HIDDEN_KEYS or not isinstance(value, (str, int, float)):
            continue
        parts.append(f"<h3>{html.escape(str(key))}</h3><div>{html.escape(str(value))}</div>")
    return text, "".join(parts) or "<div>No generation parameters in this image.</div>"


def build(ctx: UiContext):
    """Returns (image, infotext textbox, send-to-txt2img button, send-to-img2img button) for cross-tab wiring."""
    with gr.Row(equal_height=False):
        with gr.Column():
            image = gr.Image(label="Source", type="pil", sources=["upload", "clipboard"], height=420,
                             elem_id=ctx.tip("pnginfo_image", "Drop a PNG, JPEG or WebP made by a web UI"))
        with gr.Column():
            info = gr.HTML(elem_id="pnginfo_html")
            text = gr.Textbox(visible="hidden", elem_id="pnginfo_generation_info")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id=ctx.tip("pnginfo_send_txt2img",
                                                                          "Fill txt2img with these parameters"))
                to_img2img = gr.Button("Send to img2img", elem_id=ctx.tip("pnginfo_send_img2img",
                                                                          "Fill img2img with the image and its "
                                                                          "parameters"))
    image.change(lambda img: describe(img)[::-1], image, [info, text], show_progress="hidden")
    return image, text, to_txt2img, to_img2img

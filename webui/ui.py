"""The Gradio Blocks of the web UI: top bar, generation tabs, PNG Info, Settings, Extensions, and cross-tab sending."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from modules.extensions import ui_assets
from webui import extension_tabs, extensions_tab, pnginfo, settings_tab, top_bar
from webui.context import UiContext
from webui.generation_tab import GenerationTab, build_generation_tab, fill_updates
from webui.img2img_inputs import INPAINT_MODES

STATIC = Path(__file__).resolve().parent / "static"
STATUS_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class PageAssets:
    css: str
    head: str
    theme: object


def _inline_script(js: str) -> str:
    """A <script> element; "</" is escaped so that text in the code cannot end the element early."""
    return "<script>" + js.replace("</", "<\\/") + "</script>"


def page_assets(state, tooltips: dict[str, str]) -> PageAssets:
    """Stylesheet, the page script (Ctrl+Enter, card clicks, tooltips) and the theme, plus the extensions' own."""
    ext_js, ext_css = ui_assets(state)
    script = (STATIC / "script.js").read_text(encoding="utf-8")
    data = json.dumps(tooltips)
    head = "".join(_inline_script(js) for js in (f"window.sdTooltips = {data};\n{script}", ext_js) if js)
    css = (STATIC / "style.css").read_text(encoding="utf-8") + ("\n" + ext_css if ext_css else "")
    return PageAssets(css, head, gr.themes.Default())


def _send_image_to_img2img(ctx: UiContext, img2img: GenerationTab, image, infotext: str, mode: str) -> list:
    """Updates for: img2img fields…, the img2img image or inpaint editor, mode, sub-tabs, main tabs."""
    values = ctx.infotext_fields(infotext)
    updates = fill_updates(img2img, values)
    if mode in INPAINT_MODES:
        target = gr.skip(), {"background": image, "layers": [], "composite": image}
    else:
        target = image, gr.skip()
    return [*updates, *target, mode, gr.Tabs(selected=mode), gr.Tabs(selected="img2img"),
            gr.update(visible=mode in INPAINT_MODES)]


def _wire_sending(ctx: UiContext, main_tabs, png) -> None:
    txt2img, img2img = ctx.tabs["txt2img"], ctx.tabs["img2img"]
    inputs = img2img.inputs
    img2img_targets = [*img2img.fields.values(), inputs.image, inputs.inpaint, inputs.mode, inputs.tabs_component,
                       main_tabs, img2img.inpaint_group]
    for source in (txt2img, img2img):
        for mode, button in source.send_buttons.items():
            def send(request: gr.Request, source=source, mode=mode):
                out = ctx.outputs.get(request.session_hash, source.kind)
                if not out.images:
                    raise gr.Error("Generate an image first")
                i = min(out.selected, len(out.images) - 1)
                return _send_image_to_img2img(ctx, img2img, out.images[i], out.infotexts[i], mode)

            button.click(send, None, img2img_targets, show_progress="hidden")
    image, text, to_txt2img, to_img2img = png
    to_txt2img.click(lambda t: [*fill_updates(txt2img, ctx.infotext_fields(t)),
                                gr.Tabs(selected="txt2img")], text, [*txt2img.fields.values(), main_tabs],
                     show_progress="hidden")
    to_img2img.click(lambda img, t: _send_image_to_img2img(ctx, img2img, img, t, "img2img"), [image, text],
                     img2img_targets, show_progress="hidden")


def build_ui(state, startup_job=None) -> tuple[gr.Blocks, PageAssets]:
    """The whole UI over ``state``; ``startup_job`` is the model load in progress (the page says so until done)."""
    ctx = UiContext(state, startup_job)
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        bar = top_bar.build(ctx)
        with gr.Tabs(elem_id="tabs") as main_tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                build_generation_tab(ctx, "txt2img")
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                build_generation_tab(ctx, "img2img")
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo.build(ctx)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_values, settings_components = settings_tab.build(ctx)
            for tab in state.extensions.ui_tabs() if state.extensions is not None else []:
                with gr.Tab(tab.title, elem_id=f"tab_{tab.elem_id}"):
                    extension_tabs.build_tab(ctx, tab)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions_tab.build(ctx)
        _wire_sending(ctx, main_tabs, png)
        timer = gr.Timer(STATUS_POLL_SECONDS, active=not ctx.model_ready)

        def tick():
            return (top_bar.status_html(ctx), gr.update(value=top_bar.current_checkpoint(state)),
                    gr.Timer(active=not ctx.model_ready))

        timer.tick(tick, None, [bar.status, bar.checkpoint, timer], show_progress="hidden", queue=False)
        demo.load(lambda: [*settings_values(), top_bar.status_html(ctx), top_bar.current_checkpoint(state),
                           state.models.vae_choice, state.settings.current.CLIP_stop_at_last_layers,
                           gr.Timer(active=not ctx.model_ready)],
                  None, [*settings_components, bar.status, bar.checkpoint, bar.vae, bar.clip_skip, timer],
                  show_progress="hidden", queue=False)
    demo.queue(default_concurrency_limit=None)
    return demo, page_assets(state, ctx.tooltips)

"""The Gradio Blocks of the web UI: top bar, generation tabs, Extras, PNG Info, Checkpoint Merger, Train, Settings,
Extensions, and cross-tab sending."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from modules.extensions import ui_assets
from webui import (
    extension_tabs,
    extensions_tab,
    extras_tab,
    merger_tab,
    pnginfo,
    settings_tab,
    top_bar,
    train_tab,
    workers_tab,
)
from webui.context import UiContext
from webui.generation_tab import GenerationTab, build_generation_tab, fill_updates, is_local
from webui.icons import icons_css
from webui.img2img_inputs import INPAINT_MODES
from webui.notices import user_error
from webui.restart import Restarter
from webui.ui_config import FILE_NAME as UI_CONFIG_FILE
from webui.ui_config import UiConfig

STATIC = Path(__file__).resolve().parent / "static"
STATUS_POLL_SECONDS = 1.0
# static/: Ctrl+Enter, cards, tooltips, remembered prompts, size snapping; weight keys; Generate forever; the theme
PAGE_SCRIPTS = ("script.js", "prompt_keys.js", "generate_forever.js", "theme.js")


@dataclass(frozen=True)
class PageAssets:
    css: str
    head: str
    theme: object


def _inline_script(js: str) -> str:
    """A <script> element; "</" is escaped so that text in the code cannot end the element early."""
    return "<script>" + js.replace("</", "<\\/") + "</script>"


def page_assets(state, tooltips: dict[str, str], boot_id: str) -> PageAssets:
    """Stylesheet (with the icons'), the page scripts (:data:`PAGE_SCRIPTS`, after the page data: boot id, tooltips,
    ``--theme``) and the Gradio theme, plus the extensions' own. ``boot_id`` identifies this server process (the
    page reloads when it changes on restart)."""
    ext_js, ext_css = ui_assets(state)
    scripts = [(STATIC / name).read_text(encoding="utf-8") for name in PAGE_SCRIPTS]
    data = json.dumps(tooltips)
    page_data = (f'window.sdBootId = "{boot_id}";\nwindow.sdTooltips = {data};\n'
                 f'window.sdTheme = {json.dumps(state.options.server.theme or "")};\n')
    head = "".join(_inline_script(js) for js in (page_data, *scripts, ext_js) if js)
    css = "\n".join(c for c in ((STATIC / "style.css").read_text(encoding="utf-8"), icons_css(), ext_css) if c)
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


def _wire_sending(ctx: UiContext, main_tabs, png, extras: extras_tab.ExtrasTab) -> None:
    txt2img, img2img = ctx.tabs["txt2img"], ctx.tabs["img2img"]
    inputs = img2img.inputs
    img2img_targets = [*img2img.fields.values(), inputs.image, inputs.inpaint, inputs.mode, inputs.tabs_component,
                       main_tabs, img2img.inpaint_group]
    for source in (txt2img, img2img, extras):
        for mode, button in source.send_buttons.items():
            def send(request: gr.Request, source=source, mode=mode):
                out = ctx.outputs.get(request.session_hash, source.kind)
                if not out.images:
                    raise user_error("Generate an image first")
                i = min(out.selected, len(out.images) - 1)
                return _send_image_to_img2img(ctx, img2img, out.images[i], out.infotexts[i], mode)

            button.click(send, None, img2img_targets, show_progress="hidden")
    image, text, to_txt2img, to_img2img = png
    to_txt2img.click(lambda t: [*fill_updates(txt2img, ctx.infotext_fields(t)),
                                gr.Tabs(selected="txt2img")], text, [*txt2img.fields.values(), main_tabs],
                     show_progress="hidden")
    to_img2img.click(lambda img, t: _send_image_to_img2img(ctx, img2img, img, t, "img2img"), [image, text],
                     img2img_targets, show_progress="hidden")


def _wire_model_sizes(ctx: UiContext, checkpoint, size: tuple[int, int]) -> None:
    """Width and height follow the checkpoint's native size when the checkpoint field changes (``size``: the one
    the fields start with), in each tab whose size fields still hold the previous checkpoint's size and that has
    no size of its own in ui-config.json. The size is read from the named file, so it does not wait for the load."""
    if checkpoint is None:
        return
    tabs = list(ctx.tabs.items())
    sizes = [c for _, tab in tabs for c in (tab.fields["width"], tab.fields["height"])]
    last = gr.State(list(size))

    def follow(name, previous, *values):
        if not name:
            return [previous, *[gr.skip()] * len(values)]
        new = list(ctx.model_size(name))
        updates = []
        for i, (kind, _) in enumerate(tabs):
            own = ctx.ui_config.has_value(kind, "Width") or ctx.ui_config.has_value(kind, "Height")
            follows = not own and list(values[2 * i:2 * i + 2]) == list(previous)
            updates += [gr.update(value=v) for v in new] if follows and new != previous else [gr.skip()] * 2
        return [new, *updates]

    checkpoint.change(follow, [checkpoint, last, *sizes], [last, *sizes], show_progress="hidden", queue=False)


def build_ui(state, startup_job=None, restarter: Restarter | None = None) -> tuple[gr.Blocks, PageAssets]:
    """The whole UI over ``state``; ``startup_job`` is the model load in progress (the page says so until done);
    ``restarter`` lets the UI restart the server. Field defaults come from ui-config.json in the data folder."""
    ctx = UiContext(state, startup_job, ui_config=UiConfig(state.options.data_dir / UI_CONFIG_FILE),
                    restarter=restarter or Restarter())
    # Events run concurrently unless they say otherwise (jobs are ordered by our own queue). Read when the Blocks'
    # queue is made; set here instead of calling demo.queue(), which would rebuild Gradio's app once more (~1 s).
    os.environ.setdefault("GRADIO_DEFAULT_CONCURRENCY_LIMIT", "None")
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False, fill_width=True) as demo:
        bar = top_bar.build(ctx)
        with gr.Tabs(elem_id="tabs") as main_tabs:
            size = ctx.model_size()
            for kind in ("txt2img", "img2img"):
                with gr.Tab(kind, id=kind, elem_id=f"tab_{kind}") as tab:
                    build_generation_tab(ctx, kind, size)
                ctx.ui_config.register_tab(kind, tab)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = extras_tab.build(ctx)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo.build(ctx)
            with gr.Tab("Checkpoint Merger", id="modelmerger", elem_id="tab_modelmerger"):
                merger_tab.build(ctx)
            with gr.Tab("Train", id="train", elem_id="tab_train"):
                train_tab.build(ctx)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_values, settings_components = settings_tab.build(ctx)
            if state.queue.workers is not None:  # --workers / --ray-address
                with gr.Tab(workers_tab.TITLE, id="workers", elem_id="tab_workers"):
                    workers_tab.build(ctx, main_tabs)
            for tab in state.extensions.ui_tabs() if state.extensions is not None else []:
                with gr.Tab(tab.title, elem_id=f"tab_{tab.elem_id}"):
                    extension_tabs.build_tab(ctx, tab)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions_tab.build(ctx)
        _wire_sending(ctx, main_tabs, png, extras)
        _wire_model_sizes(ctx, bar.checkpoint, size)
        timer = gr.Timer(STATUS_POLL_SECONDS, active=not ctx.model_ready)

        def tick():
            checkpoint = [gr.update(value=top_bar.current_checkpoint(state))] if bar.checkpoint else []
            return [top_bar.status_html(ctx), *checkpoint, gr.Timer(active=not ctx.model_ready)]

        timer.tick(tick, None, [bar.status, *([bar.checkpoint] if bar.checkpoint else []), timer],
                   show_progress="hidden", queue=False)
        folders = [*(t.folder_button for t in ctx.tabs.values()), extras.folder_button]
        def on_load(request: gr.Request):
            local = is_local(request) and not state.options.server.share  # a shared link arrives from 127.0.0.1
            return [*settings_values(), top_bar.status_html(ctx), *bar.values(ctx),
                    gr.Timer(active=not ctx.model_ready), *[gr.update(visible=local)] * len(folders)]

        demo.load(on_load, None, [*settings_components, bar.status, *bar.settings.values(), timer, *folders],
                  show_progress="hidden", queue=False)
        ctx.ui_config.write_missing()
    return demo, page_assets(state, ctx.tooltips, ctx.restarter.boot_id)

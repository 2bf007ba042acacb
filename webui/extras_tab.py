"""The Extras tab, as A1111's: upscale one image, a batch of uploads or a folder on the server (Scale by / Scale to,
two upscalers blended), then send a result to img2img or inpaint. Jobs run in the app's queue with progress."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from modules import requester
from modules.output_folders import typed_folder
from modules.processing.extras import (
    FACE_RESTORATION_UNAVAILABLE,
    MAX_OUTPUT_SIDE,
    MAX_SCALE,
    ExtrasJob,
    ExtrasParams,
    ExtrasSource,
    submit_extras,
)
from modules.processing.saving import is_unsaved_warning
from webui.context import UiContext
from webui.generation_tab import OUTPUT_HEIGHT, POLL_SECONDS, is_local, open_in_file_browser
from webui.icons import icon_button
from webui.notices import user_error, user_warning
from webui.progress_html import info_html, job_progress_html

KIND = "extras"
MODES = ("single", "batch", "folder")  # the sub-tabs: Single Image, Batch Process, Batch from Directory


@dataclass
class ExtrasTab:
    kind: str = KIND
    gallery: object = None
    info: object = None
    progress: object = None
    folder_button: object = None  # shown only to a browser on the server's machine
    send_buttons: dict = field(default_factory=dict)


def _server_folder(ctx: UiContext, value: str, label: str, local: bool) -> Path:
    """A folder typed by the user: any folder for a browser on the server's machine, else only inside the data
    folder or an ``--allowed-output-roots`` root (ValueError naming ``label``); relative: below the data folder."""
    options = ctx.state.options
    return typed_folder(label, value, options.data_dir, options.allowed_output_roots, not local)


def _open_uploads(paths: list[str], max_each: int, max_total: int) -> list[ExtrasSource]:
    """The Batch Process uploads, each within ``max_each`` pixels and all within ``max_total`` (read from the
    headers before the pixels are decoded); ValueError naming the file otherwise."""
    sources, left = [], max_total
    for path in paths:
        name = Path(path).name
        try:
            with Image.open(path) as image:
                if image.width * image.height > min(max_each, left):
                    raise ValueError(f"{name}: {image.width}×{image.height} is more pixels than this request may "
                                     "still upload (Settings → Limits of a request)")
                image.load()
        except (OSError, Image.DecompressionBombError):
            raise ValueError(f"{name}: not a readable image") from None
        left -= image.width * image.height
        sources.append(ExtrasSource(name, image))
    return sources


def _folder_sources(folder: Path) -> list[ExtrasSource]:
    """The files of ``folder`` (not its subfolders, not hidden ones), by name; those that are not images are
    skipped by the job with a warning."""
    if not folder.is_dir():
        raise ValueError(f"Input directory: {folder} is not a folder")
    try:
        files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: p.name)
    except OSError as e:
        raise ValueError(f"Input directory: cannot read {folder} ({e.strerror or e})") from None
    if not files:
        raise ValueError(f"Input directory: {folder} holds no files")
    return [ExtrasSource(p.name, path=p) for p in files]


def _job(ctx: UiContext, values: dict, request: gr.Request) -> ExtrasJob:
    """The job for the selected sub-tab; ValueError with what the user has to fix."""
    state = ctx.state
    settings = state.settings.current
    params = ExtrasParams(resize_mode=int(values["resize_mode"]), upscaling_resize=float(values["resize"]),
                          upscaling_resize_w=int(values["width"] or 0), upscaling_resize_h=int(values["height"] or 0),
                          upscaling_crop=bool(values["crop"]), upscaler_1=values["upscaler_1"] or "None",
                          upscaler_2=values["upscaler_2"] or "None",
                          extras_upscaler_2_visibility=float(values["visibility"]))
    default_folder = settings.output_dir(KIND, state.options.data_dir)
    mode = values["mode"]
    if mode == "single":
        image = values["image"]
        if image is None:
            raise ValueError("image: upload an image in the Single Image tab first")
        if image.width * image.height > settings.limit_upload_pixels:
            raise ValueError(f"image: {image.width}×{image.height} has more than {settings.limit_upload_pixels} "
                             "pixels (Settings → Limits of a request)")
        return ExtrasJob(params, [ExtrasSource("", image)], default_folder)
    if mode == "batch":
        paths = [getattr(f, "name", f) for f in values["files"] or []]
        if not paths:
            raise ValueError("images: upload images in the Batch Process tab first")
        sources = _open_uploads(paths, settings.limit_upload_pixels, settings.limit_upload_pixels_total)
        return ExtrasJob(params, sources, default_folder, field="images")
    local = is_local(request) and not state.options.server.share  # a shared link arrives from 127.0.0.1
    if not (values["input_dir"] or "").strip():
        raise ValueError("Input directory: type the folder whose images to upscale")
    sources = _folder_sources(_server_folder(ctx, values["input_dir"].strip(), "Input directory", local))
    output = (values["output_dir"] or "").strip()
    save_to = _server_folder(ctx, output, "Output directory", local) if output else default_folder
    return ExtrasJob(params, sources, save_to, keep=bool(values["show_results"]), field="Input directory")


def _inputs(ctx: UiContext) -> dict:
    """The three sub-tabs; their components by name, ``mode`` following the selected one."""
    c = {"mode": gr.State("single")}
    tabs = {}
    with gr.Tabs(elem_id="extras_mode_tabs"):
        with gr.Tab("Single Image", id="single", elem_id="extras_single_tab") as tabs["single"]:
            c["image"] = gr.Image(label="Source", type="pil", height=360, sources=["upload", "clipboard"],
                                  format="png", elem_id=ctx.tip("extras_image", "The image to upscale"))
        with gr.Tab("Batch Process", id="batch", elem_id="extras_batch_tab") as tabs["batch"]:
            c["files"] = gr.File(label="Batch Process", file_count="multiple", file_types=["image"],
                                 type="filepath", elem_id=ctx.tip("extras_image_batch", "Images to upscale, each "
                                                                  "saved under its own name"))
        with gr.Tab("Batch from Directory", id="folder", elem_id="extras_folder_tab") as tabs["folder"]:
            c["input_dir"] = gr.Textbox(label="Input directory", placeholder="A folder on the server's computer",
                                        elem_id=ctx.tip("extras_batch_input_dir", "Every image in this folder is "
                                                        "upscaled; from another computer only folders inside the "
                                                        "data folder (or --allowed-output-roots)"))
            c["output_dir"] = gr.Textbox(label="Output directory", placeholder="Empty: the Extras images folder",
                                         elem_id=ctx.tip("extras_batch_output_dir", "Where the results are saved"))
            c["show_results"] = gr.Checkbox(True, label="Show result images", elem_id=ctx.tip(
                "extras_show_extras_results", "Show the results here too (off: only save them)"))
    for mode, tab in tabs.items():
        tab.select(lambda m=mode: m, None, c["mode"], queue=False, show_progress="hidden")
    return c


def _upscale_controls(ctx: UiContext) -> dict:
    """Scale by / Scale to (sub-tabs, as in A1111), the two upscalers and the second one's visibility."""
    c = {"resize_mode": gr.State(0)}
    names = ctx.state.upscalers.names()
    with gr.Tabs(elem_id="extras_resize_mode"):
        with gr.Tab("Scale by", id="scale_by", elem_id="extras_scale_by_tab") as by_tab:
            c["resize"] = gr.Slider(1, min(8, MAX_SCALE), 4, step=0.05, label="Resize",
                                    elem_id=ctx.tip("extras_upscaling_resize", "Width and height are multiplied by "
                                                    "this"))
        with gr.Tab("Scale to", id="scale_to", elem_id="extras_scale_to_tab") as to_tab:
            with gr.Row():
                c["width"] = gr.Number(512, label="Width", precision=0, minimum=1, maximum=MAX_OUTPUT_SIDE,
                                       elem_id=ctx.tip("extras_upscaling_resize_w", "Width of the result"))
                c["height"] = gr.Number(512, label="Height", precision=0, minimum=1, maximum=MAX_OUTPUT_SIDE,
                                        elem_id=ctx.tip("extras_upscaling_resize_h", "Height of the result"))
                swap = icon_button("swap", "Swap width and height", ctx.tip("extras_swap", "Swap width and height"))
            c["crop"] = gr.Checkbox(True, label="Crop to fit", elem_id=ctx.tip(
                "extras_upscaling_crop", "Cut the result to exactly this size around its centre; off: the image keeps "
                "its proportions and covers the size"))
    by_tab.select(lambda: 0, None, c["resize_mode"], queue=False, show_progress="hidden")
    to_tab.select(lambda: 1, None, c["resize_mode"], queue=False, show_progress="hidden")
    swap.click(lambda w, h: (h, w), [c["width"], c["height"]], [c["width"], c["height"]], queue=False,
               show_progress="hidden")
    with gr.Row():
        c["upscaler_1"] = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id=ctx.tip(
            "extras_upscaler_1", "Lanczos, Nearest or a model from models/ESRGAN (and the other upscaler folders)"))
        c["upscaler_2"] = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id=ctx.tip(
            "extras_upscaler_2", "A second upscaler whose result is blended in"))
        refresh = icon_button("refresh", "Refresh upscalers", ctx.tip("extras_refresh_upscalers",
                                                                      "Look for new model files"))
    c["visibility"] = gr.Slider(0, 1, 0, step=0.001, label="Upscaler 2 visibility", elem_id=ctx.tip(
        "extras_upscaler_2_visibility", "0: upscaler 1 alone; 1: upscaler 2 alone"))
    gr.Markdown(f"{FACE_RESTORATION_UNAVAILABLE[0].upper()}{FACE_RESTORATION_UNAVAILABLE[1:]}.",
                elem_id="extras_face_restoration_note")

    def refreshed(first, second):
        ctx.state.upscalers.catalog.refresh()
        found = ctx.state.upscalers.names()
        return [gr.update(choices=found, value=v if v in found else "None") for v in (first, second)]

    refresh.click(refreshed, [c["upscaler_1"], c["upscaler_2"]], [c["upscaler_1"], c["upscaler_2"]],
                  show_progress="hidden")
    return c


def _output_panel(ctx: UiContext, tab: ExtrasTab):
    tab.progress = gr.HTML("", elem_id="extras_progress", elem_classes="sd-progress-box")
    tab.gallery = gr.Gallery(label="Output", format="png", columns=4, height=OUTPUT_HEIGHT, object_fit="contain",
                             preview=True, elem_id="extras_gallery", interactive=False,
                             elem_classes="sd-output-image")
    with gr.Row(elem_classes="sd-output-buttons"):
        tab.folder_button = icon_button("folder", "Open images folder", ctx.tip(
            "extras_open_folder", "Open the Extras images folder in this computer's file browser"), visible=False)
        for target in ("img2img", "inpaint"):
            tab.send_buttons[target] = gr.Button(f"→ {target}", min_width=40, elem_id=ctx.tip(
                f"extras_send_to_{target}", f"Send the selected image (and the parameters it carries) to {target}"))
    tab.info = gr.HTML("", elem_id="extras_info", elem_classes="sd-info")

    def select(evt: gr.SelectData, request: gr.Request):
        out = ctx.outputs.get(request.session_hash, KIND)
        out.selected = evt.index if isinstance(evt.index, int) else 0
        shown = [i for i in out.job.result.images if i.image is not None] if out.job is not None else []
        return info_html(shown[out.selected].infotext) if out.selected < len(shown) else ""

    def open_folder(request: gr.Request):
        folder = ctx.state.settings.current.output_dir(KIND, ctx.state.options.data_dir)
        if not is_local(request):
            raise user_error(f"The images folder is on the server's computer: {folder}")
        if problem := open_in_file_browser(folder):
            raise user_error(f"{problem}; the images are in {folder}")

    tab.gallery.select(select, None, tab.info, show_progress="hidden")
    tab.folder_button.click(open_folder, None, None)


def _run(ctx: UiContext, tab: ExtrasTab, values: dict, request: gr.Request):
    """Queue the job and stream its progress and finished images; yields ``{component: update}``."""
    out = ctx.outputs.get(request.session_hash, KIND)
    try:
        job_spec = _job(ctx, values, request)
        with requester.acting_as(requester.from_gradio(request)):  # the queue's turns, the remote limits
            job = submit_extras(ctx.state, job_spec)
    except ValueError as e:
        yield {tab.info: info_html("", error=str(e)), tab.progress: ""}
        return
    out.job = job
    yield {tab.info: "", tab.progress: job_progress_html(ctx.state.queue, job)}
    shown = 0
    while not job.done:
        frame = {tab.progress: job_progress_html(ctx.state.queue, job)}
        if len(job.progress.images) != shown:
            shown = len(job.progress.images)
            frame[tab.gallery] = gr.update(value=list(job.progress.images), selected_index=0)
        yield frame
        job.wait_done(POLL_SECONDS)
    try:
        result = job.wait()
    except Exception as e:  # noqa: BLE001 - the error is the user's to read; the UI goes on
        yield {tab.progress: "", tab.info: info_html("", error=f"{type(e).__name__}: {e}")}
        return
    kept = [i for i in result.images if i.image is not None]
    out.images, out.infotexts = [i.image for i in kept], [i.parameters for i in kept]
    out.paths, out.selected = [i.path for i in result.images], 0
    warnings = result.warnings + (["Interrupted: the images finished so far are kept"] if result.interrupted else [])
    for line in filter(is_unsaved_warning, warnings):
        user_warning(line)
    saved = [i.path for i in result.images if i.path is not None]
    note = (f'<div class="sd-note">{len(saved)} image{"s" if len(saved) != 1 else ""} saved in '
            f"{saved[0].parent}</div>") if saved else ""
    first = result.images[0].infotext if result.images else ""
    gallery = gr.update(value=out.images, selected_index=0 if out.images else None)  # the first one shown whole
    yield {tab.progress: "", tab.gallery: gallery, tab.info: info_html(first, warnings) + note}


def build(ctx: UiContext) -> ExtrasTab:
    """Lay out the tab (inputs and controls left, Generate and the results right) and wire its events."""
    tab = ExtrasTab()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, elem_id="extras_settings"):
            controls = {**_inputs(ctx), **_upscale_controls(ctx)}
        with gr.Column(scale=1, elem_id="extras_results"):
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", scale=3, elem_id=ctx.tip(
                    "extras_generate", "Upscale the images of the selected tab"))
                interrupt = gr.Button("Interrupt", scale=1, elem_id=ctx.tip(
                    "extras_interrupt", "Stop your current Extras job; finished images stay"))
            _output_panel(ctx, tab)

    def generate_images(data: dict, request: gr.Request):
        yield from _run(ctx, tab, {name: data[component] for name, component in controls.items()}, request)

    def stop(request: gr.Request):
        job = ctx.outputs.get(request.session_hash, KIND).job
        if job is not None and not job.done:
            job.interrupt()

    generate.click(generate_images, set(controls.values()), [tab.gallery, tab.info, tab.progress],
                   concurrency_limit=None, show_progress="hidden")
    interrupt.click(stop, None, None, queue=False)
    return tab


"""The txt2img and img2img tabs: prompts, generation controls, scripts, output panel, and the generate loop."""
from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from modules import requester
from modules.image_io import save_image
from modules.output_folders import OutputFolderError, make_folder
from modules.processing.outputs import zip_images
from modules.processing.params import MAX_BATCH_SIZE, MAX_SIZE, MAX_STEPS, MIN_SIZE, REFINER_SWITCH_AT
from modules.processing.saving import is_unsaved_warning, refusal
from modules.prompts.network_tags import extract_network_tags
from modules.prompts.styles import PromptStyle, apply_styles, load_styles, save_style
from modules.sampling.registry import sampler_names, schedule_labels
from webui import extra_networks, img2img_batch, img2img_inputs, script_controls
from webui.context import UiContext
from webui.icons import icon_button
from webui.notices import user_error, user_warning
from webui.params_fields import (
    INPAINT_AREAS,
    MASK_MODES,
    MASKED_CONTENT,
    NO_REFINER,
    RESIZE_MODES,
    build_params,
    looks_like_infotext,
)
from webui.progress_html import info_html, job_progress_html

POLL_SECONDS = 0.25
log = logging.getLogger("sdwebui")


@dataclass
class GenerationTab:
    kind: str
    fields: dict = field(default_factory=dict)  # params field name -> component
    prompt: object = None
    negative_prompt: object = None
    gallery: object = None
    info: object = None
    inputs: object = None  # img2img_inputs.Img2ImgInputs for img2img
    send_buttons: dict = field(default_factory=dict)
    folder_button: object = None  # shown only to a browser on the server's machine
    generate: object = None
    interrupt: object = None
    skip: object = None
    checkpoints: object = None  # the checkpoint catalog: a pasted "Refiner: name [hash]" becomes its dropdown entry


def _token_counter(ctx: UiContext, text: str) -> str:
    """"used/capacity" of the prompt's tokens; extra-network tags (``<lora:…>``) take none, as in A1111."""
    model = ctx.state.models.current
    if model is None:
        return '<span class="sd-tokens">…/75</span>'
    from modules.text_encoding import PromptEncoder

    settings = ctx.state.settings.current
    try:
        used, capacity = PromptEncoder(model, settings.CLIP_stop_at_last_layers, settings.emphasis,
                                       ctx.state.networks.embeddings()).token_count(extract_network_tags(text or "")[0])
    except Exception:  # noqa: BLE001 - a counter must never break typing
        return '<span class="sd-tokens">?/75</span>'
    return f'<span class="sd-tokens">{used}/{capacity}</span>'


def _prompt_box(ctx: UiContext, kind: str, name: str, label: str, tip: str, lines: int):
    with gr.Column(scale=6, elem_classes="sd-prompt-col"):
        box = gr.Textbox(label=label, show_label=False, lines=lines, max_lines=20,
                         elem_id=ctx.tip(f"{kind}_{name}", tip), placeholder=f"{label} (Ctrl+Enter to generate)")
        counter = gr.HTML('<span class="sd-tokens">0/75</span>', elem_id=f"{kind}_{name}_tokens",
                          elem_classes="sd-token-counter")
    box.change(lambda text: _token_counter(ctx, text), box, counter, trigger_mode="always_last",
               show_progress="hidden", queue=False)
    return box


def _styles_controls(ctx: UiContext, tab: GenerationTab, apply):
    """The styles dropdown, a name box and its save button, under the action buttons; ``apply`` is the icon button
    that writes the selected styles into the prompts."""
    kind = tab.kind
    names = lambda: sorted(load_styles(ctx.state.styles_path))  # noqa: E731
    styles = gr.Dropdown(names(), multiselect=True, label="Styles",
                         elem_id=ctx.tip(f"{kind}_styles", "Styles added to the prompts of every job"))
    with gr.Row(elem_classes="sd-style-save"):
        name = gr.Textbox(label="New style name", show_label=False, container=False, placeholder="New style name",
                          scale=4, elem_id=ctx.tip(f"{kind}_style_name",
                                                   "Name under which to save the current prompts"))
        save = icon_button("save", "Save style", ctx.tip(f"{kind}_style_save", "Save the current prompts as a "
                                                         "style"))

    def do_apply(selected, prompt, negative):
        chosen = [s for n, s in load_styles(ctx.state.styles_path).items() if n in (selected or [])]
        prompt, negative = apply_styles(prompt, negative, chosen)
        return prompt, negative, []

    def do_save(style_name, prompt, negative):
        style_name = (style_name or "").strip()
        if not style_name:
            raise user_error("Type a name for the style first")
        save_style(ctx.state.styles_path, PromptStyle(style_name, prompt, negative))
        gr.Info(f"Saved style {style_name!r}")
        return gr.update(choices=names()), ""

    apply.click(do_apply, [styles, tab.prompt, tab.negative_prompt], [tab.prompt, tab.negative_prompt, styles])
    save.click(do_save, [name, tab.prompt, tab.negative_prompt], [styles, name])
    tab.fields["styles"] = styles


def _seed_controls(ctx: UiContext, tab: GenerationTab):
    kind, f = tab.kind, tab.fields
    with gr.Row():
        f["seed"] = gr.Number(-1, label="Seed", precision=0, scale=4,
                              elem_id=ctx.tip(f"{kind}_seed", "-1 picks a random seed; the same seed and settings "
                                              "give the same image"))
        random_seed = icon_button("dice", "Random seed", ctx.tip(f"{kind}_random_seed", "Random seed (-1)"))
        reuse_seed = icon_button("reuse", "Reuse seed", ctx.tip(f"{kind}_reuse_seed",
                                                                "Reuse the seed of the selected image"))
        extra = gr.Checkbox(False, label="Extra", scale=1, elem_id=ctx.tip(f"{kind}_seed_extra",
                                                                        "Variation seed and seed resize options"))
    with gr.Group(visible=False) as extra_group:
        with gr.Row():
            f["subseed"] = gr.Number(-1, label="Variation seed", precision=0,
                                     elem_id=ctx.tip(f"{kind}_subseed", "Seed of the variation mixed in"))
            f["subseed_strength"] = gr.Slider(0, 1, 0, step=0.01, label="Variation strength",
                                              elem_id=ctx.tip(f"{kind}_subseed_strength",
                                                              "0: the main seed only; 1: the variation seed only"))
        with gr.Row():
            f["seed_resize_from_w"] = gr.Slider(0, 2048, 0, step=8, label="Resize seed from width",
                                                elem_id=ctx.tip(f"{kind}_seed_resize_w", "Make the noise as if "
                                                                "the image were this wide (0: off)"))
            f["seed_resize_from_h"] = gr.Slider(0, 2048, 0, step=8, label="Resize seed from height",
                                                elem_id=ctx.tip(f"{kind}_seed_resize_h", "Make the noise as if "
                                                                "the image were this tall (0: off)"))
    extra.change(lambda on: gr.update(visible=on), extra, extra_group, queue=False, show_progress="hidden")
    random_seed.click(lambda: -1, None, f["seed"], queue=False, show_progress="hidden")

    def last_seed(request: gr.Request):
        out = ctx.outputs.get(request.session_hash, kind)
        return out.seeds[min(out.selected, len(out.seeds) - 1)] if out.seeds else -1

    reuse_seed.click(last_seed, None, f["seed"], show_progress="hidden")


def _sampling_controls(ctx: UiContext, tab: GenerationTab, size: tuple[int, int]):
    """Sampler, schedule, steps, size (``size``: the checkpoint's native one), batch and CFG."""
    kind, f = tab.kind, tab.fields
    with gr.Row():
        f["sampler_name"] = gr.Dropdown(sampler_names(), value="Euler a" if "Euler a" in sampler_names()
                                        else sampler_names()[0], label="Sampling method",
                                        elem_id=ctx.tip(f"{kind}_sampling", "Which sampler solves the diffusion"))
        f["scheduler"] = gr.Dropdown(schedule_labels(), value="Automatic", label="Schedule type",
                                     elem_id=ctx.tip(f"{kind}_scheduler", "How noise levels are spaced over steps"))
        f["steps"] = gr.Slider(1, min(MAX_STEPS, 150), 20, step=1, label="Sampling steps",
                               elem_id=ctx.tip(f"{kind}_steps", "More steps: more detail, slower"))
    with gr.Row():
        with gr.Column(scale=4):
            f["width"] = gr.Slider(MIN_SIZE, min(MAX_SIZE, 2048), size[0], step=8, label="Width",
                                   elem_id=ctx.tip(f"{kind}_width", "Image width in pixels (multiple of 8)"))
            f["height"] = gr.Slider(MIN_SIZE, min(MAX_SIZE, 2048), size[1], step=8, label="Height",
                                    elem_id=ctx.tip(f"{kind}_height", "Image height in pixels (multiple of 8)"))
        swap = icon_button("swap", "Swap width and height", ctx.tip(f"{kind}_swap", "Swap width and height"))
        with gr.Column(scale=2):
            f["n_iter"] = gr.Slider(1, 100, 1, step=1, label="Batch count",
                                    elem_id=ctx.tip(f"{kind}_batch_count", "How many batches, one after another"))
            f["batch_size"] = gr.Slider(1, min(MAX_BATCH_SIZE, 8), 1, step=1, label="Batch size",
                                        elem_id=ctx.tip(f"{kind}_batch_size", "Images made at once per batch"))
    swap.click(lambda w, h: (h, w), [f["width"], f["height"]], [f["width"], f["height"]], queue=False,
               show_progress="hidden")
    f["cfg_scale"] = gr.Slider(1, 30, 7, step=0.5, label="CFG Scale",
                               elem_id=ctx.tip(f"{kind}_cfg_scale", "How strongly the image follows the prompt"))


def _refiner_controls(ctx: UiContext, tab: GenerationTab):
    """The Tiling checkbox and A1111's Refiner accordion: a checkpoint that runs the steps after "Switch at"."""
    kind, f = tab.kind, tab.fields
    f["tiling"] = gr.Checkbox(False, label="Tiling", elem_id=ctx.tip(
        f"{kind}_tiling", "Make a seamless texture: the image's edges continue each other"))
    choices = [NO_REFINER, *(info.filename for info in ctx.state.checkpoints.items())]
    with gr.Accordion("Refiner", open=False, elem_id=f"{kind}_refiner_accordion"), gr.Row():
        f["refiner_checkpoint"] = gr.Dropdown(choices, value=NO_REFINER, label="Checkpoint", allow_custom_value=True,
                                              elem_id=ctx.tip(f"{kind}_refiner_checkpoint", "The checkpoint that "
                                                              "finishes the image (e.g. an SDXL refiner)"))
        f["refiner_switch_at"] = gr.Slider(0.01, 0.99, REFINER_SWITCH_AT, step=0.01, label="Switch at",
                                           elem_id=ctx.tip(f"{kind}_refiner_switch_at", "The fraction of the steps "
                                                           "after which the refiner takes over"))


def _img2img_controls(ctx: UiContext, tab: GenerationTab):
    f = tab.fields
    f["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode",
                                elem_id=ctx.tip("img2img_resize_mode", "How the input is fitted to the new size"))
    with gr.Row():
        tab.inputs.resize_by = gr.Slider(0.05, 4, 1, step=0.05, label="Resize by",
                                  elem_id=ctx.tip("img2img_scale", "Scale of the input image (with Resize by scale)"))
        tab.inputs.use_scale = gr.Checkbox(False, label="Resize by scale",
                                    elem_id=ctx.tip("img2img_use_scale", "Use the scale instead of width/height"))
    f["denoising_strength"] = gr.Slider(0, 1, 0.75, step=0.01, label="Denoising strength",
                                        elem_id=ctx.tip("img2img_denoising_strength",
                                                        "0: keep the input; 1: ignore it"))
    with gr.Group(visible=False, elem_id="img2img_inpaint_controls") as inpaint_group:
        with gr.Row():
            f["mask_blur"] = gr.Slider(0, 64, 4, step=1, label="Mask blur",
                                       elem_id=ctx.tip("img2img_mask_blur", "Soften the mask edge (pixels)"))
            f["inpainting_mask_invert"] = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], label="Mask mode",
                                                   elem_id=ctx.tip("img2img_mask_mode",
                                                                   "Repaint the masked or the unmasked part"))
        f["inpainting_fill"] = gr.Radio(list(MASKED_CONTENT), value=MASKED_CONTENT[1], label="Masked content",
                                        elem_id=ctx.tip("img2img_inpainting_fill",
                                                        "What the masked area starts from"))
        with gr.Row():
            f["inpaint_full_res"] = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], label="Inpaint area",
                                             elem_id=ctx.tip("img2img_inpaint_full_res", "Only masked: render the "
                                                             "masked region at full resolution, then paste it"))
            f["inpaint_full_res_padding"] = gr.Slider(0, 256, 32, step=4, label="Only masked padding, pixels",
                                                      elem_id=ctx.tip("img2img_padding",
                                                                      "Context around the mask for Only masked"))
    tab.inpaint_group = inpaint_group


OUTPUT_HEIGHT = 400  # px: the gallery and the live preview in its place; fits beside the controls at 1440×900


def _output_panel(ctx: UiContext, tab: GenerationTab):
    kind = tab.kind
    tab.progress = gr.HTML("", elem_id=f"{kind}_progress", elem_classes="sd-progress-box")
    tab.preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{kind}_preview",
                           height=OUTPUT_HEIGHT, format="png", show_label=False, elem_classes="sd-output-image")
    tab.gallery = gr.Gallery(label="Output", format="png", columns=4, height=OUTPUT_HEIGHT, object_fit="contain",
                             preview=True, elem_id=f"{kind}_gallery", interactive=False, elem_classes="sd-output-image")
    with gr.Row(elem_classes="sd-output-buttons"):
        tab.folder_button = folder = icon_button(
            "folder", "Open images folder", ctx.tip(f"{kind}_open_folder", "Open the images folder in this "
                                                    "computer's file browser"), visible=False)
        save = icon_button("save", "Save", ctx.tip(f"{kind}_save", "Save the selected image to the Save button's "
                                                   "folder (Settings → Paths)"), with_text=True)
        zip_button = icon_button("zip", "Zip", ctx.tip(f"{kind}_zip", "Download all images of the last job as a "
                                                       "zip"), with_text=True)
        for target in ("img2img", "inpaint"):
            tab.send_buttons[target] = gr.Button(f"→ {target}", min_width=40,
                                                 elem_id=ctx.tip(f"{kind}_send_to_{target}",
                                                                 f"Send the selected image and its parameters to "
                                                                 f"{target}"))
    tab.download = gr.File(label="Zip", visible=False, elem_id=f"{kind}_zip_file")
    tab.info = gr.HTML("", elem_id=f"{kind}_info", elem_classes="sd-info")

    def select(evt: gr.SelectData, request: gr.Request):
        out = ctx.outputs.get(request.session_hash, kind)
        out.selected = evt.index if isinstance(evt.index, int) else 0
        text = out.infotexts[out.selected] if out.selected < len(out.infotexts) else ""
        return info_html(text)

    def do_zip(request: gr.Request):
        out = ctx.outputs.get(request.session_hash, kind)
        paths = [p for p in out.paths if p]
        if not paths:
            raise user_error("Nothing to zip: the last job saved no files (enable saving images in Settings)")
        target = ctx.state.options.outputs_dir / "zips" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.zip"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(zip_images(paths))
        return gr.update(value=str(target), visible=True)

    def do_save(request: gr.Request):
        out = ctx.outputs.get(request.session_hash, kind)
        if not out.images:
            raise user_error("No image to save yet")
        i = min(out.selected, len(out.images) - 1)
        folder_path = ctx.state.settings.current.output_dir("save", ctx.state.options.data_dir)
        try:
            make_folder(folder_path)
        except OutputFolderError as e:
            raise user_error(str(e)) from None
        try:
            path = save_image(out.images[i], folder_path / f"{time.strftime('%Y%m%d-%H%M%S')}-{out.seeds[i]}.png",
                              infotext=out.infotexts[i])
        except OSError as e:
            if (reason := refusal(e)) is None:
                raise
            raise user_error(f"{reason}: image not saved ({folder_path})") from None
        gr.Info(f"Saved {Path(path).name}")

    def open_folder(request: gr.Request):
        folder_path = ctx.state.settings.current.output_dir(kind, ctx.state.options.data_dir)
        if not is_local(request):
            raise user_error(f"The images folder is on the server's computer: {folder_path}")
        problem = open_in_file_browser(folder_path)
        if problem:
            raise user_error(f"{problem}; the images are in {folder_path}")

    tab.gallery.select(select, None, tab.info, show_progress="hidden")
    zip_button.click(do_zip, None, tab.download)
    save.click(do_save, None, None)
    folder.click(open_folder, None, None)


def is_local(request: gr.Request | None) -> bool:
    """Whether the browser runs on the server's machine (a loopback client address)."""
    host = getattr(getattr(request, "client", None), "host", "") or ""
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def open_in_file_browser(folder: Path, wait_s: float = 3) -> str:
    """Open ``folder`` in the system's file browser; what went wrong, or "" when it opened (or is still
    starting after ``wait_s``)."""
    try:
        make_folder(folder)
    except OutputFolderError as e:
        return str(e)
    except OSError as e:
        return f"Cannot create {folder} ({e.strerror or e})"
    opener = {"darwin": "open", "win32": "explorer"}.get(sys.platform, "xdg-open")
    try:
        process = subprocess.Popen([opener, str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as e:
        return f"Cannot open a file browser here ({opener}: {e.strerror or e})"
    try:
        code = process.wait(wait_s)
    except subprocess.TimeoutExpired:
        return ""
    return "" if code == 0 or sys.platform == "win32" else f"The file browser did not open ({opener} exit {code})"


def _run(ctx: UiContext, tab: GenerationTab, data: dict, request: gr.Request, script_ui):
    """Submit the job and stream progress, the live preview (in the gallery's place) and finished images until it
    ends; yields ``{component: update}``."""
    kind, f = tab.kind, tab.fields
    values = {name: data[comp] for name, comp in f.items()}
    out = ctx.outputs.get(request.session_hash, kind)
    try:
        extra = tab.inputs.job_inputs(data, ctx.state.settings.current.limit_upload_pixels) if tab.inputs else {}
        params = build_params(kind, values, extra)
        with requester.acting_as(requester.from_gradio(request)):  # the queue's turns, the remote limits
            job = script_controls.submit(ctx.state, params, script_ui, data)
    except ValueError as e:
        yield {tab.info: info_html("", error=str(e)), tab.progress: ""}
        return
    out.job = job
    yield {tab.info: "", tab.progress: job_progress_html(ctx.state.queue, job)}  # old info goes
    preview_step = -1
    shown = 0
    while not job.done:
        progress = job.progress
        frame = {tab.progress: job_progress_html(ctx.state.queue, job)}
        if progress.preview is not None and progress.preview_step != preview_step:
            preview_step = progress.preview_step
            frame[tab.preview] = gr.update(value=progress.preview, visible=True)
            frame[tab.gallery] = gr.update(visible=False)
        if len(progress.images) != shown:
            shown = len(progress.images)
            frame[tab.gallery] = gr.update(value=list(progress.images), visible=preview_step < 0)
        yield frame
        job.wait_done(POLL_SECONDS)  # returns as soon as the job ends
    done = {tab.progress: "", tab.preview: gr.update(visible=False)}
    try:
        result = job.wait()
    except Exception as e:  # noqa: BLE001 - the error is the user's to read; the UI goes on
        kept = list(job.progress.images)
        yield {**done, tab.gallery: gr.update(value=kept, visible=True) if kept else gr.update(visible=True),
               tab.info: info_html("", error=f"{type(e).__name__}: {e}")}
        return
    warnings = out.keep(result)
    for line in filter(is_unsaved_warning, warnings):
        user_warning(line)
    first = result.infotexts[0] if result.infotexts else ""
    grid = result.grid if result.grid is not None and not any(i is result.grid for i in result.images) else None
    gallery = ([grid] if grid is not None else []) + list(result.images)  # a script's grid may lead its images
    if grid is not None:
        out.images.insert(0, grid)
        out.infotexts.insert(0, first)
        out.seeds.insert(0, out.seeds[0] if out.seeds else -1)
    yield {**done, tab.gallery: gr.update(value=gallery, visible=True), tab.info: info_html(first, warnings)}


def _action_buttons(ctx: UiContext, tab: GenerationTab):
    """Generate, Interrupt and Skip, the tool buttons (read parameters, clear prompt, apply styles) and styles."""
    kind = tab.kind
    tab.generate = gr.Button("Generate", variant="primary", elem_id=ctx.tip(
        f"{kind}_generate", "Start a job (Ctrl+Enter); right-click: Generate forever"))
    with gr.Row():
        tab.interrupt = gr.Button("Interrupt", elem_id=ctx.tip(f"{kind}_interrupt",
                                                               "Stop your current job; finished images stay"))
        tab.skip = gr.Button("Skip", elem_id=ctx.tip(f"{kind}_skip", "Stop the current batch, go on with the next"))
    with gr.Row(elem_classes="sd-tools"):
        read_params = icon_button("read", "Read parameters", ctx.tip(
            f"{kind}_read_params", "Fill the fields from generation parameters pasted into the prompt box, or from "
            "the last job when it is empty"))
        clear = icon_button("trash", "Clear prompt", ctx.tip(f"{kind}_clear_prompt",
                                                             "Clear the prompt and the negative prompt"))
        apply_styles_button = icon_button("clipboard", "Apply styles", ctx.tip(
            f"{kind}_style_apply", "Write the selected styles into the prompts now"))
    _styles_controls(ctx, tab, apply_styles_button)
    clear.click(lambda: ("", ""), None, [tab.prompt, tab.negative_prompt], queue=False, show_progress="hidden")
    return read_params


def build_generation_tab(ctx: UiContext, kind: str, size: tuple[int, int]) -> GenerationTab:
    """Lay out one generation tab as A1111 does (prompts and actions on top; controls left, results right) and wire
    its events; ``size``: the checkpoint's native one, the size fields' default. Returns the tab's components for
    cross-tab wiring."""
    tab = GenerationTab(kind, checkpoints=ctx.state.checkpoints)
    with gr.Row(elem_classes="sd-prompt-row"):
        with gr.Column(scale=8):
            tab.prompt = _prompt_box(ctx, kind, "prompt", "Prompt", "What to draw; (word:1.2) for emphasis, "
                                     "<lora:name:1> for a LoRA", 4)
            tab.negative_prompt = _prompt_box(ctx, kind, "neg_prompt", "Negative prompt",
                                              "What to avoid in the image", 3)
        with gr.Column(scale=3, min_width=240, elem_classes="sd-actions"):
            read_params = _action_buttons(ctx, tab)
    tab.fields["prompt"], tab.fields["negative_prompt"] = tab.prompt, tab.negative_prompt
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, elem_id=f"{kind}_settings"):
            if kind == "img2img":
                tab.inputs = img2img_inputs.build(ctx)
            _sampling_controls(ctx, tab, size)
            if kind == "img2img":
                _img2img_controls(ctx, tab)
                tab.inputs.wire_mode(tab.inpaint_group)
            _seed_controls(ctx, tab)
            _refiner_controls(ctx, tab)
            tab.fields["override_settings"] = gr.Dropdown(
                [], value=[], multiselect=True, label="Override settings", visible=False,
                elem_id=ctx.tip(f"{kind}_override_settings", "Settings named in pasted generation parameters, used "
                                "for this tab's jobs instead of yours; remove one to keep your own"))
            script_ui = script_controls.build(ctx, kind, (tab.fields["width"], tab.fields["height"]))
            tab.fields.update(script_ui.fields)  # pasted infotext fills the always-on panels too
            with gr.Accordion("Extra networks", open=False, elem_id=f"{kind}_extra_networks"):
                extra_networks.build_panel(ctx, kind, tab.prompt, tab.negative_prompt)
        with gr.Column(scale=1, elem_id=f"{kind}_results"):
            _output_panel(ctx, tab)

    inputs = set(tab.fields.values()) | set(script_ui.components) | (tab.inputs.components if tab.inputs else set())
    outputs = [tab.gallery, tab.info, tab.progress, tab.preview]

    def generate_images(data: dict, request: gr.Request):
        if tab.inputs is not None and tab.inputs.is_batch(data):
            yield from img2img_batch.run(ctx, tab, data, request, script_ui)
            return
        yield from _run(ctx, tab, data, request, script_ui)

    tab.generate.click(generate_images, inputs, outputs, concurrency_limit=None, show_progress="hidden")

    def control(action):
        def act(request: gr.Request):
            job = ctx.outputs.get(request.session_hash, kind).job
            if job is not None and not job.done:
                getattr(job.progress, action)()
        return act

    tab.interrupt.click(control("interrupt"), None, None, queue=False)
    tab.skip.click(control("skip"), None, None, queue=False)
    field_list = list(tab.fields.values())

    def read(prompt, request: gr.Request):  # not queued, so it answers at once: it must not raise
        out = ctx.outputs.get(request.session_hash, kind)
        text = prompt if looks_like_infotext(prompt or "") else (out.infotexts[0] if out.infotexts else "")
        if not text:
            message = "Paste generation parameters into the prompt box first"
            log.info("user error: %s", message)
            return [*[gr.skip()] * len(field_list), info_html("", error=message)]
        return [*fill_updates(tab, ctx.infotext_fields(text)), gr.skip()]

    read_params.click(read, tab.prompt, [*field_list, tab.info], queue=False, show_progress="hidden")
    ctx.tabs[kind] = tab
    return tab


def fill_updates(tab: GenerationTab, values: dict) -> list:
    """One update per field of ``tab`` (in ``tab.fields`` order): the new value where ``values`` has one."""
    values = dict(values)
    if values.get("refiner_checkpoint") not in (None, NO_REFINER):  # "name [hash]" → the dropdown's entry
        info = tab.checkpoints.find(str(values["refiner_checkpoint"])) if tab.checkpoints is not None else None
        values["refiner_checkpoint"] = info.filename if info is not None else values["refiner_checkpoint"]
    return [_field_update(name, values[name]) if name in values else gr.skip() for name in tab.fields]


def _field_update(name: str, value):
    if name == "override_settings":  # its entries are its choices; shown only when there are some
        return gr.update(choices=value, value=value, visible=bool(value))
    return gr.update(value=value)


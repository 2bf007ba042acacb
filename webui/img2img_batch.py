"""img2img's Batch sub-tab (A1111's): folders on the server and PNG info options, and Generate with it selected,
which runs :mod:`modules.processing.batch_img2img` and streams each image's job into the tab's output panel."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gradio as gr

from modules import requester
from modules.processing.batch_img2img import PNG_INFO_PROPS, BatchFolders, BatchRun, plan_batch
from modules.processing.saving import is_unsaved_warning
from webui import script_controls
from webui.context import UiContext
from webui.notices import user_warning
from webui.params_fields import build_params
from webui.progress_html import info_html, job_progress_html

POLL_SECONDS = 0.25
INTRO = ("Process images in a folder on the computer the server runs on (a browser on another computer: only inside "
         "the data folder or an `--allowed-output-roots` folder). An empty output directory saves the pictures as "
         "usual; an inpaint mask directory makes it an inpaint batch (masks named like the images, or one for all).")


@dataclass
class BatchInputs:
    input_dir: object
    output_dir: object
    mask_dir: object
    use_png_info: object
    png_info_props: object
    png_info_dir: object

    @property
    def components(self) -> set:
        return {getattr(self, f.name) for f in dataclasses.fields(self)}

    def folders(self, data: dict, scale_by: float | None) -> BatchFolders:
        return BatchFolders(data[self.input_dir] or "", data[self.output_dir] or "", data[self.mask_dir] or "",
                            bool(data[self.use_png_info]), tuple(data[self.png_info_props] or ()),
                            data[self.png_info_dir] or "", scale_by)


def build(ctx: UiContext) -> BatchInputs:
    """The sub-tab's controls (A1111's labels)."""
    gr.Markdown(INTRO, elem_id="img2img_batch_intro")
    input_dir = gr.Textbox(label="Input directory", elem_id=ctx.tip(
        "img2img_batch_input_dir", "Every image in this folder (and its subfolders) becomes an img2img job"))
    output_dir = gr.Textbox(label="Output directory", placeholder="Empty: the img2img images folder",
                            elem_id=ctx.tip("img2img_batch_output_dir", "Results are saved here under the images' "
                                            "names"))
    mask_dir = gr.Textbox(label="Inpaint batch mask directory (required for inpaint batch processing only)",
                          elem_id=ctx.tip("img2img_batch_inpaint_mask_dir", "Masks (white = repaint) named like "
                                          "the images, or a single mask for all of them"))
    with gr.Accordion("PNG info", open=False, elem_id="img2img_batch_png_info"):
        use = gr.Checkbox(False, label="Append png info to prompts", elem_id=ctx.tip(
            "img2img_batch_use_png_info", "Take parameters from the generation parameters saved in each image"))
        info_dir = gr.Textbox(label="PNG info directory", placeholder="Leave empty to use input directory",
                              elem_id=ctx.tip("img2img_batch_png_info_dir", "Read the parameters from the file of "
                                              "the same name in this folder instead"))
        props = gr.CheckboxGroup(list(PNG_INFO_PROPS), label="Parameters to take from png info",
                                 info="Prompts from png info will be appended to prompts set in ui.",
                                 elem_id="img2img_batch_png_info_props")
    return BatchInputs(input_dir, output_dir, mask_dir, use, props, info_dir)


def run(ctx: UiContext, tab, data: dict, request: gr.Request, script_ui):
    """Run the batch of the Batch sub-tab: one job per image, its progress and the images so far in the output
    panel; yields ``{component: update}``. Interrupt stops the job running and keeps the images finished."""
    state, inputs = ctx.state, tab.inputs
    out = ctx.outputs.get(request.session_hash, tab.kind)
    who = requester.from_gradio(request)
    if state.options.server.share:  # a shared link arrives from 127.0.0.1
        who = dataclasses.replace(who, remote=True)
    try:
        scale = float(data[inputs.resize_by]) if data[inputs.use_scale] else None
        plan = plan_batch(state, inputs.batch.folders(data, scale), who)
        params = build_params(tab.kind, {name: data[c] for name, c in tab.fields.items()})
    except ValueError as e:
        yield {tab.info: info_html("", error=str(e)), tab.progress: ""}
        return

    def submit(job_params):
        with requester.acting_as(who):  # the queue's turns, the remote limits
            return script_controls.submit(state, job_params, script_ui, data)

    batch = BatchRun(state, params, plan, submit)
    yield {tab.info: "", tab.gallery: gr.update(value=[], visible=True)}
    error = None
    try:
        for job in batch.jobs():
            out.job = job
            while not job.done:
                line = f"Image {batch.done + 1}/{len(plan.images)}: {batch.current}"
                bar = job_progress_html(state.queue, job)
                yield {tab.progress: f'<div class="sd-note">{line}</div>{bar}'}
                job.wait_done(POLL_SECONDS)
            yield {tab.gallery: gr.update(value=batch.result.images + list(job.progress.images))}
    except Exception as e:  # noqa: BLE001 - a job's error is the user's to read; the images made so far stay
        error = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
    result = batch.result
    warnings = out.keep(result)
    for line in filter(is_unsaved_warning, warnings):
        user_warning(line)
    where = plan.output_dir or state.settings.current.output_dir(tab.kind, state.options.data_dir)
    note = f'<div class="sd-note">{len(result.paths)} of {len(plan.images)} images saved in {where}</div>'
    first = result.infotexts[0] if result.infotexts else ""
    yield {tab.progress: "", tab.preview: gr.update(visible=False), tab.gallery: gr.update(value=out.images),
           tab.info: info_html(first, warnings, error) + note}

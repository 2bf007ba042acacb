"""The Checkpoint Merger tab, as A1111's: primary / secondary / tertiary models, the interpolation method and
multiplier, float16, a VAE to bake in, weights to discard, the config to copy and the metadata. The merge runs as
one job in the app's queue (progress in tensors, Interrupt); the new checkpoint then appears in every checkpoint
list."""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, fields

import gradio as gr

from modules import requester
from modules.models.merge import (
    ADD_DIFFERENCE,
    CONFIG_SOURCES,
    METHODS,
    NO_INTERPOLATION,
    WEIGHTED_SUM,
    MergeError,
    MergeParams,
    submit_merge,
)
from modules.models.safetensors_file import ModelFileError, read_shapes
from webui.context import UiContext
from webui.generation_tab import POLL_SECONDS
from webui.icons import icon_button
from webui.progress_html import job_progress_html
from webui.top_bar import checkpoint_choices

KIND = "modelmerger"
DESCRIPTIONS = {
    NO_INTERPOLATION: "A alone (needs A): to bake in a VAE, save as float16 or discard weights.",
    WEIGHTED_SUM: "A weighted sum of two models (needs A and B): A × (1 − M) + B × M.",
    ADD_DIFFERENCE: "The difference between B and C added to A (needs A, B and C): A + (B − C) × M.",
}


def _description(method: str) -> str:
    return f'<p class="sd-note">{html.escape(DESCRIPTIONS.get(method, ""))}</p>'


def _result(text: str, error: bool = False) -> str:
    return f'<div class="{"sd-error" if error else "sd-note"}">{html.escape(text)}</div>'


@dataclass
class _Controls:
    """The tab's fields, named as :class:`MergeParams`' fields."""

    primary: gr.Dropdown
    secondary: gr.Dropdown
    tertiary: gr.Dropdown
    method: gr.Radio
    multiplier: gr.Slider
    save_as_half: gr.Checkbox
    custom_name: gr.Textbox
    config_source: gr.Radio
    bake_in_vae: gr.Dropdown
    discard_weights: gr.Textbox
    save_metadata: gr.Checkbox
    add_merge_recipe: gr.Checkbox
    copy_metadata_fields: gr.Checkbox
    metadata_json: gr.TextArea

    def components(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]


def _models_row(ctx: UiContext) -> tuple[gr.Dropdown, gr.Dropdown, gr.Dropdown, gr.Button]:
    names = checkpoint_choices(ctx.state)
    with gr.Row(elem_id="modelmerger_models"):
        dropdowns = [gr.Dropdown(names, value=None, label=label, elem_id=ctx.tip(f"modelmerger_{key}_model_name", tip))
                     for key, label, tip in (
                         ("primary", "Primary model (A)", "The model the result starts from"),
                         ("secondary", "Secondary model (B)", "Weighted sum and Add difference: the second model"),
                         ("tertiary", "Tertiary model (C)", "Add difference: B − C is added to A"))]
        refresh = icon_button("refresh", "Refresh", ctx.tip("modelmerger_refresh", "Scan the folders for new "
                                                            "checkpoints and VAEs"))
    return (*dropdowns, refresh)


def _controls(ctx: UiContext) -> tuple[_Controls, gr.Button, gr.Button]:
    """The left column's fields; also the checkpoints' and VAEs' refresh button and "Read metadata"."""
    primary, secondary, tertiary, refresh = _models_row(ctx)
    custom = gr.Textbox(label="Custom Name (Optional)", elem_id=ctx.tip(
        "modelmerger_custom_name", "The new file's name (without .safetensors); empty: made from the models' names"))
    multiplier = gr.Slider(0.0, 1.0, 0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A",
                           elem_id=ctx.tip("modelmerger_interp_amount", "M in the formula above"))
    method = gr.Radio(list(METHODS), value=WEIGHTED_SUM, label="Interpolation Method",
                      elem_id="modelmerger_interp_method")
    half = gr.Checkbox(False, label="Save as float16", elem_id=ctx.tip(
        "modelmerger_save_as_half", "Half the file size; float32 weights are stored as float16"))
    with gr.Row():
        config = gr.Radio(list(CONFIG_SOURCES), value=CONFIG_SOURCES[0], label="Copy config from", elem_id=ctx.tip(
            "modelmerger_config_method", "Copy the chosen model's .yaml file beside the new checkpoint"))
        vae = gr.Dropdown(["None", *[v.name for v in ctx.state.vaes.items()]], value="None", label="Bake in VAE",
                          elem_id=ctx.tip("modelmerger_bake_in_vae", "Replace the model's VAE with this one"))
    discard = gr.Textbox(label="Discard weights with matching name", elem_id=ctx.tip(
        "modelmerger_discard_weights", "A regular expression: tensors whose names match are left out"))
    with gr.Accordion("Metadata", open=False):
        with gr.Row():
            save_meta = gr.Checkbox(True, label="Save metadata", elem_id="modelmerger_save_metadata")
            recipe = gr.Checkbox(True, label="Add merge recipe metadata", elem_id="modelmerger_add_recipe")
            copy_meta = gr.Checkbox(True, label="Copy metadata from merged models",
                                    elem_id="modelmerger_copy_metadata")
        meta_json = gr.TextArea("{}", label="Metadata in JSON format", elem_id="modelmerger_metadata_json")
        read = gr.Button("Read metadata from selected checkpoints", elem_id="modelmerger_read_metadata")
    controls = _Controls(primary, secondary, tertiary, method, multiplier, half, custom, config, vae, discard,
                         save_meta, recipe, copy_meta, meta_json)
    return controls, refresh, read


def _read_metadata(ctx: UiContext, *names: str) -> str:
    """The chosen checkpoints' own metadata merged (A's, then B's, then C's), as JSON to edit."""
    out = {}
    for name in names:
        info = ctx.state.checkpoints.find(name or "")
        if info is None or info.is_diffusers:
            continue
        try:
            out.update(read_shapes(info.path, ctx.state.checkpoints.allow_pickle)[1])
        except ModelFileError as e:
            gr.Warning(str(e))
    return json.dumps(out, indent=4, ensure_ascii=False)


def build(ctx: UiContext) -> None:
    """Lay out the tab (fields left, Merge and the result right) and wire its events."""
    state = ctx.state
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, elem_id="modelmerger_settings"):
            description = gr.HTML(_description(WEIGHTED_SUM), elem_id="modelmerger_interp_description")
            controls, refresh, read = _controls(ctx)
        with gr.Column(scale=1, elem_id="modelmerger_results_container"):
            with gr.Row():
                merge = gr.Button("Merge", variant="primary", scale=3, elem_id=ctx.tip(
                    "modelmerger_merge", "Write the merged checkpoint into the checkpoint folder"))
                interrupt = gr.Button("Interrupt", scale=1, elem_id=ctx.tip(
                    "modelmerger_interrupt", "Stop your merge; no file is left behind"))
            result = gr.HTML("", elem_id="modelmerger_result")
    model_lists = [controls.primary, controls.secondary, controls.tertiary]
    top = ctx.top_bar.settings.get("sd_model_checkpoint") if ctx.top_bar is not None else None
    lists = model_lists + ([top] if top is not None else [])

    def list_updates() -> list:
        return [gr.update(choices=checkpoint_choices(state)) for _ in lists]

    def run(data: dict, request: gr.Request):
        params = MergeParams(**{f.name: data[getattr(controls, f.name)] for f in fields(_Controls)})
        try:
            with requester.acting_as(requester.from_gradio(request)):  # the queue's turns
                job = submit_merge(state, params)
        except MergeError as e:
            yield [_result(str(e), error=True), *[gr.skip()] * len(lists)]
            return
        ctx.outputs.get(request.session_hash, KIND).job = job
        while not job.done:
            yield [job_progress_html(state.queue, job), *[gr.skip()] * len(lists)]
            job.wait_done(POLL_SECONDS)
        try:
            outcome = job.wait()
        except Exception as e:  # noqa: BLE001 - the error is the user's to read; the UI goes on
            message = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            yield [_result(f"Merge failed: {message}", error=True), *list_updates()]
            return
        if outcome.interrupted:
            yield [_result("Interrupted: no checkpoint was written"), *[gr.skip()] * len(lists)]
            return
        note = f"Checkpoint saved to {outcome.path}" + (f" (config: {outcome.config.name})" if outcome.config else "")
        yield [_result(note), *list_updates()]

    def stop(request: gr.Request):
        job = ctx.outputs.get(request.session_hash, KIND).job
        if job is not None and not job.done:
            job.interrupt()

    def rescan():
        state.checkpoints.refresh()
        state.vaes.refresh()
        return [*[gr.update(choices=checkpoint_choices(state)) for _ in model_lists],
                gr.update(choices=["None", *[v.name for v in state.vaes.items()]])]

    controls.method.change(_description, controls.method, description, queue=False, show_progress="hidden")
    merge.click(run, set(controls.components()), [result, *lists], concurrency_limit=None, show_progress="hidden")
    interrupt.click(stop, None, None, queue=False)
    refresh.click(rescan, None, [*model_lists, controls.bake_in_vae], show_progress="hidden")
    read.click(lambda *names: _read_metadata(ctx, *names), model_lists, controls.metadata_json,
               show_progress="hidden")

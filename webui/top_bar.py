"""Quick settings above the tabs: checkpoint (with refresh), VAE and clip skip; the model-loading banner."""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from modules.models.safetensors_file import ModelFileError
from webui.context import UiContext


@dataclass
class TopBar:
    checkpoint: object
    vae: object
    clip_skip: object
    status: object


def checkpoint_choices(state) -> list[str]:
    return [i.filename for i in state.checkpoints.items()]


def current_checkpoint(state) -> str | None:
    info = state.models.current_info
    return info.filename if info is not None else None


def _switch(ctx: UiContext, key: str, value: str, apply, label: str) -> None:
    """Change setting ``key`` at once (so a job queued after this click uses it), then ``apply`` it in the queue's
    turn; on failure the previous value is restored and the user warned."""
    state = ctx.state
    previous = getattr(state.settings.current, key)
    state.settings.update({key: value})
    try:
        state.queue.run_exclusive(apply, label)
    except (ModelFileError, OSError, ValueError) as e:
        state.settings.update({key: previous})
        gr.Warning(f"Could not use {value}: {e}")


def switch_checkpoint(ctx: UiContext, name: str) -> str:
    """Make ``name`` the checkpoint of every later job and load it in the queue's turn."""
    _switch(ctx, "sd_model_checkpoint", name, lambda: ctx.state.models.load(name), "load checkpoint")
    return current_checkpoint(ctx.state)


def switch_vae(ctx: UiContext, choice: str) -> str:
    """Like :func:`switch_checkpoint` for the VAE ("Automatic", "None" or a file name)."""
    _switch(ctx, "sd_vae", choice, lambda: ctx.state.models.set_vae(choice), "set VAE")
    return ctx.state.models.vae_choice


def status_html(ctx: UiContext) -> str:
    """The loading banner while the start-up model load runs, its error if it failed, else nothing."""
    job = ctx.startup_job
    if job is None or (job.done and job.error is None):
        return ""
    if not job.done:
        return ('<div class="sd-banner sd-loading">Loading the model… The UI is ready to use; jobs start as soon as '
                'the model is loaded.</div>')
    return f'<div class="sd-banner sd-error">The model failed to load: {html.escape(str(job.error))}</div>'


def build(ctx: UiContext) -> TopBar:
    state = ctx.state
    with gr.Row(elem_id="quicksettings", equal_height=True):
        checkpoint = gr.Dropdown(checkpoint_choices(state), value=current_checkpoint(state),
                                 label="Stable Diffusion checkpoint", scale=4, elem_id=ctx.tip(
                                     "setting_sd_model_checkpoint", "The model used for every job"))
        refresh = gr.Button("🔄", scale=0, min_width=40,
                            elem_id=ctx.tip("refresh_sd_model_checkpoint", "Scan the folders for new checkpoints "
                                            "and VAEs"))
        vae = gr.Dropdown(state.vaes.choices(), value=state.models.vae_choice, label="SD VAE", scale=3,
                          elem_id=ctx.tip("setting_sd_vae", "Automatic: a VAE named like the checkpoint, else its "
                                          "own; None: the checkpoint's own"))
        clip_skip = gr.Slider(1, 12, state.settings.current.CLIP_stop_at_last_layers, step=1, label="Clip skip",
                              scale=2, elem_id=ctx.tip("setting_CLIP_stop_at_last_layers",
                                                       "Stop the text encoder this many layers before its end"))
    status = gr.HTML(status_html(ctx), elem_id="sd_status")
    checkpoint.input(lambda name: switch_checkpoint(ctx, name), checkpoint, checkpoint)
    vae.input(lambda choice: switch_vae(ctx, choice), vae, vae)
    clip_skip.release(lambda v: state.settings.update({"CLIP_stop_at_last_layers": int(v)}) and None, clip_skip,
                      None, show_progress="hidden")

    def rescan():
        state.checkpoints.refresh()
        state.vaes.refresh()
        return (gr.update(choices=checkpoint_choices(state), value=current_checkpoint(state)),
                gr.update(choices=state.vaes.choices(), value=state.models.vae_choice))

    refresh.click(rescan, None, [checkpoint, vae])
    ctx.top_bar = TopBar(checkpoint, vae, clip_skip, status)
    return ctx.top_bar

"""Quick settings above the tabs (the ``quicksettings_list`` setting: by default checkpoint with refresh, VAE and
clip skip); the model-loading banner."""
from __future__ import annotations

import html
import logging
from dataclasses import dataclass

import gradio as gr

from modules.models.safetensors_file import ModelFileError
from webui.context import UiContext
from webui.icons import icon_button
from webui.setting_fields import KNOWN, component, ui_value

log = logging.getLogger("sdwebui")


@dataclass
class TopBar:
    settings: dict  # setting name -> component, in quicksettings_list order
    status: object

    @property
    def checkpoint(self):
        return self.settings.get("sd_model_checkpoint")

    def values(self, ctx: UiContext) -> list:
        """The current values of :attr:`settings` (for filling them on page load)."""
        state = ctx.state
        current = {"sd_model_checkpoint": current_checkpoint(state), "sd_vae": state.models.vae_choice}
        return [current[n] if n in current else ui_value(getattr(state.settings.current, n)) for n in self.settings]


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
    """What the settings file lost at start and what the start did about a failed checkpoint (if anything), then
    the loading banner while the start-up model load runs, or its error if it failed."""
    notices = "".join(f'<div class="sd-banner sd-error sd-settings-notice">Settings: {html.escape(n)}</div>'
                      for n in ctx.state.settings.notices)
    notices += "".join(f'<div class="sd-banner sd-error sd-start-notice">{html.escape(n)}</div>'
                       for n in ctx.state.notices)
    job = ctx.startup_job
    if job is None or (job.done and job.error is None):
        return notices
    if not job.done:
        return notices + ('<div class="sd-banner sd-loading">Loading the model… The UI is ready to use; jobs start '
                          'as soon as the model is loaded.</div>')
    return notices + f'<div class="sd-banner sd-error">The model failed to load: {html.escape(str(job.error))}</div>'


def _quick_setting(ctx: UiContext, name: str):
    """One quick setting's component (the checkpoint's comes with a rescan button: (dropdown, button)); the
    checkpoint and VAE switch models, others are stored in config.json."""
    state = ctx.state
    if name == "sd_model_checkpoint":
        checkpoint = gr.Dropdown(checkpoint_choices(state), value=current_checkpoint(state),
                                 label="Stable Diffusion checkpoint", scale=4, elem_id=ctx.tip(
                                     "setting_sd_model_checkpoint", "The model used for every job"))
        refresh = icon_button("refresh", "Refresh", ctx.tip("refresh_sd_model_checkpoint", "Scan the folders for "
                                                            "new checkpoints and VAEs"))
        checkpoint.input(lambda choice: switch_checkpoint(ctx, choice), checkpoint, checkpoint)
        return checkpoint, refresh
    if name == "sd_vae":
        vae = gr.Dropdown(state.vaes.choices(), value=state.models.vae_choice, label="SD VAE", scale=3,
                          elem_id=ctx.tip("setting_sd_vae", "Automatic: a VAE named like the checkpoint, else its "
                                          "own; None: the checkpoint's own"))
        vae.input(lambda choice: switch_vae(ctx, choice), vae, vae)
        return vae
    if name == "CLIP_stop_at_last_layers":
        widget = gr.Slider(1, 12, state.settings.current.CLIP_stop_at_last_layers, step=1, label="Clip skip",
                           scale=2, elem_id=ctx.tip("setting_CLIP_stop_at_last_layers",
                                                    "Stop the text encoder this many layers before its end"))
        widget.release(lambda v: state.settings.update({name: int(v)}) and None, widget, None,
                       show_progress="hidden")
        return widget
    widget = component(ctx, name, f"setting_{name}", scale=2, value=ui_value(getattr(state.settings.current, name)))

    def store(value):
        try:
            state.settings.update({name: value})
        except ValueError as e:
            gr.Warning(str(e))

    widget.input(store, widget, None, show_progress="hidden")
    return widget


def build(ctx: UiContext) -> TopBar:
    """The quick settings row (names from ``quicksettings_list`` that are core settings) and the status banner."""
    state = ctx.state
    wanted = state.settings.current.quicksettings_list
    names = [n for n in wanted if n in KNOWN and n != "quicksettings_list"]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        log.warning("quicksettings_list: no such settings: %s", ", ".join(unknown))
    with gr.Row(elem_id="quicksettings", equal_height=True):
        settings = {name: _quick_setting(ctx, name) for name in dict.fromkeys(names)}
    if "sd_model_checkpoint" in settings:
        settings["sd_model_checkpoint"], refresh = settings["sd_model_checkpoint"]
        vae = settings.get("sd_vae")

        def rescan():
            state.checkpoints.refresh()
            state.vaes.refresh()
            update = gr.update(choices=checkpoint_choices(state), value=current_checkpoint(state))
            if vae is None:
                return update  # one output takes one update, not a list of one
            return [update, gr.update(choices=state.vaes.choices(), value=state.models.vae_choice)]

        refresh.click(rescan, None, [settings["sd_model_checkpoint"], *([vae] if vae else [])])
    status = gr.HTML(status_html(ctx), elem_id="sd_status")
    ctx.top_bar = TopBar(settings, status)
    return ctx.top_bar

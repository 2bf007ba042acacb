"""Settings tab: options by section with a search box, Apply, Defaults and Restart; stored in config.json. Its
"Defaults" section saves the txt2img/img2img field values as their defaults in ui-config.json."""
from __future__ import annotations

import html

import gradio as gr

from webui import restart
from webui.context import UiContext
from webui.notices import user_error
from webui.script_controls import controls_ui
from webui.setting_fields import KNOWN, SECTIONS, component, ui_value
from webui.top_bar import current_checkpoint, switch_checkpoint, switch_vae


def build(ctx: UiContext):
    """Lay out the tab; returns (load function, components) for filling values on page load."""
    state = ctx.state
    components: dict[str, object] = {}
    labels: dict[str, str] = {}
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id=ctx.tip("settings_submit",
                                                                               "Save the changes to config.json"))
        reset = gr.Button("Defaults", elem_id=ctx.tip("settings_defaults", "Restore every setting's default"))
        restart_button = gr.Button("Restart server", elem_id=ctx.tip(
            "settings_restart", "Restart the server with the same command line (for settings that need it)"))
        search = gr.Textbox(label="Search settings", scale=3, elem_id=ctx.tip("settings_search",
                                                                              "Show only matching settings"))
    result = gr.HTML(elem_id="settings_result")
    blocks = {}
    for section, names in SECTIONS.items():
        with gr.Accordion(section, open=True) as blocks[section]:
            for name, label in names.items():
                if name in KNOWN:
                    components[name] = component(ctx, name, f"setting_page_{name}", label)
                    labels[name] = f"{section} {label} {name}".lower()
    core = list(components)
    extensions = state.extensions
    for section in extensions.settings_sections() if extensions is not None else []:
        with gr.Accordion(section.title, open=True) as blocks[section.title]:
            stored = {c.name: extensions.option(c.name) for c in section.controls}
            components.update(controls_ui(ctx, "setting_page", section.controls, stored))
        for control in section.controls:
            labels[control.name] = f"{section.title} {control.label} {control.name}".lower()
    with gr.Accordion("Defaults", open=True) as blocks["Defaults"]:
        _ui_defaults(ctx)
    search_text = {"Defaults": "defaults ui-config.json default values of the txt2img and img2img fields"}
    section_names = {"Defaults": [], **{s: list(n) for s, n in SECTIONS.items()},
                     **{s.title: [c.name for c in s.controls] for s in (extensions.settings_sections()
                                                                        if extensions is not None else [])}}
    names = list(components)

    def values():
        current = state.settings.current
        loaded = {"sd_model_checkpoint": current_checkpoint(state), "sd_vae": state.models.vae_choice}
        return [(loaded.get(n) or ui_value(getattr(current, n))) if n in core else extensions.option(n)
                for n in names]

    def do_apply(*new):
        before = dict(zip(names, values()))
        changes = {n: v for n, v in zip(names, new) if v != before[n] and v is not None}
        if not changes:
            return ["Nothing changed.", *values()]
        special = {k: changes.pop(k) for k in ("sd_model_checkpoint", "sd_vae") if k in changes}
        try:
            state.settings.update({k: v for k, v in changes.items() if k in core})
            if extensions is not None:
                extensions.set_options({k: v for k, v in changes.items() if k not in core})
        except ValueError as e:  # a refused value: shown; the fields keep what the user typed
            raise user_error(str(e)) from None
        if "sd_model_checkpoint" in special:
            switch_checkpoint(ctx, special["sd_model_checkpoint"])
        if "sd_vae" in special:
            switch_vae(ctx, special["sd_vae"])
        changed = ", ".join(sorted([*changes, *special]))
        return [f"{len(changes) + len(special)} settings changed: {changed}.", *values()]

    def do_reset():
        state.settings.reset()
        return ["Defaults restored.", *values()]

    def do_search(query):
        q = (query or "").strip().lower()
        updates = [gr.update(visible=not q or q in labels[n]) for n in names]
        sections = [gr.update(visible=not q or q in search_text.get(s, "") or
                              any(q in labels[n] for n in section_names[s])) for s in blocks]
        return updates + sections

    outs = [result, *components.values()]
    apply.click(do_apply, list(components.values()), outs)
    reset.click(do_reset, None, outs)
    search.change(do_search, search, [*components.values(), *blocks.values()], queue=False, show_progress="hidden")
    restart.wire(ctx, restart_button, result)
    return values, list(components.values())


def _changes_table(changes) -> str:
    if not changes:
        return "<div>No changes: the fields show the saved defaults.</div>"
    rows = "".join(f"<tr><td>{html.escape(path)}</td><td>{html.escape(repr(old))}</td><td>{html.escape(repr(new))}"
                   "</td></tr>" for path, old, new in changes)
    return f"<table class='sd-defaults'><tr><th>Path</th><th>Old value</th><th>New value</th></tr>{rows}</table>"


def _ui_defaults(ctx: UiContext):
    """The Defaults section: compare the txt2img/img2img fields with ui-config.json, and save them as defaults."""
    config = ctx.ui_config
    gr.Markdown(f"The values the txt2img and img2img fields start with are kept in `{config.path.name}` in the data "
                "folder. Set the fields as you like them, then view the changes and apply them.")
    if config.error:
        gr.HTML(f"<div class='sd-error'>{html.escape(config.error)}</div>")
    with gr.Row():
        view = gr.Button("View changes", elem_id=ctx.tip("settings_ui_defaults_view", "List the fields whose value "
                                                         "differs from the saved default"))
        save = gr.Button("Apply", elem_id=ctx.tip("settings_ui_defaults_apply", f"Save the current values of those "
                                                  f"fields as their defaults in {config.path.name}"))
    table = gr.HTML(elem_id="settings_ui_defaults_result")

    def do_save(*values):
        if config.error:
            raise user_error(config.error)
        changed = config.apply_changes(values)
        return f"<div>{len(changed)} defaults saved to {html.escape(config.path.name)}.</div>" + _changes_table(changed)

    view.click(lambda *values: _changes_table(config.changes(values)), config.components, table)
    save.click(do_save, config.components, table)

"""Tabs that extensions add (``ui_tabs`` callbacks returning ``modules.extensions.UiTab``)."""
from __future__ import annotations

import gradio as gr

from webui.context import UiContext
from webui.script_controls import controls_ui


def build_tab(ctx: UiContext, tab) -> None:
    """Markdown, the tab's controls, and its action button with the text it returns."""
    if tab.markdown:
        gr.Markdown(tab.markdown)
    components = controls_ui(ctx, tab.elem_id, tab.controls)
    if tab.action is None:
        return
    run = gr.Button(tab.action_label, variant="primary", elem_id=ctx.tip(f"{tab.elem_id}_action", tab.action_label))
    result = gr.Markdown(elem_id=f"{tab.elem_id}_result")
    names = list(components)

    def act(*values):
        try:
            return str(tab.action(dict(zip(names, values))))
        except Exception as e:  # noqa: BLE001 - an extension's failure is shown, the UI goes on
            return f"**Error:** {type(e).__name__}: {e}"

    run.click(act, list(components.values()), result)

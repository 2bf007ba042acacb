"""Extensions tab: installed extensions with enable/disable (applied on restart) and their load errors."""
from __future__ import annotations

import html

import gradio as gr

from webui.context import UiContext


def _rows(extensions) -> str:
    if not extensions:
        return "<div>No extensions installed (put them in the extensions/ folder).</div>"
    rows = []
    for ext in extensions:
        errors = "; ".join(map(str, getattr(ext, "errors", []) or []))
        rows.append(f"<tr><td>{html.escape(ext.name)}</td><td>{html.escape(str(getattr(ext, 'version', '') or ''))}"
                    f"</td><td>{'enabled' if ext.enabled else 'disabled'}</td><td>{html.escape(str(ext.path))}</td>"
                    f"<td class='sd-error'>{html.escape(errors)}</td></tr>")
    return ("<table class='sd-extensions'><tr><th>Extension</th><th>Version</th><th>State</th><th>Path</th>"
            f"<th>Errors</th></tr>{''.join(rows)}</table>")


def build(ctx: UiContext) -> None:
    registry = getattr(ctx.state, "extensions", None)
    extensions = list(registry or [])
    table = gr.HTML(_rows(extensions), elem_id="extensions_table")
    enabled = gr.CheckboxGroup([e.name for e in extensions], value=[e.name for e in extensions if e.enabled],
                               label="Enabled extensions", elem_id=ctx.tip("extensions_enabled",
                                                                           "Tick to enable; applied on restart"))
    apply = gr.Button("Apply and restart UI", variant="primary",
                      elem_id=ctx.tip("extensions_apply", "Save the choice; restart the server to load it"))
    local = ctx.state.options.server.host in ("127.0.0.1", "localhost")
    allowed = local or ctx.state.options.server.enable_insecure_extension_access
    gr.Markdown("Install from URL: " + ("clone the repository into `extensions/` (needs git and network access)."
                                        if allowed else "disabled on a non-local server; start with "
                                        "`--enable-insecure-extension-access` to allow it."))

    def do_apply(names):
        setter = getattr(registry, "set_enabled", None)
        if setter is None:
            raise gr.Error("This build has no extension system to configure")
        for ext in extensions:
            setter(ext.name, ext.name in (names or []))
        gr.Info("Saved; restart the server (python launch.py) to apply")
        return _rows(list(registry))

    apply.click(do_apply, enabled, table)

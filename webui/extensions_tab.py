"""Extensions tab: installed extensions with enable/disable, their load errors, install from a git URL (an
AUTOMATIC1111 extension is named as such and not loaded), and "Apply and restart UI" (saves the choice and restarts
the server in place)."""
from __future__ import annotations

import html

import gradio as gr

from modules.extensions import a1111_reason
from webui import extension_install, restart
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
                      elem_id=ctx.tip("extensions_apply", "Save the choice and restart the server to load it"))
    message = gr.HTML(elem_id="extensions_message")

    def do_apply(names):
        setter = getattr(registry, "set_enabled", None)
        if setter is None:
            raise gr.Error("This build has no extension system to configure")
        for ext in extensions:
            setter(ext.name, ext.name in (names or []))
        return _rows(list(registry))

    restart.wire(ctx, apply.click(do_apply, enabled, table), message)
    _install_panel(ctx, registry)


def _install_panel(ctx: UiContext, registry) -> None:
    refusal = extension_install.install_refusal(ctx.state.options.server)
    dirs = getattr(registry, "dirs", None) or []
    with gr.Accordion("Install from URL", open=True, elem_id="extensions_install"):
        if refusal or not dirs:
            gr.HTML(f"<div class='sd-warning'>{html.escape(refusal or 'No extensions folder to install into.')}"
                    "</div>", elem_id="extensions_install_refused")
            return
        gr.Markdown(f"Clones a git repository into `{dirs[0]}`; it is loaded after **Apply and restart UI**. "
                    "Needs git, and network access for a remote URL.")
        with gr.Row():
            url = gr.Textbox(label="URL for extension's git repository", scale=4, elem_id=ctx.tip(
                "extension_install_url", "https://…, git@host:owner/repo.git, file://… or a local path"))
            name = gr.Textbox(label="Local directory name", scale=2, placeholder="Leave empty for auto",
                              elem_id=ctx.tip("extension_install_name", "Folder name under extensions/ (default: "
                                              "the repository's name)"))
        install = gr.Button("Install", variant="primary", elem_id=ctx.tip("extension_install_button",
                                                                        "Clone the repository into extensions/"))
        result = gr.HTML(elem_id="extension_install_result")

    def do_install(url_text, folder_name):
        try:
            path = extension_install.install(url_text, dirs[0], folder_name)
        except extension_install.InstallError as e:
            return f"<div class='sd-error'>{html.escape(str(e))}</div>"
        reason = a1111_reason(path)
        if reason:
            return (f"<div class='sd-error'>Cloned into {html.escape(str(path))}, but it will not be loaded: "
                    f"{html.escape(reason)}. Delete that folder to remove it.</div>")
        return (f"<div class='sd-ok'>Installed into {html.escape(str(path))}. Use <b>Apply and restart UI</b> to "
                "load it.</div>")

    install.click(do_install, [url, name], result, show_progress="hidden")

"""Workers tab (only with ``--workers`` / ``--ray-address``): each generation worker's node, device, loaded
checkpoint, current job, jobs done and failures, refreshed while the tab is open."""
from __future__ import annotations

import html

import gradio as gr

from webui.context import UiContext

REFRESH_SECONDS = 2.0
COLUMNS = (("name", "Worker"), ("state", "State"), ("node", "Node"), ("device", "Device"),
           ("checkpoint", "Checkpoint"), ("job", "Current job"), ("jobs_done", "Jobs done"),
           ("failures", "Failures"), ("restarts", "Restarts"))


def _cell(key: str, row: dict) -> str:
    value = row.get(key)
    if key == "job":
        value = f"{value['label']} ({value['id']})" if value else ""
    elif key == "state" and row.get("error"):
        value = f"{value}: {row['error']}"
    return html.escape("" if value is None else str(value))


def workers_html(rows: list[dict]) -> str:
    """The workers as a table (one row each)."""
    head = "".join(f"<th>{label}</th>" for _, label in COLUMNS)
    body = "".join(f'<tr class="sd-worker sd-worker-{html.escape(r["state"])}">'
                   + "".join(f'<td data-key="{key}">{_cell(key, r)}</td>' for key, _ in COLUMNS) + "</tr>"
                   for r in rows)
    return f'<table class="sd-workers"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


TITLE = "Workers"


def build(ctx: UiContext, main_tabs) -> None:
    """The table; it refreshes every :data:`REFRESH_SECONDS` while the tab titled :data:`TITLE` of ``main_tabs`` is
    the selected one."""
    pool = ctx.state.queue.workers

    def rows() -> str:
        return workers_html(pool.status() if pool is not None else [])

    table = gr.HTML(rows(), elem_id="workers_table")
    timer = gr.Timer(REFRESH_SECONDS, active=False)
    timer.tick(rows, None, table, show_progress="hidden", queue=False)

    def selected(evt: gr.SelectData):
        shown = evt.value == TITLE
        return (rows() if shown else gr.skip()), gr.Timer(active=shown)

    main_tabs.select(selected, None, [table, timer], show_progress="hidden", queue=False)

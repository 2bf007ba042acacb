"""Script panels rendered from ``modules.scripts`` Controls: always-on accordions and the Script dropdown."""
from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field, replace

import gradio as gr

from modules import scripts
from webui.context import UiContext, script_field

log = logging.getLogger("sdwebui")
NO_SCRIPT = "None"
MAX_UPLOADED_TEXT = 1 << 20  # bytes of a text file loaded into a textarea control


@dataclass
class ScriptUi:
    alwayson: dict = field(default_factory=dict)  # title -> {control name: component}
    selectable: dict = field(default_factory=dict)  # title -> {control name: component}
    dropdown: object = None

    @property
    def fields(self) -> dict:
        """The always-on panels' components keyed as pasted infotext values are (``script_field``)."""
        return {script_field(title, name): c for title, comps in self.alwayson.items() for name, c in comps.items()}

    @property
    def components(self) -> set:
        comps = {c for group in (*self.alwayson.values(), *self.selectable.values()) for c in group.values()}
        return comps | ({self.dropdown} if self.dropdown is not None else set())


def component_for(control, elem_id: str):
    """A Gradio input for one Control (checkbox, slider, number, text, textarea, dropdown, radio, checkboxes,
    image, or an info line)."""
    common = dict(label=control.label, elem_id=elem_id)
    if control.kind == "checkbox":
        return gr.Checkbox(bool(control.default), **common)
    if control.kind == "slider":
        return gr.Slider(control.minimum if control.minimum is not None else 0,
                         control.maximum if control.maximum is not None else 1, control.default,
                         step=control.step, **common)
    if control.kind == "number":
        return gr.Number(control.default, minimum=control.minimum, maximum=control.maximum, step=control.step,
                         **common)
    if control.kind == "dropdown":
        return gr.Dropdown(list(control.choices), value=control.default, **common)
    if control.kind == "radio":
        return gr.Radio(list(control.choices), value=control.default, **common)
    if control.kind == "checkboxes":
        return gr.CheckboxGroup(list(control.choices), value=list(control.default or ()), **common)
    if control.kind == "textarea":
        return gr.Textbox(control.default or "", lines=4, max_lines=20, **common)
    if control.kind == "image":
        return gr.Image(type="pil", format="png", **common)
    if control.kind == "info":  # its value (the text) is passed like any argument; scripts ignore it
        return gr.HTML(f"<p class='sd-script-info'>{html.escape(control.label)}</p>", elem_id=elem_id)
    return gr.Textbox(control.default or "", **common)


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower())


def controls_ui(ctx: UiContext, prefix: str, controls, values: dict | None = None) -> dict:
    """Components for ``controls`` by control name; ``values`` overrides their defaults."""
    out = {}
    for control in controls:
        if values and control.name in values:
            control = replace(control, default=values[control.name])
        elem_id = ctx.tip(f"{prefix}_{slug(control.name)}", control.tooltip or control.label)
        out[control.name] = component_for(control, elem_id)
        if control.kind == "textarea" and control.upload:
            _upload_into(out[control.name], control.upload, f"{elem_id}_upload")
    return out


def _upload_into(box, label: str, elem_id: str) -> None:
    """A text-file upload under ``box``: the file's text replaces the box's (not an argument of the script)."""
    upload = gr.File(label=label, file_types=[".txt"], type="binary", elem_id=elem_id)

    def read(data: bytes | None):
        if not data:
            return gr.update()
        if len(data) > MAX_UPLOADED_TEXT:
            gr.Warning(f"{label}: the file has {len(data)} bytes; at most {MAX_UPLOADED_TEXT}")
            return gr.update()
        return data.decode("utf-8", errors="replace")

    upload.upload(read, inputs=upload, outputs=box)


def _prefix(kind: str, script) -> str:
    return f"{kind}_script_{slug(script.title)}"


def _preview_slots(ctx: UiContext, kind: str, script, previews) -> list:
    """An image and a button under it per :class:`~modules.scripts.Preview`: ``[(preview, button, image)]``."""
    out = []
    for preview in previews:
        prefix = f"{_prefix(kind, script)}_{slug(preview.name)}"
        with gr.Column(min_width=160):
            image = gr.Image(label=preview.label, type="pil", format="png", interactive=False, height=192,
                             elem_id=ctx.tip(f"{prefix}_image", preview.label))
            button = gr.Button(preview.label, size="sm", elem_id=ctx.tip(
                prefix, "Show what the current settings produce, at the output size"))
        out.append((preview, button, image))
    return out


def _wire_previews(kind: str, script, slots: list, comps: dict, size) -> None:
    """Each preview button renders its image from all of the panel's values and the output ``size``."""
    names = list(comps)
    for preview, button, image in slots:
        def show(*values, preview=preview):
            *panel, width, height = values
            try:
                args = scripts.named_args(script, kind, dict(zip(names, panel)))
                return preview.render(args, int(width), int(height))
            except ValueError as e:
                gr.Warning(str(e))
                return gr.skip()

        button.click(show, [*comps.values(), *size], image, show_progress="minimal")


def panel_header(title: str, switches: list, values: list) -> str:
    """An always-on panel's header: its title, and "on" (naming the groups that are on) when a switch is set."""
    on = [c.group or c.label for c, value in zip(switches, values) if value]
    if not on:
        return title
    return f"{title} — on" if len(switches) == 1 else f"{title} — on: {', '.join(on)}"


def _alwayson_panel(ctx: UiContext, kind: str, script, size) -> dict:
    """The accordion of one always-on script: its controls (grouped controls in tabs, each group's images beside
    its previews), a line from the script's ``describe``, and a header that says when the script is on."""
    controls = script.controls(kind)
    previews = script.previews(kind) if size else []
    prefix = _prefix(kind, script)
    comps: dict = {}
    slots = []
    with gr.Accordion(script.title, open=False, elem_id=f"{prefix}_panel", elem_classes="sd-script-panel") as panel:
        comps.update(controls_ui(ctx, prefix, [c for c in controls if not c.group]))
        groups = list(dict.fromkeys(c.group for c in controls if c.group))
        if groups:
            with gr.Tabs():
                for group in groups:
                    with gr.Tab(group, elem_id=f"{prefix}_{slug(group)}"):
                        members = [c for c in controls if c.group == group]
                        with gr.Row():
                            comps.update(controls_ui(ctx, prefix, [c for c in members if c.kind == "image"]))
                            slots += _preview_slots(ctx, kind, script, [v for v in previews if v.group == group])
                        others = [c for c in members if c.kind != "image"]
                        for i in range(0, len(others), 2):  # two to a row: a unit's tab stays short
                            with gr.Row():
                                comps.update(controls_ui(ctx, prefix, others[i:i + 2]))
        comps = {c.name: comps[c.name] for c in controls}  # control order (the positional order of arguments)
        slots += _preview_slots(ctx, kind, script, [v for v in previews if not v.group])
        _wire_previews(kind, script, slots, comps, size)
        if size and type(script).describe is not scripts.Script.describe:
            _describe_line(ctx, kind, script, controls, comps, size)
    for c in controls:
        if c.kind == "image" and c.enables:
            comps[c.name].upload(lambda: True, None, comps[c.enables], queue=False, show_progress="hidden")
    switches = [c for c in controls if c.switch]
    if switches:
        gr.on([comps[c.name].change for c in switches],
              lambda *values: gr.update(label=panel_header(script.title, switches, list(values))),
              [comps[c.name] for c in switches], panel, queue=False, show_progress="hidden")
    return comps


def _describe_line(ctx: UiContext, kind: str, script, controls, comps: dict, size) -> None:
    """A line under the panel's controls from ``script.describe``, kept current as the values and size change."""
    watched = [c for c in controls if c.kind != "image"]
    line = gr.HTML("", elem_id=f"{_prefix(kind, script)}_describe", elem_classes="sd-script-describe")

    def describe(*values):  # the panel's raw values: checking them would rescan the script's catalogs each time
        *panel, width, height = values
        try:
            return html.escape(script.describe(kind, dict(zip((c.name for c in watched), panel)), int(width),
                                               int(height)))
        except Exception:  # noqa: BLE001 - an extension's bug must not break the panel (nor answer HTTP 500)
            log.exception("%s: describe failed", script.title)
            return ""

    inputs = [*(comps[c.name] for c in watched), *size]
    gr.on([c.change for c in inputs], describe, inputs, line, queue=False, show_progress="hidden")
    line.value = describe(*(c.value for c in inputs))


def build(ctx: UiContext, kind: str, size=()) -> ScriptUi:
    """Always-on panels (with their preview buttons and describe line, which read the output ``size``
    components: width, height), then the Script dropdown whose choice shows that script's controls."""
    ui = ScriptUi()
    available = [s for s in scripts.scripts_for(ctx.state, kind) if kind in s.kinds]
    for script in (s for s in available if s.alwayson):
        ui.alwayson[script.title] = _alwayson_panel(ctx, kind, script, size)
    selectable = [s for s in available if not s.alwayson]
    if not selectable:
        return ui
    ui.dropdown = gr.Dropdown([NO_SCRIPT, *(s.title for s in selectable)], value=NO_SCRIPT, label="Script",
                              elem_id=ctx.tip(f"{kind}_script", "A script that runs the whole job its own way"))
    columns = []
    for script in selectable:
        with gr.Column(visible=False, elem_id=f"{_prefix(kind, script)}_controls") as column:
            ui.selectable[script.title] = controls_ui(ctx, _prefix(kind, script), script.controls(kind))
        columns.append((script.title, column))

    def show(choice):  # one output takes one update, not a list of one
        updates = [gr.update(visible=title == choice) for title, _ in columns]
        return updates if len(updates) > 1 else updates[0]

    ui.dropdown.change(show, ui.dropdown, [c for _, c in columns], queue=False, show_progress="hidden")
    return ui


def submit(state, params, ui: ScriptUi, data: dict):
    """Queue the job with the scripts' arguments (ValueError for bad parameters or script arguments)."""
    alwayson = {title: {"args": {name: data[c] for name, c in comps.items()}} for title, comps in ui.alwayson.items()}
    name = data[ui.dropdown] if ui.dropdown is not None else NO_SCRIPT
    script_name, script_args = None, None
    if name and name != NO_SCRIPT:
        script_name = name
        script_args = {n: data[c] for n, c in ui.selectable[name].items()}
    params.validate()
    return scripts.submit(state, params, script_name=script_name, script_args=script_args, alwayson=alwayson)

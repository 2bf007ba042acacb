"""Script panels rendered from ``modules.scripts`` Controls: always-on accordions and the Script dropdown."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import gradio as gr

from modules import scripts
from webui.context import UiContext, script_field

NO_SCRIPT = "None"


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
    """A Gradio input for one Control (checkbox, slider, number, text, dropdown, radio or image)."""
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
    if control.kind == "image":
        return gr.Image(type="pil", format="png", **common)
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
    return out


def _controls(ctx: UiContext, kind: str, script) -> dict:
    return controls_ui(ctx, f"{kind}_script_{slug(script.title)}", script.controls(kind))


def _previews(ctx: UiContext, kind: str, script, comps: dict, size) -> None:
    """A button and an image per :class:`~modules.scripts.Preview` of ``script``, rendered from the panel."""
    names = list(comps)
    for preview in script.previews(kind):
        prefix = f"{kind}_script_{slug(script.title)}_{slug(preview.name)}"
        with gr.Row():
            button = gr.Button(preview.label, size="sm", elem_id=ctx.tip(
                prefix, "Show what the current settings produce, at the output size"))
            image = gr.Image(label=preview.label, type="pil", format="png", interactive=False, height=192,
                             elem_id=ctx.tip(f"{prefix}_image", preview.label))

        def show(*values, preview=preview):
            *panel, width, height = values
            try:
                args = scripts.named_args(script, kind, dict(zip(names, panel)))
                return preview.render(args, int(width), int(height))
            except ValueError as e:
                gr.Warning(str(e))
                return gr.skip()

        button.click(show, [*comps.values(), *size], image, show_progress="minimal")


def build(ctx: UiContext, kind: str, size=()) -> ScriptUi:
    """Always-on panels (with their preview buttons, which read the output ``size`` components: width, height),
    then the Script dropdown whose choice shows that script's controls."""
    ui = ScriptUi()
    available = [s for s in scripts.scripts_for(ctx.state, kind) if kind in s.kinds]
    for script in (s for s in available if s.alwayson):
        with gr.Accordion(script.title, open=False, elem_classes="sd-script-panel"):
            ui.alwayson[script.title] = comps = _controls(ctx, kind, script)
            if size:
                _previews(ctx, kind, script, comps, size)
    selectable = [s for s in available if not s.alwayson]
    if not selectable:
        return ui
    ui.dropdown = gr.Dropdown([NO_SCRIPT, *(s.title for s in selectable)], value=NO_SCRIPT, label="Script",
                              elem_id=ctx.tip(f"{kind}_script", "A script that runs the whole job its own way"))
    groups = []
    for script in selectable:
        with gr.Group(visible=False) as group:
            ui.selectable[script.title] = _controls(ctx, kind, script)
        groups.append((script.title, group))
    ui.dropdown.change(lambda choice: [gr.update(visible=title == choice) for title, _ in groups], ui.dropdown,
                       [g for _, g in groups], queue=False, show_progress="hidden")
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

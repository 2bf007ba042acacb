"""Settings tab: options by section with a search box, Apply, and Defaults; stored in config.json."""
from __future__ import annotations

from dataclasses import fields

import gradio as gr

from modules.settings import Settings
from webui.context import UiContext
from webui.script_controls import controls_ui
from webui.top_bar import switch_checkpoint, switch_vae

SECTIONS: dict[str, dict[str, str]] = {
    "Saving images": {
        "samples_save": "Always save all generated images",
        "samples_format": "File format for images",
        "grid_save": "Always save all generated image grids",
        "grid_format": "File format for grids",
        "save_txt": "Create a text file with the generation parameters next to every image",
    },
    "Stable Diffusion": {
        "sd_model_checkpoint": "Stable Diffusion checkpoint",
        "sd_vae": "SD VAE",
        "sd_checkpoints_limit": "Checkpoints to keep in RAM",
        "CLIP_stop_at_last_layers": "Clip skip",
        "emphasis": "Emphasis mode",
    },
    "Sampler parameters": {
        "randn_source": "Random number generator source",
        "eta_noise_seed_delta": "Eta noise seed delta (ENSD)",
        "img2img_fix_steps": "img2img: do exactly the number of steps the slider says",
        "initial_noise_multiplier": "Noise multiplier for img2img",
        "inpainting_mask_weight": "Inpainting conditioning mask strength",
    },
    "Live previews": {
        "live_previews_enable": "Show live previews of the image being made",
        "show_progress_every_n_steps": "Live preview every N sampling steps",
    },
}

CHOICES = {
    "samples_format": ("png", "jpg", "webp"),
    "grid_format": ("png", "jpg", "webp"),
    "randn_source": ("CPU", "GPU"),
    "emphasis": ("Original", "No norm", "None"),
}


def _component(ctx: UiContext, name: str, label: str, default):
    elem_id = ctx.tip(f"setting_page_{name}", f"{label} ({name})")
    if name == "sd_model_checkpoint":
        return gr.Dropdown([i.filename for i in ctx.state.checkpoints.items()], label=label, elem_id=elem_id,
                           allow_custom_value=True)
    if name == "sd_vae":
        return gr.Dropdown(ctx.state.vaes.choices(), label=label, elem_id=elem_id)
    if name in CHOICES:
        return gr.Dropdown(list(CHOICES[name]), label=label, elem_id=elem_id)
    if isinstance(default, bool):
        return gr.Checkbox(label=label, elem_id=elem_id)
    if isinstance(default, (int, float)):
        return gr.Number(label=label, elem_id=elem_id, precision=0 if isinstance(default, int) else None)
    return gr.Textbox(label=label, elem_id=elem_id)


def build(ctx: UiContext):
    """Lay out the tab; returns (load function, components) for filling values on page load."""
    state = ctx.state
    defaults = Settings()
    known = {f.name for f in fields(Settings)}
    components: dict[str, object] = {}
    labels: dict[str, str] = {}
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id=ctx.tip("settings_submit",
                                                                               "Save the changes to config.json"))
        reset = gr.Button("Defaults", elem_id=ctx.tip("settings_defaults", "Restore every setting's default"))
        search = gr.Textbox(label="Search settings", scale=3, elem_id=ctx.tip("settings_search",
                                                                              "Show only matching settings"))
    result = gr.HTML(elem_id="settings_result")
    blocks = {}
    for section, names in SECTIONS.items():
        with gr.Accordion(section, open=True) as blocks[section]:
            for name, label in names.items():
                if name in known:
                    components[name] = _component(ctx, name, label, getattr(defaults, name))
                    labels[name] = f"{section} {label} {name}".lower()
    core = list(components)
    extensions = state.extensions
    for section in extensions.settings_sections() if extensions is not None else []:
        with gr.Accordion(section.title, open=True) as blocks[section.title]:
            stored = {c.name: extensions.option(c.name) for c in section.controls}
            components.update(controls_ui(ctx, "setting_page", section.controls, stored))
        for control in section.controls:
            labels[control.name] = f"{section.title} {control.label} {control.name}".lower()
    section_names = {**{s: list(n) for s, n in SECTIONS.items()},
                     **{s.title: [c.name for c in s.controls] for s in (extensions.settings_sections()
                                                                        if extensions is not None else [])}}
    names = list(components)

    def values():
        current = state.settings.current
        return [getattr(current, n) if n in core else extensions.option(n) for n in names]

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
        except ValueError as e:
            return [f'<div class="sd-error">{e}</div>', *values()]
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
        sections = [gr.update(visible=not q or any(q in labels[n] for n in section_names[s])) for s in blocks]
        return updates + sections

    outs = [result, *components.values()]
    apply.click(do_apply, list(components.values()), outs)
    reset.click(do_reset, None, outs)
    search.change(do_search, search, [*components.values(), *blocks.values()], queue=False, show_progress="hidden")
    return values, list(components.values())

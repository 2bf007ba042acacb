"""Extra networks cards (checkpoints, LoRAs, embeddings) with search; a click adds or removes a tag, or switches
model. Each card's edit button opens a dialog for its A1111 sidecar (``<model>.json``: description, and for LoRAs
activation text, preferred weight, negative text) with a read-only view of a LoRA's kohya training metadata.

A card click (static/script.js) writes ``kind\\tname\\tnonce`` into a hidden textbox (``_en_pick``, or ``_en_edit``
for the edit button); its change event does the rest. Files are found by kind and name in the catalogs, never by a
path from the browser.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from modules.networks.user_metadata import (
    SD_VERSIONS,
    CardText,
    UserMetadata,
    UserMetadataError,
    lora_card_text,
    read_user_metadata,
    training_summary,
    user_metadata_or_empty,
    write_user_metadata,
)
from webui.context import UiContext
from webui.icons import icon_button
from webui.top_bar import switch_checkpoint

PREVIEW_SUFFIXES = (".png", ".preview.png")
THUMB = 160


EDIT_ICON = ('<svg viewBox="0 0 24 24" width="16" height="16" fill="none" stroke="currentColor" stroke-width="2" '
             'stroke-linecap="round" stroke-linejoin="round" aria-hidden="true"><path d="M4 20h4L19 9l-4-4L4 16z"/>'
             '<path d="M13 7l4 4"/></svg>')


@dataclass(frozen=True)
class Card:
    kind: str  # "checkpoint" | "lora" | "embedding"
    name: str
    title: str
    preview: Path | None = None
    path: Path | None = None  # the model file (its sidecar lies beside it); None for embeddings made in memory
    description: str = ""


def preview_for(path: Path) -> Path | None:
    """A PNG of the same name beside the model file (``name.png`` or ``name.preview.png``)."""
    stem = path.with_suffix("")
    return next((p for p in (Path(f"{stem}{s}") for s in PREVIEW_SUFFIXES) if p.is_file()), None)


def _card(kind: str, name: str, title: str, path: Path | None) -> Card:
    if path is None:
        return Card(kind, name, title)
    return Card(kind, name, title, preview_for(path), path, user_metadata_or_empty(path).description)


def cards(state) -> dict[str, list[Card]]:
    """Cards per section, from the catalogs as they are now (descriptions from the sidecars)."""
    checkpoints = [_card("checkpoint", i.filename, state.checkpoints.title(i), i.path)
                   for i in state.checkpoints.items()]
    loras = [_card("lora", i.name, str(i.path.name), i.path) for i in state.networks.loras.items]
    embeddings = [_card("embedding", name, name, e.path) for name, e in sorted(state.networks.embeddings().items())]
    return {"Checkpoints": checkpoints, "LoRA": loras, "Textual Inversion": embeddings}


def model_path(state, kind: str, name: str) -> Path | None:
    """The file of the card ``kind``/``name`` as the catalogs list it (None when it is not listed)."""
    if kind == "checkpoint":
        return next((i.path for i in state.checkpoints.items() if i.filename == name), None)
    if kind == "lora":
        return next((i.path for i in state.networks.loras.items if i.name == name), None)
    if kind == "embedding":
        embedding = state.networks.embeddings().get(name)
        return embedding.path if embedding else None
    return None


def _thumbnail(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        with Image.open(path) as img:
            img.thumbnail((THUMB, THUMB))
            buffer = io.BytesIO()
            img.convert("RGB").save(buffer, "JPEG", quality=80)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def cards_html(items: list[Card], target: str, query: str = "") -> str:
    """The cards matching ``query`` (case-insensitive substring of the name) as clickable HTML."""
    query = (query or "").strip().lower()
    shown = [c for c in items if query in c.name.lower()]
    if not shown:
        return '<div class="sd-cards-empty">Nothing here. Put files in the models folders and press Refresh.</div>'
    out = []
    for c in shown:
        thumb = _thumbnail(c.preview)
        image = f'<img src="{thumb}" alt="">' if thumb else '<div class="sd-card-noimage"></div>'
        name = html.escape(c.name, quote=True)
        edit = (f'<button type="button" class="sd-card-edit" title="Edit metadata" aria-label="Edit metadata of '
                f'{name}">{EDIT_ICON}</button>' if c.path else "")
        desc = f'<div class="sd-card-desc">{html.escape(c.description)}</div>' if c.description else ""
        out.append(f'<div class="sd-card" tabindex="0" data-target="{target}" data-kind="{c.kind}" '
                   f'data-name="{name}" title="{html.escape(c.title, quote=True)}">'
                   f'{image}{edit}<div class="sd-card-name">{html.escape(c.name)}</div>{desc}</div>')
    return f'<div class="sd-cards">{"".join(out)}</div>'


def _card_pattern(kind: str, name: str, card: CardText | None = None) -> re.Pattern:
    """The card's text in a prompt (a LoRA tag at any weight with the activation text after it, or the embedding's
    word) with the separator before."""
    if kind == "lora":
        activation = rf"(?:\s+{re.escape(card.activation)})?" if card and card.activation else ""
        return re.compile(rf"[\s,]*<lora:{re.escape(name)}(?::[^>]*)?>{activation}")
    return re.compile(rf"[\s,]*(?<![\w\-:<(]){re.escape(name)}(?![\w\-:>])")  # not inside a tag or a weight


def _append(prompt: str, text: str, separator: str) -> str:
    if not prompt.strip():
        return text
    return prompt + ("" if prompt.endswith((" ", ",")) else separator) + text


def toggle_in_prompt(prompt: str, kind: str, name: str, card: CardText | None = None) -> str:
    """The prompt with the card's text (``card.prompt``; by default ``<lora:name:1>`` or the embedding's name)
    appended after a space (LoRA) or ", " (embedding), or, when it is there already, without it (as A1111)."""
    prompt = prompt or ""
    pattern = _card_pattern(kind, name, card)
    if pattern.search(prompt):
        return pattern.sub("", prompt).strip(" ,")
    text = card.prompt if card else f"<lora:{name}:1>" if kind == "lora" else name
    return _append(prompt, text, " " if kind == "lora" else ", ")


def toggle_negative(negative: str, text: str, remove: bool) -> str:
    """The negative prompt with a card's negative text appended (after a space, as A1111), or taken out."""
    negative = negative or ""
    if not text:
        return negative
    if remove:
        return re.sub(rf"[\s,]*{re.escape(text)}", "", negative, count=1).strip(" ,")
    return negative if text in negative else _append(negative, text, " ")


def _info_html(path: Path, lora) -> str:
    """The dialog's read-only view: the file, and a LoRA's training metadata (rows and top tags)."""
    try:
        size = path.stat().st_size
        size = f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.1f} KB"
    except OSError:
        size = "?"
    rows = [("File", path.name), ("Size", size)]
    summary = training_summary(lora.metadata) if lora else None
    rows += list(summary.rows) if summary else []
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    tags = ""
    if summary and summary.tags:
        chips = "".join(f'<span class="sd-tag">{html.escape(t)} <b>{n}</b></span>' for t, n in summary.tags)
        tags = f'<div class="sd-tags-title">Training dataset tags</div><div class="sd-tags">{chips}</div>'
    return f'<table class="sd-file-metadata">{table}</table>{tags}'


@dataclass
class EditDialog:
    """The metadata editor of one panel; ``selected`` holds the (kind, name) being edited."""

    selected: gr.State
    box: gr.Group
    title: gr.HTML
    description: gr.Textbox
    sd_version: gr.Dropdown
    activation: gr.Textbox
    weight: gr.Slider
    negative: gr.Textbox
    notes: gr.Textbox
    info: gr.HTML
    status: gr.HTML
    save: gr.Button
    cancel: gr.Button

    @property
    def fields(self) -> list:
        return [self.description, self.sd_version, self.activation, self.weight, self.negative, self.notes]


def _build_dialog(target: str) -> EditDialog:
    with gr.Group(visible=False, elem_id=f"{target}_en_dialog", elem_classes="sd-dialog") as box:
        title = gr.HTML(elem_classes="sd-dialog-title")
        description = gr.Textbox(label="Description", lines=2, elem_id=f"{target}_en_description")
        sd_version = gr.Dropdown(list(SD_VERSIONS), value="Unknown", label="Stable Diffusion version")
        activation = gr.Textbox(label="Activation text", info="Added to the prompt with the LoRA",
                                elem_id=f"{target}_en_activation")
        weight = gr.Slider(0, 2, value=0, step=0.01, label="Preferred weight", info="0 = the default weight (1)",
                           elem_id=f"{target}_en_weight")
        negative = gr.Textbox(label="Negative text", info="Added to the negative prompt with the LoRA")
        notes = gr.Textbox(label="Notes", lines=3)
        info = gr.HTML()
        status = gr.HTML()
        with gr.Row():
            cancel = gr.Button("Cancel", elem_id=f"{target}_en_cancel")
            save = gr.Button("Save", variant="primary", elem_id=f"{target}_en_save")
    return EditDialog(gr.State(("", "")), box, title, description, sd_version, activation, weight, negative, notes,
                      info, status, save, cancel)


def _warning(text: str) -> str:
    return f'<div class="sd-warning">{html.escape(text)}</div>'


@dataclass(frozen=True)
class CardPanel:
    """A tab's card boxes, for other tabs that add networks (``render(query)`` gives the boxes' HTML)."""

    search: gr.Textbox
    boxes: list
    render: Callable[[str], list[str]]


def build_panel(ctx: UiContext, target: str, prompt, negative_prompt) -> None:
    """Search box, refresh button and one tab of cards per section for the ``target`` tab's prompts, and the
    cards' metadata editor."""
    with gr.Row():
        search = gr.Textbox(label="Search", scale=4, elem_id=ctx.tip(f"{target}_en_search",
                                                                     "Show only cards whose name contains this"))
        refresh = icon_button("refresh", "Refresh", ctx.tip(f"{target}_en_refresh", "Scan the models folders again"))
    sections = {}
    with gr.Tabs():
        for section, items in cards(ctx.state).items():
            with gr.Tab(section):
                sections[section] = gr.HTML(cards_html(items, target), elem_classes="sd-cards-box",
                                            elem_id=f"{target}_en_{section.split()[0].lower()}")
    pick = gr.Textbox(visible="hidden", elem_id=f"{target}_en_pick")
    edit = gr.Textbox(visible="hidden", elem_id=f"{target}_en_edit")
    dialog = _build_dialog(target)

    def render(query: str, rescan: bool = False):
        if rescan:
            ctx.state.checkpoints.refresh()
            ctx.state.networks.refresh()
        current = cards(ctx.state)
        return [cards_html(current[name], target, query) for name in sections]

    search.change(render, search, list(sections.values()), trigger_mode="always_last", show_progress="hidden",
                  queue=False)
    refresh.click(lambda q: render(q, True), search, list(sections.values()))
    ctx.card_panels.append(CardPanel(search, list(sections.values()), render))

    def lora_info(name: str):
        return next((i for i in ctx.state.networks.loras.items if i.name == name), None)

    def on_pick(value: str, text: str, negative: str):
        kind, name, _nonce = (value or "\t\t").split("\t", 2)
        if kind == "checkpoint":
            return gr.skip(), gr.skip(), switch_checkpoint(ctx, name)
        if kind == "embedding":
            return toggle_in_prompt(text, kind, name), gr.skip(), gr.skip()
        if kind == "lora":
            path = model_path(ctx.state, kind, name)
            card = lora_card_text(name, user_metadata_or_empty(path) if path else UserMetadata())
            had = _card_pattern(kind, name, card).search(text or "") is not None
            return toggle_in_prompt(text, kind, name, card), toggle_negative(negative, card.negative, had), gr.skip()
        return gr.skip(), gr.skip(), gr.skip()

    pick.change(on_pick, [pick, prompt, negative_prompt], [prompt, negative_prompt, ctx.top_bar.checkpoint],
                show_progress="hidden")

    def on_edit(value: str):
        kind, name, _nonce = (value or "\t\t").split("\t", 2)
        path = model_path(ctx.state, kind, name)
        if path is None:
            gr.Warning(f"'{name}' is no longer listed; press Refresh")
            return [gr.skip()] * 11
        problem = ""
        try:
            meta = read_user_metadata(path)
        except UserMetadataError as e:
            meta, problem = UserMetadata(), _warning(f"{e}; saving replaces it")
        lora = lora_info(name) if kind == "lora" else None
        detected = lora.base_model if lora and lora.base_model in SD_VERSIONS else "Unknown"
        return [(kind, name), gr.update(visible=True), f"<h3>{html.escape(name)}</h3>", meta.description,
                meta.sd_version or detected, gr.update(value=meta.activation_text, visible=kind == "lora"),
                gr.update(value=meta.preferred_weight, visible=kind == "lora"),
                gr.update(value=meta.negative_text, visible=kind == "lora"), meta.notes, _info_html(path, lora),
                problem]

    edit.change(on_edit, edit, [dialog.selected, dialog.box, dialog.title, *dialog.fields, dialog.info,
                                dialog.status], show_progress="hidden")

    def on_save(selected, description, sd_version, activation, weight, negative, notes, query):
        kind, name = selected
        path = model_path(ctx.state, kind, name)
        if path is None:
            return [gr.skip(), _warning(f"'{name}' is no longer listed; press Refresh")] + [gr.skip()] * len(sections)
        try:
            old = read_user_metadata(path)
        except UserMetadataError:
            old = UserMetadata()  # the dialog said that saving replaces the broken file
        meta = dataclasses.replace(old, description=description or "", sd_version=sd_version or "",
                                   activation_text=activation or "", preferred_weight=weight or 0.0,
                                   negative_text=negative or "", notes=notes or "")
        try:
            write_user_metadata(path, meta)
        except (UserMetadataError, OSError) as e:
            return [gr.skip(), _warning(f"Not saved: {e}")] + [gr.skip()] * len(sections)
        return [gr.update(visible=False), ""] + render(query)

    dialog.save.click(on_save, [dialog.selected, *dialog.fields, search],
                      [dialog.box, dialog.status, *sections.values()], show_progress="hidden")
    dialog.cancel.click(lambda: gr.update(visible=False), None, dialog.box, queue=False, show_progress="hidden")

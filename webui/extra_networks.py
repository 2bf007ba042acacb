"""Extra networks cards (checkpoints, LoRAs, embeddings) with search; a click adds or removes a tag, or switches
model.

A card click (static/script.js) writes ``kind\\tname\\tnonce`` into a hidden textbox; its change event does the rest.
"""
from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from webui.context import UiContext
from webui.icons import icon_button
from webui.top_bar import switch_checkpoint

PREVIEW_SUFFIXES = (".png", ".preview.png")
THUMB = 160


@dataclass(frozen=True)
class Card:
    kind: str  # "checkpoint" | "lora" | "embedding"
    name: str
    title: str
    preview: Path | None = None


def preview_for(path: Path) -> Path | None:
    """A PNG of the same name beside the model file (``name.png`` or ``name.preview.png``)."""
    stem = path.with_suffix("")
    return next((p for p in (Path(f"{stem}{s}") for s in PREVIEW_SUFFIXES) if p.is_file()), None)


def cards(state) -> dict[str, list[Card]]:
    """Cards per section, from the catalogs as they are now."""
    checkpoints = [Card("checkpoint", i.filename, state.checkpoints.title(i), preview_for(i.path))
                   for i in state.checkpoints.items()]
    loras = [Card("lora", i.name, str(i.path.name), preview_for(i.path)) for i in state.networks.loras.items]
    embeddings = [Card("embedding", name, name, preview_for(e.path) if e.path else None)
                  for name, e in sorted(state.networks.embeddings().items())]
    return {"Checkpoints": checkpoints, "LoRA": loras, "Textual Inversion": embeddings}


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
        out.append(f'<div class="sd-card" tabindex="0" data-target="{target}" data-kind="{c.kind}" '
                   f'data-name="{html.escape(c.name, quote=True)}" title="{html.escape(c.title, quote=True)}">'
                   f'{image}<div class="sd-card-name">{html.escape(c.name)}</div></div>')
    return f'<div class="sd-cards">{"".join(out)}</div>'


def _card_pattern(kind: str, name: str) -> re.Pattern:
    """The card's text in a prompt (a LoRA tag at any weight, or the embedding's word) with the separator before."""
    if kind == "lora":
        return re.compile(rf"[\s,]*<lora:{re.escape(name)}(?::[^>]*)?>")
    return re.compile(rf"[\s,]*(?<![\w\-:<(]){re.escape(name)}(?![\w\-:>])")  # not inside a tag or a weight


def toggle_in_prompt(prompt: str, kind: str, name: str) -> str:
    """The prompt with a LoRA tag or an embedding name appended (after a space or ", "), or, when it is there
    already, without it (as A1111's card click)."""
    prompt = prompt or ""
    pattern = _card_pattern(kind, name)
    if pattern.search(prompt):
        return pattern.sub("", prompt).strip(" ,")
    text = f"<lora:{name}:1>" if kind == "lora" else name
    if not prompt.strip():
        return text
    return prompt + ("" if prompt.endswith((" ", ",")) else " " if kind == "lora" else ", ") + text


def build_panel(ctx: UiContext, target: str, prompt) -> None:
    """Search box, refresh button and one tab of cards per section for the ``target`` tab's prompt."""
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

    def render(query: str, rescan: bool = False):
        if rescan:
            ctx.state.checkpoints.refresh()
            ctx.state.networks.refresh()
        current = cards(ctx.state)
        return [cards_html(current[name], target, query) for name in sections]

    search.change(render, search, list(sections.values()), trigger_mode="always_last", show_progress="hidden",
                  queue=False)
    refresh.click(lambda q: render(q, True), search, list(sections.values()))

    def on_pick(value: str, text: str):
        kind, name, _nonce = (value or "\t\t").split("\t", 2)
        if kind == "checkpoint":
            return gr.skip(), switch_checkpoint(ctx, name)
        if kind in ("lora", "embedding"):
            return toggle_in_prompt(text, kind, name), gr.skip()
        return gr.skip(), gr.skip()

    pick.change(on_pick, [pick, prompt], [prompt, ctx.top_bar.checkpoint], show_progress="hidden")

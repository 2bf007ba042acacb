"""Prompt styles (``styles.csv``): load, save, apply to a prompt, and find them again in a prompt.

The file has the columns ``name,prompt,negative_prompt`` (an old ``text`` column is read as ``prompt``; other
columns are ignored and not written back). Applying a style text to a prompt: if it contains ``{prompt}``,
every ``{prompt}`` is replaced by the prompt; otherwise it is appended after ``", "`` (empty parts skipped).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from modules.image_io import atomic_write

PLACEHOLDER = "{prompt}"
FIELDS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class PromptStyle:
    """A named pair of prompt and negative-prompt texts."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


def load_styles(path: str | os.PathLike[str]) -> dict[str, PromptStyle]:
    """Styles by name, in file order (a later row with the same name wins); empty when the file is missing."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        return {}
    styles: dict[str, PromptStyle] = {}
    for row in rows:
        name = (row.get("name") or "").strip()
        if name:
            prompt = row.get("prompt") or row.get("text") or ""
            styles[name] = PromptStyle(name, prompt, row.get("negative_prompt") or "")
    return styles


def save_styles(path: str | os.PathLike[str], styles: Iterable[PromptStyle]) -> Path:
    """Write ``styles`` to ``path`` atomically (a crash never leaves a half-written file)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    for style in styles:
        writer.writerow((style.name, style.prompt, style.negative_prompt))
    data = buffer.getvalue().encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data))


def save_style(path: str | os.PathLike[str], style: PromptStyle) -> dict[str, PromptStyle]:
    """Add ``style`` to the file at ``path``, replacing one of the same name in place; returns all styles."""
    styles = load_styles(path)
    styles[style.name] = style
    save_styles(path, styles.values())
    return styles


def delete_style(path: str | os.PathLike[str], name: str) -> dict[str, PromptStyle]:
    """Remove the style ``name`` from the file at ``path`` (no change if absent); returns the remaining styles."""
    styles = load_styles(path)
    if styles.pop(name, None) is not None:
        save_styles(path, styles.values())
    return styles


def apply_style_text(style_text: str, prompt: str) -> str:
    """``prompt`` with one style text applied (placeholder substitution, else appended after ", ")."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, styles: Sequence[PromptStyle]) -> tuple[str, str]:
    """Apply ``styles`` in order to both prompts."""
    for style in styles:
        prompt = apply_style_text(style.prompt, prompt)
        negative_prompt = apply_style_text(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def remove_style_text(style_text: str, prompt: str) -> str | None:
    """Undo :func:`apply_style_text`: the prompt before the style was applied, or None if it was not applied.

    Works on the stripped texts. A style with one ``{prompt}`` must match the prompt's start and end; one without
    must end the prompt (the ", " before it is removed too). Styles with several placeholders are not undone.
    """
    prompt = prompt.strip()
    style_text = style_text.strip()
    if PLACEHOLDER in style_text:
        if style_text.count(PLACEHOLDER) != 1:
            return None
        left, right = style_text.split(PLACEHOLDER)
        if len(prompt) >= len(left) + len(right) and prompt.startswith(left) and prompt.endswith(right):
            return prompt[len(left):len(prompt) - len(right)]
        return None
    if not prompt.endswith(style_text):
        return None
    rest = prompt[:len(prompt) - len(style_text)]
    return rest[:-2] if rest.endswith(", ") else rest


def extract_styles(prompt: str, negative_prompt: str,
                   styles: Iterable[PromptStyle]) -> tuple[list[str], str, str]:
    """Find which styles were applied to a prompt pair and remove them, as A1111 does when reading infotext.

    Repeatedly takes the first style (in the given order) whose prompt and negative texts can both be removed,
    until none fits. Returns the style names in the order they had been applied and the two original prompts.
    A style whose two texts are both empty is never matched.
    """
    remaining = [style for style in styles if style.prompt or style.negative_prompt]
    found: list[str] = []
    while True:
        for style in remaining:
            new_prompt = remove_style_text(style.prompt, prompt)
            new_negative = remove_style_text(style.negative_prompt, negative_prompt)
            if new_prompt is not None and new_negative is not None:
                prompt, negative_prompt = new_prompt, new_negative
                remaining.remove(style)
                found.append(style.name)
                break
        else:
            break
    found.reverse()
    return found, prompt, negative_prompt

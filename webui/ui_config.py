"""``ui-config.json``: per-field defaults of the generation tabs, keyed as A1111 does ("txt2img/Sampling steps/value").

Each labelled input of a tab has the keys ``<tab>/<label>/value`` and ``…/visible``; sliders also ``…/minimum``,
``…/maximum`` and ``…/step``. At start the stored keys are applied to the fields and the missing ones are written
with the built-in defaults, except the width and height values, which follow the checkpoint's native size until the
user saves sizes of their own. A broken file is reported and left as it is (the built-in defaults are used).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import gradio as gr

log = logging.getLogger("sdwebui")

FILE_NAME = "ui-config.json"
INPUT_TYPES = (gr.Textbox, gr.Number, gr.Slider, gr.Checkbox, gr.Dropdown, gr.Radio, gr.CheckboxGroup)
SLIDER_ATTRS = ("minimum", "maximum", "step")
MODEL_SIZED = ("Width", "Height")  # their value follows the checkpoint unless the user saved one
LEGACY_SIZE = 512


def _labelled_inputs(block):
    """The labelled, user-visible input components below ``block``, in layout order."""
    for child in getattr(block, "children", None) or []:
        if isinstance(child, INPUT_TYPES):
            if child.label and child.visible != "hidden":
                yield child
        else:
            yield from _labelled_inputs(child)


def _attrs(component) -> tuple[str, ...]:
    return (*SLIDER_ATTRS, "value", "visible") if isinstance(component, gr.Slider) else ("value", "visible")


def _choices(component) -> list | None:
    choices = getattr(component, "choices", None)
    return None if choices is None else [c[1] if isinstance(c, (tuple, list)) else c for c in choices]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def value_ok(component, value) -> bool:
    """Whether ``value`` is one the component can show (type, and choice for dropdowns and radios)."""
    choices = _choices(component)
    if isinstance(component, gr.CheckboxGroup) or (isinstance(component, gr.Dropdown) and component.multiselect):
        return isinstance(value, list) and all(v in choices for v in value)
    if choices is not None:
        return value in choices or bool(getattr(component, "allow_custom_value", False) and isinstance(value, str))
    if isinstance(component, gr.Checkbox):
        return isinstance(value, bool)
    if isinstance(component, (gr.Slider, gr.Number)):
        return _number(value)
    return isinstance(value, str) or value is None  # an empty textbox holds None


def _apply(component, attr: str, value) -> bool:
    if attr == "visible":
        ok = isinstance(value, bool)
    elif attr in SLIDER_ATTRS:
        ok = _number(value) and (attr != "step" or value > 0)
    else:
        ok = value_ok(component, value)
    if ok:
        setattr(component, attr, component.postprocess(value) if attr == "value" else value)
    return ok


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


class UiConfig:
    """The stored per-field defaults and the fields they belong to (``"<tab>/<label>"`` → component)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.saved: dict = {}
        self.fields: dict[str, object] = {}
        self.error: str | None = None
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(saved, dict):
                    raise ValueError("not a JSON object")
                self.saved = saved
            except (OSError, ValueError) as e:
                self.error = f"{self.path} could not be read ({e}); using the built-in defaults"
                log.error("%s", self.error)

    def register_tab(self, tab: str, block) -> None:
        """Apply the stored keys to the labelled inputs below ``block`` (a tab) and record the missing keys with the
        fields' built-in values. Call before the page's Blocks is finished (its config is made then)."""
        for component in _labelled_inputs(block):
            key = f"{tab}/{component.label}"
            if key in self.fields:
                continue  # two fields with one label: the first one owns the key
            self.fields[key] = component
            for attr in _attrs(component):
                path = f"{key}/{attr}"
                if attr == "value" and component.label in MODEL_SIZED and not self.has_value(tab, component.label):
                    continue  # none of the user's own (or the old default): the field keeps the checkpoint's size
                if path not in self.saved:
                    value = getattr(component, attr)
                    text = isinstance(component, gr.Textbox) and attr == "value"
                    self.saved[path] = "" if text and value is None else _plain(value)
                elif not _apply(component, attr, self.saved[path]):
                    log.warning("%s: %r is not a valid %s for %s; ignored", FILE_NAME, self.saved[path], attr, key)

    def has_value(self, tab: str, label: str) -> bool:
        """Whether the file holds a default value of its own for the field ``label`` of ``tab``. For the sizes, a
        stored 512 is taken as the old built-in default that earlier versions (and A1111) wrote for everyone."""
        value = self.saved.get(f"{tab}/{label}/value")
        return value is not None and not (label in MODEL_SIZED and value == LEGACY_SIZE)

    @property
    def components(self) -> list:
        return list(self.fields.values())

    def changes(self, values) -> list[tuple[str, object, object]]:
        """``(path, stored value, current value)`` for each field whose current value (``values``, in
        :attr:`components` order) differs from the stored default."""
        out = []
        for (key, component), new in zip(self.fields.items(), values):
            path = f"{key}/value"
            tab, label = key.split("/", 1)
            follows = label in MODEL_SIZED and not self.has_value(tab, label)
            old = component.value if follows else self.saved.get(path)  # a size that follows: changed by the user?
            new = _plain(new)
            if new == old or (old is None and new in ("", [])) or not value_ok(component, new):
                continue
            out.append((path, old, new))
        return out

    def apply_changes(self, values) -> list[tuple[str, object, object]]:
        """Store the current values (in :attr:`components` order) as the new defaults; returns what changed."""
        changed = self.changes(values)
        if changed:
            self.saved.update({path: new for path, _, new in changed})
            self.write()
        return changed

    def write(self) -> None:
        """Write the file (atomically), unless it could not be read at start (it is then left for the user)."""
        if self.error is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.saved, f, indent=4, ensure_ascii=False)
        os.replace(tmp, self.path)

    def write_missing(self) -> None:
        """Write the file when keys were added at start (the first run, or new fields)."""
        try:
            on_disk = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            on_disk = None
        if on_disk != self.saved:
            self.write()

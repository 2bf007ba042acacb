"""ui-config.json (webui/ui_config.py): stored per-field defaults applied to Gradio fields, missing keys written,
changes listed and saved. Built on real Gradio components (no server)."""
from __future__ import annotations

import json

import gradio as gr
import pytest

from webui.ui_config import UiConfig


def build(config: UiConfig):
    """A tab like txt2img's: prompt, steps slider, sampler dropdown, a checkbox; registered as "txt2img"."""
    with gr.Blocks():
        with gr.Tab("txt2img") as tab:
            with gr.Row():
                prompt = gr.Textbox(label="Prompt")
            with gr.Column():
                steps = gr.Slider(1, 150, 20, step=1, label="Sampling steps")
                sampler = gr.Dropdown(["Euler a", "DDIM"], value="Euler a", label="Sampling method")
                hires = gr.Checkbox(False, label="Hires. fix")
            gr.Textbox(visible="hidden", label="internal")
        config.register_tab("txt2img", tab)
    return prompt, steps, sampler, hires


def test_first_start_writes_every_key_with_the_built_in_defaults(tmp_path):
    config = UiConfig(tmp_path / "ui-config.json")
    build(config)
    config.write_missing()
    saved = json.loads((tmp_path / "ui-config.json").read_text())
    assert saved["txt2img/Prompt/value"] == ""
    assert saved["txt2img/Sampling steps/value"] == 20
    assert (saved["txt2img/Sampling steps/minimum"], saved["txt2img/Sampling steps/maximum"]) == (1, 150)
    assert saved["txt2img/Sampling steps/step"] == 1
    assert saved["txt2img/Sampling method/value"] == "Euler a"
    assert saved["txt2img/Hires. fix/visible"] is True
    assert not any(key.startswith("txt2img/internal") for key in saved)


def test_edited_values_are_applied_and_kept(tmp_path):
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"txt2img/Sampling steps/value": 7, "txt2img/Sampling steps/maximum": 99,
                                "txt2img/Prompt/value": "a house", "txt2img/Sampling method/value": "DDIM",
                                "txt2img/Hires. fix/visible": False}))
    config = UiConfig(path)
    prompt, steps, sampler, hires = build(config)
    assert (steps.value, steps.maximum, prompt.value, sampler.value) == (7, 99, "a house", "DDIM")
    assert hires.visible is False
    config.write_missing()
    saved = json.loads(path.read_text())
    assert saved["txt2img/Sampling steps/value"] == 7 and saved["txt2img/Sampling steps/minimum"] == 1


@pytest.mark.parametrize("key, bad", [("txt2img/Sampling method/value", "No such sampler"),
                                      ("txt2img/Sampling steps/value", "seven"),
                                      ("txt2img/Hires. fix/value", "yes"),
                                      ("txt2img/Sampling steps/step", 0)])
def test_invalid_values_are_ignored(tmp_path, key, bad):
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({key: bad}))
    _, steps, sampler, hires = build(UiConfig(path))
    assert (steps.value, steps.step, sampler.value, hires.value) == (20, 1, "Euler a", False)


def test_a_broken_file_is_reported_and_left_alone(tmp_path):
    path = tmp_path / "ui-config.json"
    path.write_text("{not json")
    config = UiConfig(path)
    _, steps, _, _ = build(config)
    config.write_missing()
    config.apply_changes(["", 9, "Euler a", False])
    assert steps.value == 20 and config.error and "could not be read" in config.error
    assert path.read_text() == "{not json"


def test_changes_list_differences_and_apply_saves_them(tmp_path):
    path = tmp_path / "ui-config.json"
    config = UiConfig(path)
    build(config)
    config.write_missing()
    current = ["", 20, "Euler a", False]
    assert config.changes(current) == []
    current = ["a lighthouse", 12, "DDIM", False]
    assert config.changes(current) == [("txt2img/Prompt/value", "", "a lighthouse"),
                                       ("txt2img/Sampling steps/value", 20, 12),
                                       ("txt2img/Sampling method/value", "Euler a", "DDIM")]
    config.apply_changes(current)
    saved = json.loads(path.read_text())
    assert (saved["txt2img/Prompt/value"], saved["txt2img/Sampling steps/value"]) == ("a lighthouse", 12)
    assert config.changes(current) == []
    restarted = UiConfig(path)
    prompt, steps, sampler, _ = build(restarted)
    assert (prompt.value, steps.value, sampler.value) == ("a lighthouse", 12, "DDIM")

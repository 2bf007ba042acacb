"""The extension system through the normal discovery path: the third-party-style test extension (tab, setting,
hook, infotext field, HTTP route, page assets), broken extensions, AUTOMATIC1111 extensions (recognised, not run),
enable/disable, and the scripts API's errors."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from modules.app_state import create_state
from modules.cmd_args import REPO_ROOT, parse_command_line
from modules.extensions import load_extensions, ui_assets
from modules.image_io import read_infotext
from modules.infotext import parse_infotext
from modules.processing.params import Txt2ImgParams
from modules.scripts import run_generation, scripts_for, submit
from tests.engine_fixtures import make_state

TEST_EXTENSIONS = REPO_ROOT / "tests" / "extensions"

A1111_SCRIPT = (  # the usual shape of an A1111 script; none of it exists here under these names
    "import gradio as gr\n"
    "import modules.scripts as scripts\n"
    "from modules import script_callbacks, shared\n"
    "from modules.processing import process_images\n\n\n"
    "class Script(scripts.Script):\n"
    "    def title(self):\n        return 'A1111 style'\n\n"
    "    def show(self, is_img2img):\n        return scripts.AlwaysVisible\n\n"
    "    def ui(self, is_img2img):\n        return [gr.Checkbox(label='Enable')]\n\n"
    "    def process(self, p, enable):\n        if enable and shared.opts.data:\n            process_images(p)\n\n\n"
    "script_callbacks.on_ui_tabs(lambda: [])\n")
A1111_INSTALL = ("open('install-ran', 'w').close()  # a marker: this file must never run here\n"
                 "import launch\n\nif not launch.is_installed('x'):\n    launch.run_pip('install x', 'x')\n")
A1111_REASON = ("A1111 extension: not supported — needs launch, modules.processing.process_images, "
                "modules.script_callbacks, modules.scripts.AlwaysVisible, modules.shared")

BROKEN = {
    "a1111-style/scripts/a1111_style.py": A1111_SCRIPT,
    "a1111-style/install.py": A1111_INSTALL,
    "a1111-style/javascript/a1111.js": "window.a1111Loaded = true;\n",
    "a1111-ui-only/scripts/panel.py": ("import modules.scripts as scripts\n\n\nclass Script(scripts.Script):\n"
                                       "    def ui(self, is_img2img):\n        return []\n"),
    "declared-ours/extension.toml": 'name = "declared-ours"\n',
    "declared-ours/scripts/shared.py": "import modules.shared\n",
    "broken-import/scripts/broken.py": "import module_that_does_not_exist_anywhere\n",
    "needs-missing/extension.toml": 'name = "needs-missing"\nrequires = ["not-installed"]\n',
    "needs-missing/scripts/fine.py": "",
    "bad-install/install.py": "import sys\nprint('cannot install the requirements')\nsys.exit(3)\n",
    "bad-install/scripts/fine.py": "",
    "cycle-a/extension.toml": 'load_after = ["cycle-b"]\n',
    "cycle-a/scripts/fine.py": "",
    "cycle-b/extension.toml": 'load_after = ["cycle-a"]\n',
    "cycle-b/scripts/fine.py": "",
    "save-watcher/scripts/watch.py": (
        "SEEN = []\n\n"
        "def register(api):\n"
        "    def before(event):\n"
        "        event.infotext += ', Watched: yes'\n"
        "    api.on_before_image_saved(before)\n"
        "    api.on_image_saved(lambda saved: SEEN.append((saved.path, saved.infotext)))\n"),
    "bad-hook/scripts/hook.py": (
        "from modules.hooks import HookPoint\n\n"
        "def register(api):\n"
        "    def explode(event):\n"
        "        raise RuntimeError('boom')\n"
        "    api.add_hook(HookPoint.AFTER_CFG, explode)\n"),
}


def _write_broken(root: Path, files: dict[str, str] = BROKEN) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext")
    state = make_state(root, {"tiny": "sd1"})
    state.settings.update({"samples_save": False})
    load_extensions(state, [REPO_ROOT / "extensions", TEST_EXTENSIONS, _write_broken(root / "user-extensions")])
    return state


def _params() -> Txt2ImgParams:
    return Txt2ImgParams(prompt="a green square", seed=7, steps=2, width=64, height=64, sampler_name="Euler")


def test_good_extensions_load_in_order_and_broken_ones_are_skipped_with_a_reason(state):
    items = {e.name: e for e in state.extensions.items}
    loaded = [e.name for e in state.extensions.items if e.loaded]
    assert loaded.index("hires-fix") < loaded.index("test-extension") < loaded.index("xyz-plot")
    assert "bad-hook" in loaded and "save-watcher" in loaded
    expected = {
        "broken-import": "ModuleNotFoundError",
        "needs-missing": "requires not-installed",
        "bad-install": "install.py failed (exit 3)",
        "cycle-a": "load order cycle",
        "cycle-b": "load order cycle",
        "declared-ours": "ModuleNotFoundError: No module named 'modules.shared'",  # extension.toml: one of ours
    }
    for name, reason in expected.items():
        assert not items[name].loaded
        assert any(reason in error for error in items[name].errors), items[name].errors
    assert {s.title for s in state.extensions.scripts} == {
        "Hires fix", "X/Y/Z plot", "ControlNet", "SD upscale", "Soft Inpainting", "Prompt matrix",
        "Prompts from file or textbox", "Loopback", "Outpainting mk2", "Poor man's outpainting"}


def test_a1111_extensions_are_named_as_such_and_none_of_their_code_runs(state):
    items = {e.name: e for e in state.extensions.items}
    assert items["a1111-style"].errors == [A1111_REASON]
    assert items["a1111-ui-only"].errors == [
        "A1111 extension: not supported — its scripts use A1111's ui(self, is_img2img)"]
    assert not items["a1111-style"].loaded and not items["a1111-ui-only"].loaded
    assert not (items["a1111-style"].path / "install-ran").exists()
    assert not [m for m in sys.modules if m.startswith(("sdwebui_ext.a1111_style", "sdwebui_ext.a1111_ui_only"))]
    assert "a1111Loaded" not in ui_assets(state)[0]
    assert not any("A1111" in e for e in items["broken-import"].errors)  # no extension.toml, but nothing of A1111's


def test_a1111_extension_is_reported_in_one_log_line_without_a_traceback(tmp_path, caplog):
    root = _write_broken(tmp_path / "extensions", {k: v for k, v in BROKEN.items() if k.startswith("a1111-style/")})
    args = ["--data-dir", str(tmp_path / "data"), "--ckpt-dir", str(tmp_path), "--device", "cpu", "--precision", "full"]
    fresh = create_state(parse_command_line(args).options)
    with caplog.at_level(logging.INFO, logger="modules.extensions"):
        load_extensions(fresh, [root])
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records] == [
        ("ERROR", f"extension 'a1111-style' skipped: {A1111_REASON}", None)]


def test_setting_drives_a_hook_that_visibly_changes_the_output_and_adds_an_infotext_field(state):
    plain = run_generation(state, _params())
    state.extensions.set_options({"test_extension_fade": 0.9})
    saving = _params()
    saving.override_settings = {"samples_save": True}
    try:
        faded = submit(state, saving).wait(timeout=300)
    finally:
        state.extensions.set_options({"test_extension_fade": 0.0})
    difference = np.abs(np.asarray(plain.images[0], dtype=np.float32) - np.asarray(faded.images[0], dtype=np.float32))
    assert difference.mean() > 10
    assert parse_infotext(faded.infotexts[0])["Test extension fade"] == "0.9"
    assert "Test extension fade" not in parse_infotext(plain.infotexts[0])
    # a hook that raises is reported with its extension's name and the job still finishes
    assert any("extension 'bad-hook'" in w and "boom" in w for w in faded.warnings)
    # before/after image saved callbacks: the text can be changed before saving, the saved file is announced
    assert faded.infotexts[0].endswith("Watched: yes")
    (path,) = faded.paths
    assert sys.modules["sdwebui_ext.save_watcher.watch"].SEEN == [(path, faded.infotexts[0])]
    assert read_infotext(Image.open(path)) == faded.infotexts[0]


def test_setting_is_declared_validated_and_persisted(state):
    (section,) = [s for s in state.extensions.settings_sections() if s.extension == "test-extension"]
    assert [c.name for c in section.controls] == ["test_extension_fade"]
    state.extensions.set_options({"test_extension_fade": 0.25})
    try:
        assert json.loads(state.options.config_path.read_text())["test_extension_fade"] == 0.25
        assert state.extensions.option("test_extension_fade") == 0.25
        with pytest.raises(ValueError, match="above"):
            state.extensions.set_options({"test_extension_fade": 3})
        with pytest.raises(ValueError, match="unknown extension setting"):
            state.extensions.set_options({"no_such_setting": 1})
    finally:
        state.extensions.set_options({"test_extension_fade": 0.0})


def test_tab_and_page_assets(state):
    (tab,) = [t for t in state.extensions.ui_tabs() if t.elem_id == "test_extension_tab"]
    assert tab.title == "Test extension" and "test-extension" in tab.markdown
    assert tab.action({"name": "Ann"}) == "Hello, Ann!"
    js, css = ui_assets(state)
    assert "window.testExtensionLoaded = true" in js
    assert "#test_extension_tab" in css


def test_route_added_in_app_started_is_served(state):
    app = FastAPI()
    state.extensions.app_started(app)
    response = TestClient(app).get("/test-extension/status")
    assert response.status_code == 200
    body = response.json()
    assert body["extension"] == "test-extension" and body["fade"] == 0.0
    assert body["models_loaded"] == ["SD1"]  # the model_loaded callback saw the checkpoint loaded before start


def test_infotext_pasted_callback_can_add_fields(state):
    text = "a cat\nSteps: 2, Sampler: Euler, Seed: 1, Test extension fade: 0.4"
    fields = state.extensions.infotext_pasted(text, parse_infotext(text))
    assert fields["test_extension_fade"] == 0.4


def test_disabling_is_persisted_and_honoured_at_the_next_start(state, tmp_path):
    state.extensions.set_enabled("test-extension", False)
    try:
        assert json.loads(state.options.config_path.read_text())["disabled_extensions"] == ["test-extension"]
        args = ["--data-dir", str(state.options.data_dir), "--ckpt-dir", str(tmp_path), "--device", "cpu",
                "--precision", "full", "--skip-install"]
        fresh = create_state(parse_command_line(args).options)
        load_extensions(fresh, [REPO_ROOT / "extensions", TEST_EXTENSIONS])
        item = fresh.extensions.get("test-extension")
        assert not item.enabled and not item.loaded
        # its tab only: a browser test may be installing another extension into the same folder meanwhile
        assert [t for t in fresh.extensions.ui_tabs() if t.elem_id == "test_extension_tab"] == []
        assert ui_assets(fresh) == ("", "")
        assert fresh.extensions.get("hires-fix").loaded
    finally:
        state.extensions.set_enabled("test-extension", True)
    assert "test-extension" not in json.loads(state.options.config_path.read_text())["disabled_extensions"]


def test_script_selection_errors_name_the_field(state):
    assert sorted(s.title for s in scripts_for(state, "img2img")) == [  # no hires fix
        "ControlNet", "Loopback", "Outpainting mk2", "Poor man's outpainting", "Prompt matrix",
        "Prompts from file or textbox", "SD upscale", "Soft Inpainting", "X/Y/Z plot"]
    with pytest.raises(ValueError, match="^script_name: unknown script 'Img2img alternative test'"):
        run_generation(state, _params(), script_name="Img2img alternative test")
    with pytest.raises(ValueError, match="^alwayson_scripts: unknown script"):
        run_generation(state, _params(), alwayson={"ADetailer": {"args": []}})
    with pytest.raises(ValueError, match="positional"):
        run_generation(state, _params(), alwayson={"Hires fix": {"args": [True] * 20}})

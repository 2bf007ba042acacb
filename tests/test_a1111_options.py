"""A1111 options this project does not implement: kept in config.json with A1111's types, read back after a
restart, never mixed into the implemented settings. (The HTTP round trip is in tests/test_a1111_flags.py.)"""
from __future__ import annotations

import json

import pytest

from modules import a1111_options
from modules.settings import Settings, SettingsStore


def test_unimplemented_a1111_options_are_kept_with_their_types(tmp_path):
    path = tmp_path / "config.json"
    store = SettingsStore(path)
    assert store.store_unimplemented({"send_seed": False, "hires_fix_refiner_pass": "both passes",
                                      "hide_samplers": ["DDIM"]}) == ["hide_samplers", "hires_fix_refiner_pass",
                                                                      "send_seed"]
    for key, value in (("send_seed", "no"), ("jpeg_quality", True), ("hide_samplers", "DDIM"), ("font", 3)):
        with pytest.raises(ValueError, match=key):
            store.store_unimplemented({key: value, "save_mask": True})
    reopened = SettingsStore(path)  # as after a restart
    assert reopened.extra == {"send_seed": False, "hires_fix_refiner_pass": "both passes", "hide_samplers": ["DDIM"]}
    assert reopened.current == Settings()
    assert json.loads(path.read_text(encoding="utf-8"))["samples_format"] == "png"


def test_the_table_holds_a1111_defaults_of_every_implemented_setting():
    own = {name for name in Settings().to_dict() if name.startswith("limit_")} | {"vae_tile_threshold"}  # no A1111 key
    implemented = set(Settings().to_dict()) - own
    assert implemented <= a1111_options.DEFAULTS.keys()
    assert a1111_options.DEFAULTS["send_seed"] is True and a1111_options.DEFAULTS["show_progress_type"] == "Approx NN"

"""The Paths and User interface settings (modules/settings.py): output folders and the quick settings list."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules.settings import Settings, SettingsStore


def test_output_dirs_default_to_the_data_folder():
    s, data = Settings(), Path("/data")
    assert s.output_dir("txt2img", data) == data / "outputs" / "txt2img-images"
    assert s.output_dir("img2img-grids", data) == data / "outputs" / "img2img-grids"
    assert s.output_dir("save", data) == data / "outputs" / "saved"


def test_output_dirs_follow_the_paths_settings():
    data = Path("/data")
    s = Settings(outdir_txt2img_samples="/pictures/t2i", outdir_img2img_grids="grids/i2i", outdir_save="mine")
    assert s.output_dir("txt2img", data) == Path("/pictures/t2i")
    assert s.output_dir("img2img-grids", data) == data / "grids" / "i2i"  # relative: below the data folder
    assert s.output_dir("save", data) == data / "mine"
    assert s.output_dir("img2img", data) == data / "outputs" / "img2img-images"
    common = Settings(outdir_samples="/all", outdir_txt2img_samples="/ignored", outdir_grids="/grids")
    assert common.output_dir("txt2img", data) == Path("/all")  # the common folder wins, as in A1111
    assert common.output_dir("img2img-grids", data) == Path("/grids")
    assert common.output_dir("extras", data) == Path("/all")
    with pytest.raises(ValueError, match="unknown output kind"):
        s.output_dir("extras-grids", data)


def test_quicksettings_list_is_validated_and_persisted(tmp_path):
    store = SettingsStore(tmp_path / "config.json")
    assert store.current.quicksettings_list == ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")
    store.update({"quicksettings_list": ["sd_model_checkpoint", "emphasis"]})
    assert json.loads((tmp_path / "config.json").read_text())["quicksettings_list"] == ["sd_model_checkpoint",
                                                                                         "emphasis"]
    assert SettingsStore(tmp_path / "config.json").current.quicksettings_list == ("sd_model_checkpoint", "emphasis")
    assert store.current.with_overrides({"quicksettings_list": "sd_vae, emphasis"}).quicksettings_list == (
        "sd_vae", "emphasis")  # A1111's older comma-separated form
    with pytest.raises(ValueError, match="a list of names"):
        store.update({"quicksettings_list": [1, 2]})

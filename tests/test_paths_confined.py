"""Output folders named by clients stay inside the data folder or a root given with --allowed-output-roots; a folder
that is a file is refused (400), never a 500; the owner's own config.json is trusted."""
from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from modules.output_folders import OutputFolderError, check_folder, make_folder
from modules.processing.outputs import dated_folder
from modules.settings import SettingsStore
from tests.api_server import running_server

SMALL = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 1}


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # "~" is outside the data folder
    (tmp_path / "data").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "data"


@pytest.mark.parametrize("value", ["", "mine", "mine/../also-mine", "{data}/absolute", "~/../data/via-home"])
def test_folders_inside_the_data_folder_are_allowed(data, value):
    check_folder("outdir_samples", value.format(data=data), data)


@pytest.mark.parametrize("value", ["/any/path", "../..", "..", "~", "~root", "{data}/../outside", "{data}2"])
def test_folders_outside_are_refused_naming_the_setting(data, value):
    with pytest.raises(ValueError, match=r"setting 'outdir_grids': .* must be inside the data folder .*"
                                         r"--allowed-output-roots"):
        check_folder("outdir_grids", value.format(data=data), data)


def test_a_value_that_is_no_path_is_refused_naming_the_setting(data):
    with pytest.raises(ValueError, match="setting 'outdir_save': .* is not a usable folder"):
        check_folder("outdir_save", "mine\0", data)


def test_symlinks_are_resolved_before_the_check(data):
    (data / "escape").symlink_to(data.parent / "outside")
    (data / "inner").symlink_to(data / "real", target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        check_folder("outdir_save", "escape/pictures", data)
    check_folder("outdir_save", "inner/pictures", data)


def test_a_root_given_on_the_command_line_is_allowed_and_only_it(data):
    root = data.parent / "outside"
    check_folder("outdir_samples", str(root / "shots"), data, [root])
    with pytest.raises(ValueError, match="must be inside"):
        check_folder("outdir_samples", f"{root}-twin/shots", data, [root])  # a name sharing the root's prefix


@pytest.mark.parametrize("value", ["a-file", "a-file/below"])
def test_a_file_is_refused_as_a_folder(data, value):
    (data / "a-file").write_text("not a folder")
    with pytest.raises(ValueError, match=r"setting 'outdir_samples': .* is a file"):
        check_folder("outdir_samples", value, data)


def test_a_folder_that_cannot_be_made_says_why_not_a_traceback(data):
    (data / "outputs").write_text("a file where the folder should be")
    with pytest.raises(OutputFolderError, match=r"output folder: cannot create .*outputs is a file"):
        dated_folder(data / "outputs" / "txt2img-images")
    make_folder(data / "fine" / "deeper")
    assert (data / "fine" / "deeper").is_dir()


def test_config_json_is_trusted_but_client_values_are_confined_and_never_saved(data):
    config = data / "config.json"
    config.write_text(json.dumps({"outdir_samples": "/mnt/owners-disk"}))
    store = SettingsStore(config)
    assert store.current.outdir_samples == "/mnt/owners-disk"
    store.update({"outdir_samples": "/mnt/owners-disk", "CLIP_stop_at_last_layers": 2})  # a client posts it back
    with pytest.raises(ValueError, match="setting 'outdir_save'"):
        store.update({"outdir_save": "/elsewhere", "CLIP_stop_at_last_layers": 3})
    saved = json.loads(config.read_text())
    assert saved["outdir_save"] == "" and saved["CLIP_stop_at_last_layers"] == 2  # nothing of the refused update
    assert store.current.outdir_save == "" and store.current.CLIP_stop_at_last_layers == 2


# --- through the HTTP API ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    (root / "outside").mkdir()
    with running_server(root, "--allowed-output-roots", str(root / "extra")) as url:
        yield root, url


@pytest.fixture
def http(server):
    with httpx.Client(base_url=f"{server[1]}/sdapi/v1", timeout=120) as client:
        yield client


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.png"))


@pytest.mark.parametrize("value", ["/any/path", "../..", "~", "escape/x", "a-file", "{outside}/made"])
def test_options_refuse_folders_outside_with_a_400_naming_the_setting(server, http, value):
    root, _ = server
    data = root / "data"
    if not (data / "escape").is_symlink():
        (data / "escape").symlink_to(root / "outside")
    (data / "a-file").write_text("not a folder")
    answer = http.post("/options", json={"outdir_samples": value.format(outside=root / "outside")})
    assert answer.status_code == 400, answer.text
    assert "setting 'outdir_samples'" in answer.json()["detail"]
    assert http.get("/options").json()["outdir_samples"] == ""
    assert json.loads((data / "config.json").read_text()).get("outdir_samples", "") == ""
    saved = http.post("/txt2img", json={**SMALL, "save_images": True})
    assert saved.status_code == 200, saved.text
    assert not (root / "outside" / "made").exists() and not (root / "outside" / "x").exists()
    assert not Path("/any/path").exists()


def test_override_settings_outside_are_refused_and_nothing_is_written(server, http):
    root, _ = server
    target = root / "outside" / "by-override"
    answer = http.post("/txt2img", json={**SMALL, "save_images": True,
                                         "override_settings": {"outdir_txt2img_samples": str(target)}})
    assert answer.status_code == 400, answer.text
    assert "setting 'outdir_txt2img_samples'" in answer.json()["detail"]
    assert not target.exists()


def test_an_allowed_subfolder_and_a_flagged_root_get_the_images(server, http):
    root, _ = server
    assert http.post("/options", json={"outdir_txt2img_samples": "mine"}).status_code == 200
    try:
        assert http.post("/txt2img", json={**SMALL, "save_images": True}).status_code == 200
        assert len(pngs(root / "data" / "mine")) == 1
        shots = root / "extra" / "shots"
        answer = http.post("/txt2img", json={**SMALL, "save_images": True,
                                             "override_settings": {"outdir_txt2img_samples": str(shots)}})
        assert answer.status_code == 200, answer.text
        assert len(pngs(shots)) == 1 and len(pngs(root / "data" / "mine")) == 1
    finally:
        http.post("/options", json={"outdir_txt2img_samples": ""})


def test_a_folder_that_became_a_file_fails_the_job_with_a_400_not_a_500(server, http):
    root, _ = server
    assert http.post("/options", json={"outdir_txt2img_samples": "later-a-file"}).status_code == 200
    (root / "data" / "later-a-file").write_text("the owner put a file here")
    try:
        answer = http.post("/txt2img", json={**SMALL, "save_images": True})
        assert answer.status_code == 400, answer.text
        assert "later-a-file is a file" in answer.json()["detail"]
    finally:
        http.post("/options", json={"outdir_txt2img_samples": ""})
    assert os.path.isfile(root / "data" / "later-a-file")

"""Settings are never lost: a config.json that does not parse is moved aside (and said so), an invalid value drops
only its own key, and caches that do not parse are rebuilt, at start of the store and of the real server."""
from __future__ import annotations

import json

import pytest

from modules.hashing import HashCache
from modules.settings import SettingsStore
from tests.browser_support import browser, chromium_path, watched_page  # noqa: F401 - fixtures
from tests.webui_server import running_server

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.mark.parametrize("text", ['{"CLIP_stop_at_last_layers": 2, "samples_format": "pn', "[]", "null", "5"])
def test_a_config_that_does_not_parse_is_moved_aside_not_overwritten(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    store = SettingsStore(path)
    assert store.current.CLIP_stop_at_last_layers == 1  # defaults
    kept = list(tmp_path.glob("config.json.broken-*"))
    assert len(kept) == 1 and kept[0].read_text() == text  # the user's file, byte for byte
    assert len(store.notices) == 1 and kept[0].name in store.notices[0]
    store.update({"CLIP_stop_at_last_layers": 3})  # a later Apply writes a new file beside the kept one
    assert kept[0].read_text() == text and json.loads(path.read_text())["CLIP_stop_at_last_layers"] == 3


def test_an_invalid_value_drops_only_its_own_key(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"CLIP_stop_at_last_layers": 2, "samples_format": "bmp-ish", "eta_ddim": "x",
                                "outdir_samples": "mine", "an_extension_option": [1, 2]}))
    store = SettingsStore(path)
    assert store.current.CLIP_stop_at_last_layers == 2 and store.current.outdir_samples == "mine"
    assert store.current.samples_format == SettingsStore(tmp_path / "none.json").current.samples_format
    assert [n.split(":")[1].split()[1] for n in store.notices] == ["'samples_format'", "'eta_ddim'"]
    assert store.extra == {"an_extension_option": [1, 2]}
    assert not list(tmp_path.glob("config.json.broken-*"))


@pytest.mark.parametrize("text", ["[1,2]", "{broken", '{"sha256:/x": 5}', "7"])
def test_a_hash_cache_that_does_not_parse_is_rebuilt(tmp_path, text):
    (tmp_path / "hashes.json").write_text(text)
    target = tmp_path / "model.bin"
    target.write_bytes(b"weights")
    cache = HashCache(tmp_path / "hashes.json")
    assert len(cache.get(target)) == 64
    assert list(json.loads((tmp_path / "hashes.json").read_text())) == [f"sha256:{target.resolve()}"]


def test_the_server_starts_on_broken_files_and_the_page_says_what_was_kept(browser, tmp_path):  # noqa: F811
    broken = '{"CLIP_stop_at_last_layers": 2, "samples_for'
    with running_server(tmp_path, data_files={"config.json": broken}) as server:
        with watched_page(browser, server.url) as page:
            page.wait_for_selector("#sd_status .sd-settings-notice")
            notice = page.inner_text("#sd_status .sd-settings-notice")
            assert "config.json.broken-" in notice and "default settings" in notice
        kept = list(server.data_dir.glob("config.json.broken-*"))
        assert len(kept) == 1 and kept[0].read_text() == broken
        assert "could not be read" in server.log() and "Traceback" not in server.log()


def test_the_server_starts_on_a_hash_cache_of_another_shape(tmp_path):
    with running_server(tmp_path, data_files={"cache/hashes.json": "[1,2]"}) as server:
        assert "Traceback" not in server.log()

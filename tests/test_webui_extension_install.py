"""Installing an extension from a git URL (webui/extension_install.py) with real git and local repositories, and
what the real server says about an AUTOMATIC1111 extension (installed through its UI or found at start-up)."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from modules.cmd_args import ServerOptions
from tests.webui_server import REPO, running_server
from webui.extension_install import InstallError, install, install_refusal, name_from_url

EXTENSIONS_DIR = REPO / "extensions"  # where the real server looks (the test's folders are removed afterwards)
HELLO = {"scripts/hello.py": "def register(api):\n    pass\n"}
A1111_STYLE = {  # an extension in AUTOMATIC1111's format: no extension.toml, its modules and Script API
    "scripts/a1111_style.py": (
        "import gradio as gr\n"
        "from modules import script_callbacks, scripts, shared\n"
        "from modules.shared import opts\n\n\n"
        "class Script(scripts.Script):\n"
        "    def title(self):\n        return 'A1111 style'\n\n"
        "    def show(self, is_img2img):\n        return scripts.AlwaysVisible\n\n"
        "    def ui(self, is_img2img):\n        return [gr.Checkbox(label='Enable', value=opts.a1111_style)]\n\n\n"
        "script_callbacks.on_ui_settings(lambda: shared.opts.add_option('a1111_style', None))\n"),
    "install.py": "import launch\n\nif not launch.is_installed('x'):\n    launch.run_pip('install x', 'x')\n",
    "javascript/a1111_style.js": "window.a1111Style = true;\n",
}
A1111_REASON = ("A1111 extension: not supported — needs launch, modules.script_callbacks, "
                "modules.scripts.AlwaysVisible, modules.shared")


def make_repo(folder: Path, files: dict[str, str] = HELLO) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-C", str(folder)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "first"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    return folder


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "sd-hello.git")


def test_clones_a_local_repository_under_the_name_from_the_url(repo, tmp_path):
    extensions = tmp_path / "extensions"
    path = install(str(repo), extensions)
    assert path == (extensions / "sd-hello").resolve()
    assert (path / "scripts" / "hello.py").read_text() == "def register(api):\n    pass\n"
    assert (path / ".git").is_dir()
    assert [p.name for p in extensions.iterdir()] == ["sd-hello"]  # no staging folder left behind


def test_file_url_and_chosen_name(repo, tmp_path):
    path = install(f"file://{repo}", tmp_path / "extensions", name="my-ext")
    assert path.name == "my-ext" and (path / "scripts").is_dir()


def test_existing_folder_is_never_overwritten(repo, tmp_path):
    extensions = tmp_path / "extensions"
    (extensions / "sd-hello").mkdir(parents=True)
    (extensions / "sd-hello" / "mine.txt").write_text("keep")
    with pytest.raises(InstallError, match="already exists"):
        install(str(repo), extensions)
    assert (extensions / "sd-hello" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("name", ["..", "../outside", "a/b", ".hidden", "-option", "with space"])
def test_names_that_would_leave_the_folder_or_look_odd_are_refused(repo, tmp_path, name):
    with pytest.raises(InstallError, match="Invalid extension folder name"):
        install(str(repo), tmp_path / "extensions", name=name)
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("url", ["", "ext::sh -c touch% /tmp/pwned", "--upload-pack=touch /tmp/x", "relative/path"])
def test_urls_git_would_treat_as_commands_or_options_are_refused(tmp_path, url):
    with pytest.raises(InstallError):
        install(url, tmp_path / "extensions", name="x")
    assert not (tmp_path / "extensions" / "x").exists()


def test_failed_clone_says_so_and_leaves_nothing(tmp_path):
    extensions = tmp_path / "extensions"
    with pytest.raises(InstallError, match="git clone failed") as failure:
        install(str(tmp_path / "missing-repo"), extensions)
    assert "network" in str(failure.value)
    assert list(extensions.iterdir()) == []


def test_missing_git_is_reported(repo, tmp_path):
    with pytest.raises(InstallError, match="git is not installed"):
        install(str(repo), tmp_path / "extensions", git="no-such-git-program")


def test_name_from_url():
    assert name_from_url("https://github.com/someone/sd-ext.git") == "sd-ext"
    assert name_from_url("https://example.org/a/b/tool/") == "tool"
    assert name_from_url("git@github.com:someone/other.git") == "other"
    assert name_from_url("/srv/repos/local-ext") == "local-ext"


def test_install_allowed_only_locally_or_with_the_flag():
    assert install_refusal(ServerOptions()) is None
    assert "--enable-insecure-extension-access" in install_refusal(ServerOptions(listen=True))
    assert install_refusal(ServerOptions(server_name="192.168.1.5")) is not None
    assert install_refusal(ServerOptions(share=True)) is not None
    assert install_refusal(ServerOptions(listen=True, enable_insecure_extension_access=True)) is None


def click_install(url: str, repository: str, folder: str) -> str:
    """What the Install button's handler answers (the HTML shown under it), through Gradio's HTTP API."""
    request = urllib.request.Request(f"{url}/gradio_api/call/do_install", data=json.dumps(
        {"data": [repository, folder]}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{url}/gradio_api/call/do_install/{event}", timeout=120) as response:
        stream = response.read().decode()
    (data,) = re.findall(r"^event: complete\ndata: (.*)$", stream, re.M)
    return json.loads(data)[0]


def extension_rows(url: str) -> dict[str, list[str]]:
    """The Extensions tab's table as the page gets it: extension name -> its cells (the last is Errors)."""
    with urllib.request.urlopen(url + "/config", timeout=30) as response:
        components = json.load(response)["components"]
    (table,) = [c["props"]["value"] for c in components if c.get("props", {}).get("elem_id") == "extensions_table"]
    rows = [[html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table)]
    return {cells[0]: cells for cells in rows if cells}


def test_real_server_names_an_a1111_extension_in_the_install_message_tab_and_one_log_line(tmp_path):
    """One A1111 extension and one of ours are in extensions/ at start-up; both are installed again through the UI's
    Install handler. The A1111 one is reported by what it needs and not loaded; ours loads; the server runs on."""
    a1111, hello = make_repo(tmp_path / "sd-webui-a1111-style", A1111_STYLE), make_repo(tmp_path / "sd-hello.git")
    names = {kind: f"test-{kind}-{os.getpid()}" for kind in ("a1111", "hello", "a1111-ui", "hello-ui")}
    try:
        install(str(a1111), EXTENSIONS_DIR, names["a1111"])
        install(str(hello), EXTENSIONS_DIR, names["hello"])
        with running_server(tmp_path) as server:
            answer = click_install(server.url, f"file://{a1111}", names["a1111-ui"])
            installed = click_install(server.url, str(hello), names["hello-ui"])
            rows = extension_rows(server.url)
            with urllib.request.urlopen(server.url + "/", timeout=30) as response:
                page = response.read().decode()
            assert server.process.poll() is None
            log = server.log()
    finally:
        for name in names.values():
            shutil.rmtree(EXTENSIONS_DIR / name, ignore_errors=True)
    assert answer == (f"<div class='sd-error'>Cloned into {EXTENSIONS_DIR / names['a1111-ui']}, but it will not be "
                      f"loaded: {A1111_REASON}. Delete that folder to remove it.</div>")
    assert installed.startswith(f"<div class='sd-ok'>Installed into {EXTENSIONS_DIR / names['hello-ui']}.")
    assert rows[names["a1111"]][-1] == A1111_REASON
    assert rows[names["hello"]][-1] == ""
    assert [line.split(": ", 1)[1] for line in log.splitlines() if names["a1111"] in line] == [
        f"extension '{names['a1111']}' skipped: {A1111_REASON}"]
    assert re.search(rf"extension {names['hello']} +loaded", log)
    assert "Traceback" not in log
    assert "window.a1111Style" not in page  # its javascript/ is not put into the page

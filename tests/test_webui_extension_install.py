"""Installing an extension from a git URL (webui/extension_install.py) with real git and local repositories."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from modules.cmd_args import ServerOptions
from webui.extension_install import InstallError, install, install_refusal, name_from_url


def make_repo(folder: Path) -> Path:
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "hello.py").write_text("def register(api):\n    pass\n")
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

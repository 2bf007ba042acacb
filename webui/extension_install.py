"""Installing an extension from a git URL: ``git clone`` into ``extensions/<name>`` (loaded at the next start).

Allowed only when the server is reachable from this computer alone, or with ``--enable-insecure-extension-access``
(an extension is code that runs in the server). The clone goes to a hidden temporary folder first and is renamed
when complete, so a failed clone leaves nothing behind; an existing folder is never overwritten.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

CLONE_TIMEOUT_S = 300
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
URL_SCHEMES = ("https", "http", "git", "ssh", "file")
SCP_LIKE = re.compile(r"[\w.-]+@[\w.-]+:[\w./~-]+")  # git@host:owner/repo.git
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class InstallError(RuntimeError):
    """The extension could not be installed; the message says why, for the user."""


def install_refusal(server) -> str | None:
    """Why installing from the UI is not allowed on this server (``ServerOptions``), or None when it is."""
    if server.enable_insecure_extension_access or (server.host in LOCAL_HOSTS and not server.share):
        return None
    return ("Installing extensions is disabled because the server is reachable from other machines "
            "(--listen, --share or --server-name). Start it with --enable-insecure-extension-access to allow it.")


def check_url(url: str) -> str:
    """The URL, stripped; InstallError unless it is an http(s)/git/ssh/file URL, ``user@host:path`` or an absolute
    local path (no option-like or ``ext::`` URLs that would make git run commands)."""
    url = (url or "").strip()
    if not url:
        raise InstallError("Enter the URL of the extension's git repository")
    scheme = urlsplit(url).scheme.lower()
    if scheme in URL_SCHEMES or SCP_LIKE.fullmatch(url) or (not scheme and Path(url).is_absolute()):
        return url
    raise InstallError(f"Not a git repository URL: {url!r} (use https://…, git://…, ssh://…, file://… or an "
                       "absolute path)")


def name_from_url(url: str) -> str:
    """The folder name a URL suggests: its last path part without ``.git``."""
    path = urlsplit(url).path if "://" in url else url.rsplit(":", 1)[-1]
    last = path.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return last[:-4] if last.lower().endswith(".git") else last


def target_folder(extensions_dir: Path, name: str) -> Path:
    """``extensions_dir/name``; InstallError for a name that is not a plain folder name or a folder that exists."""
    if not NAME_PATTERN.fullmatch(name or "") or name in (".", ".."):
        raise InstallError(f"Invalid extension folder name {name!r}: use letters, digits, '.', '_' and '-' "
                           "(starting with a letter or digit)")
    root = Path(extensions_dir).resolve()
    target = (root / name).resolve()
    if target.parent != root:
        raise InstallError(f"Invalid extension folder name {name!r}")
    if target.exists():
        raise InstallError(f"extensions/{name} already exists; remove it first or choose another folder name")
    return target


def install(url: str, extensions_dir: Path, name: str = "", git: str = "git") -> Path:
    """Clone ``url`` into ``extensions_dir/<name>`` (default name from the URL) and return the new folder.

    InstallError with a message for the user when git is missing, the clone fails, or the name/folder is bad."""
    url = check_url(url)
    target = target_folder(extensions_dir, (name or "").strip() or name_from_url(url))
    executable = shutil.which(git)
    if executable is None:
        raise InstallError("git is not installed (or not on PATH); install git to add extensions from a URL, "
                           f"or put the extension's folder into {Path(extensions_dir)} yourself")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".installing-{target.name}-", dir=target.parent))
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": ""}
    try:
        try:
            done = subprocess.run([executable, "clone", "--quiet", "--", url, str(staging / "repo")], env=env,
                                  capture_output=True, text=True, timeout=CLONE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise InstallError(f"git clone did not finish within {CLONE_TIMEOUT_S} s (no network?)") from None
        if done.returncode != 0:
            detail = " ".join((done.stderr or done.stdout).split())[-400:] or f"exit code {done.returncode}"
            raise InstallError(f"git clone failed: {detail} (is the URL right, and is the network reachable?)")
        if target.exists():
            raise InstallError(f"extensions/{target.name} appeared while cloning; not overwritten")
        os.replace(staging / "repo", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

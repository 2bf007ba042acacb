"""System (non-Python) dependencies the project can install itself: Debian's chromium for the browser tests."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHROMIUM_CANDIDATES = (Path("/usr/bin/chromium"), Path("/usr/bin/chromium-browser"))


@dataclass(frozen=True)
class DependencyCheck:
    """The path found (or None) and, when None, why."""

    path: Path | None
    reason: str = ""


def find_chromium() -> Path | None:
    """An installed Debian chromium binary, or None."""
    return next((p for p in CHROMIUM_CANDIDATES if p.is_file() and os.access(p, os.X_OK)), None)


def install_chromium(timeout: float = 900) -> DependencyCheck:
    """Install chromium with apt-get when it is missing; a reason instead of a path when that cannot be done."""
    found = find_chromium()
    if found:
        return DependencyCheck(found)
    if shutil.which("apt-get") is None:
        return DependencyCheck(None, "chromium is not installed and apt-get is not available on this system")
    if os.geteuid() != 0:
        return DependencyCheck(None, "chromium is not installed; run `apt-get install -y chromium` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        log.info("running %s", " ".join(cmd))
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return DependencyCheck(None, f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return DependencyCheck(None, f"`{' '.join(cmd)}` failed: {' | '.join(tail)}")
    found = find_chromium()
    return DependencyCheck(found, "" if found else "apt-get installed chromium but no binary was found")


def ensure_chromium() -> Path | None:
    """The chromium binary, installing it when missing and running as root; None (reason logged) otherwise."""
    check = install_chromium()
    if check.path is None:
        log.warning("%s", check.reason)
    return check.path

"""Checkpoints that failed on every job since they last worked (NaN/inf output, load errors), remembered across
starts in a small JSON file in the data folder, so that the next start does not bring a broken choice back
silently (see :func:`modules.app_state.avoid_failed_checkpoint`).

An entry is dropped when a job on that checkpoint succeeds, and ignored once the file changes (size or mtime):
a replaced file gets a fresh chance.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from ..image_io import atomic_write
from .catalog import CheckpointInfo

log = logging.getLogger(__name__)


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


class CheckpointFailures:
    """``{checkpoint path: {"reason", "failures", "stamp"}}`` in ``path``; writes only when an entry changes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("%s could not be read (%s); starting without it", self.path, e)
            return {}
        if not isinstance(stored, dict):
            return {}
        return {k: v for k, v in stored.items() if isinstance(v, dict) and {"reason", "failures", "stamp"} <= v.keys()}

    def _write(self) -> None:
        data = json.dumps(self._entries, indent=1).encode("utf-8")
        try:
            atomic_write(self.path, lambda handle: handle.write(data))
        except OSError as e:  # a full disk must not hide the job's own error
            log.warning("could not write %s: %s", self.path, e)

    def failed(self, info: CheckpointInfo, reason: str) -> None:
        """Count a job that failed on ``info`` because of the checkpoint (``reason``: its error message)."""
        stamp = _stamp(info.path)
        if stamp is None:
            return
        with self._lock:
            key = str(info.path)
            before = self._entries.get(key)
            count = before["failures"] + 1 if before and before["stamp"] == stamp else 1
            self._entries[key] = {"reason": reason, "failures": count, "stamp": stamp}
            self._write()

    def worked(self, info: CheckpointInfo) -> None:
        """A job on ``info`` succeeded: forget its failures."""
        with self._lock:
            if self._entries.pop(str(info.path), None) is not None:
                self._write()

    def reason(self, info: CheckpointInfo) -> str | None:
        """Why the jobs on ``info`` failed since it last worked, or None (no failures, or the file changed since)."""
        with self._lock:
            entry = self._entries.get(str(info.path))
        return entry["reason"] if entry and entry["stamp"] == _stamp(info.path) else None

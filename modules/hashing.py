"""File hashes as A1111 shows them, computed lazily and cached by path + size + mtime in the data folder."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
from pathlib import Path

CHUNK = 1 << 20

log = logging.getLogger(__name__)


def sha256_file(path: Path, skip_safetensors_header: bool = False) -> str:
    """sha256 of a file; with ``skip_safetensors_header`` only the tensor data (A1111's LoRA "addnet" hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if skip_safetensors_header:
            (n,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + n)
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashCache:
    """A JSON cache of file hashes; an entry is valid while the file's size and mtime are unchanged."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._computing: dict[str, threading.Event] = {}
        self._entries: dict = self._read()

    def _read(self) -> dict:
        """The stored entries; a file that does not parse or has another shape is rebuilt (hashes are recomputed)."""
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("%s could not be read (%s); hashes will be computed again", self.path, e)
            return {}
        if not isinstance(stored, dict):
            log.warning("%s holds no hash entries (%s); hashes will be computed again", self.path,
                        type(stored).__name__)
            return {}
        return {k: e for k, e in stored.items()
                if isinstance(e, dict) and {"size", "mtime", "hash"} <= e.keys()}

    def get(self, file: Path, kind: str = "sha256") -> str:
        """The full hex digest of ``kind`` ("sha256" or "addnet") for ``file``, computing it on a miss.

        A file already being hashed by another thread (e.g. a `prefetch`) is waited for, not hashed twice.
        """
        file = Path(file).resolve()
        key = f"{kind}:{file}"
        while True:
            st = file.stat()
            with self._lock:
                e = self._entries.get(key)
                if e and e["size"] == st.st_size and e["mtime"] == st.st_mtime_ns:
                    return e["hash"]
                running = self._computing.get(key)
                if running is None:
                    done = self._computing[key] = threading.Event()
            if running is None:
                break
            running.wait()
        try:
            digest = sha256_file(file, skip_safetensors_header=(kind == "addnet"))
            with self._lock:
                self._entries[key] = {"size": st.st_size, "mtime": st.st_mtime_ns, "hash": digest}
                self._save()
            return digest
        finally:
            with self._lock:
                del self._computing[key]
            done.set()

    def prefetch(self, file: Path, kind: str = "sha256") -> None:
        """Start hashing ``file`` in a background thread unless its hash is known (A1111 hashes at load time,
        blocking; here the first job only waits if it needs the hash before the thread is done)."""
        if self.cached(file, kind) is None:
            threading.Thread(target=self._get_quietly, args=(file, kind), name="hash", daemon=True).start()

    def _get_quietly(self, file: Path, kind: str) -> None:
        with contextlib.suppress(OSError):
            self.get(file, kind)

    def cached(self, file: Path, kind: str = "sha256") -> str | None:
        """The digest if it is already known and still valid (never computes)."""
        file = Path(file).resolve()
        try:
            st = file.stat()
        except OSError:
            return None
        with self._lock:
            e = self._entries.get(f"{kind}:{file}")
        return e["hash"] if e and e["size"] == st.st_size and e["mtime"] == st.st_mtime_ns else None

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._entries, f)
        os.replace(tmp, self.path)

"""Upscaler model files in A1111's folders (``models/ESRGAN``, ``models/RealESRGAN``, ``models/SwinIR``,
``models/DAT``, ``models/HAT``, or the ``--*-models-path`` flags), each probed once for its architecture and scale.

A file that cannot be used (not a model spandrel knows, damaged, a pickle without --allow-pickle) stays in the
listing with the reason, so the user sees why it is not offered. Only scanned files can be chosen by name.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from ..models.safetensors_file import PICKLE_SUFFIXES

log = logging.getLogger(__name__)

SAFE_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class UpscalerFile:
    """One file of an upscaler folder; ``problem`` says why it cannot be used (None: usable)."""

    name: str  # the file name without its suffix: what A1111 lists and requests name
    path: Path
    folder: str  # the A1111 folder kind it was found in ("ESRGAN", "RealESRGAN", …)
    architecture: str = ""
    scale: int = 0
    problem: str | None = None


class UpscalerCatalog:
    """The upscaler files of ``folders`` (``{kind: directory}``); ``refresh()`` re-scans and probes new files.

    ``probe(path)`` returns ``(architecture, scale)`` or raises with the reason; probes are kept per file version
    (size and modification time), so a refresh only reads new or changed files."""

    def __init__(self, folders: dict[str, Path], probe, allow_pickle: bool = False):
        self.folders = {kind: Path(path) for kind, path in folders.items()}
        self.allow_pickle = allow_pickle
        self._probe = probe
        self._probed: dict[tuple, tuple[str, int] | str] = {}
        self._items: list[UpscalerFile] | None = None
        self._lock = threading.Lock()

    def refresh(self) -> list[UpscalerFile]:
        with self._lock:
            items, seen = [], set()
            for kind, folder in self.folders.items():
                if not folder.is_dir():
                    continue
                for path in sorted(folder.rglob("*"), key=lambda p: p.name.lower()):
                    suffix = path.suffix.lower()
                    if not path.is_file() or (suffix not in SAFE_SUFFIXES and suffix not in PICKLE_SUFFIXES):
                        continue
                    if path.resolve() in seen:
                        continue
                    seen.add(path.resolve())
                    items.append(self._describe(path, kind))
            self._items = items
            return list(items)

    def _describe(self, path: Path, kind: str) -> UpscalerFile:
        if path.suffix.lower() in PICKLE_SUFFIXES and not self.allow_pickle:
            return UpscalerFile(path.stem, path, kind, problem="a pickle file (can run code when loaded): refused "
                                "without --allow-pickle; convert it to .safetensors")
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._probed:
            try:
                self._probed[key] = self._probe(path)
            except Exception as e:  # noqa: BLE001 - any failure makes the file unusable, with its reason
                self._probed[key] = str(e) or type(e).__name__
                log.warning("upscaler %s is not offered: %s", path, self._probed[key])
        found = self._probed[key]
        if isinstance(found, str):
            return UpscalerFile(path.stem, path, kind, problem=found)
        return UpscalerFile(path.stem, path, kind, architecture=found[0], scale=found[1])

    def items(self) -> list[UpscalerFile]:
        """Every file found (usable or not), scanning on first use."""
        return list(self._items) if self._items is not None else self.refresh()

    def usable(self) -> list[UpscalerFile]:
        return [i for i in self.items() if i.problem is None]

    def find(self, name: str) -> UpscalerFile | None:
        """A usable file by name (case-insensitive; the file name with its suffix works too)."""
        wanted = name.strip().lower()
        for item in self.usable():
            if wanted in (item.name.lower(), item.path.name.lower()):
                return item
        return None

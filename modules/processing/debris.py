"""What an interrupted save leaves behind (kill -9, a crash, power loss), removed at the next start.

A save reserves its name with an empty file (:func:`modules.processing.outputs.next_image_path`) and writes the
image into a hidden temporary file beside it (:func:`modules.image_io.atomic_write`, ``.NAME.xxxxxxxx.tmp``) that
then replaces the empty one. A process killed in between leaves both; JSON files (settings, hashes) are written the
same way (``NAME.jsonxxxxxxxx.tmp``). Only files older than the running process are removed, so the scan may run
while this process saves.
"""
from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^(?:\..+\.|[\w.-]+\.json)[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp's 8 random characters
_RESERVED = re.compile(r"^(?:\d{5,}(?:-.+)?|grid-\d{4,})\.\w+$")  # NNNNN-SEED.ext, NNNNN[-NAME].ext, grid-NNNN.ext
_DATED = re.compile(r"^\d{4}-\d{2}-\d{2}$")
OUTPUT_KINDS = ("txt2img", "img2img", "extras", "txt2img-grids", "img2img-grids", "save")


def _is_debris(entry: os.DirEntry, before: float) -> bool:
    temp, reserved = _TEMP.match(entry.name), _RESERVED.match(entry.name)
    if not (temp or reserved):
        return False
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_mtime < before and (temp is not None or info.st_size == 0)


def _scan(folder: Path, dated: bool) -> Iterable[os.DirEntry]:
    """The files in ``folder`` and, with ``dated``, in its ``YYYY-MM-DD`` subfolders (where images are saved)."""
    try:
        with os.scandir(folder) as entries:
            listed = list(entries)
    except OSError:
        return
    for entry in listed:
        if entry.is_file(follow_symlinks=False):
            yield entry
        elif dated and _DATED.match(entry.name) and entry.is_dir(follow_symlinks=False):
            yield from _scan(Path(entry.path), False)


def remove_save_debris(image_folders: Iterable[Path], other_folders: Iterable[Path], before: float) -> list[Path]:
    """Remove interrupted saves' temporary files and empty reserved images last modified before ``before`` (a
    ``time.time()``): in ``image_folders`` and their dated subfolders, and in ``other_folders`` themselves.
    Returns the removed paths."""
    removed: list[Path] = []
    folders = {Path(f).resolve(): True for f in image_folders}
    for folder in other_folders:
        folders.setdefault(Path(folder).resolve(), False)
    for folder, dated in folders.items():
        for entry in _scan(folder, dated):
            if _is_debris(entry, before):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    log.warning("could not remove %s: %s", entry.path, e)
                    continue
                removed.append(Path(entry.path))
    return removed


def clean_after_crash(state, before: float) -> list[Path]:
    """:func:`remove_save_debris` over the application's output folders, data folder and cache, logging each
    removed file (``state``: an :class:`~modules.app_state.AppState`)."""
    options, settings = state.options, state.settings.current
    removed = remove_save_debris([settings.output_dir(kind, options.data_dir) for kind in OUTPUT_KINDS],
                                 [options.data_dir, options.cache_dir], before)
    for path in removed:
        log.warning("removed %s, left by a save that was interrupted (crash or kill)", path)
    return removed

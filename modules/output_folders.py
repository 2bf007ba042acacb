"""Output folders: those named by clients (Settings tab, API) are confined, and a file in the way of one is
reported clearly.

A folder setting's value from a client must name a folder inside the data folder or inside a root the owner gave
with ``--allowed-output-roots``, after ``~``, ``..``, relative paths (below the data folder) and symlinks are
resolved, and must not name a file. Values the owner wrote into ``config.json`` are trusted (see
:meth:`modules.settings.SettingsStore.checked`).
"""
from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path

FOLDER_SETTINGS = ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples",
                   "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids", "outdir_save")


class OutputFolderError(ValueError):
    """An output folder that cannot be created because a file is in the way; the message names both."""


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing one of ``path`` and its parents when it is not a folder, else None."""
    for candidate in (path, *path.parents):
        try:
            mode = candidate.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:  # not readable: let creating the folder tell
            return None
        return None if stat.S_ISDIR(mode) else candidate
    return None


def check_folder(name: str, value: str, data_dir: Path, roots: Sequence[Path] = ()) -> None:
    """Refuse (ValueError naming setting ``name``) a ``value`` from a client unless it is empty (the default folder)
    or names a folder, not a file, inside ``data_dir`` or one of ``roots`` once ``~`` is expanded, a relative path
    taken below ``data_dir``, and ``..`` and symlinks are resolved."""
    if not value:
        return
    try:
        path = (Path(data_dir) / Path(value).expanduser()).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # no home folder, a symlink loop, a NUL byte
        raise ValueError(f"setting {name!r}: {value!r} is not a usable folder ({e})") from None
    data = Path(data_dir).resolve()
    if not any(path.is_relative_to(root) for root in (data, *(Path(r).resolve() for r in roots))):
        raise ValueError(f"setting {name!r}: {value!r} is {path}, which must be inside the data folder ({data}) "
                         "or a root given with --allowed-output-roots")
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise ValueError(f"setting {name!r}: {value!r} cannot be a folder: {blocker} is a file")


def typed_folder(label: str, value: str, data_dir: Path, roots: Sequence[Path], remote: bool) -> Path:
    """The folder a user typed (relative: below ``data_dir``): any folder for a browser on the server's machine; for a
    ``remote`` one only inside ``data_dir`` or one of ``roots`` (ValueError naming ``label`` otherwise)."""
    if remote:
        try:
            check_folder(label, value, data_dir, roots)
        except ValueError as e:
            raise ValueError(str(e).removeprefix("setting ")) from None
    try:
        return (Path(data_dir) / Path(value).expanduser()).resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{label}: {value!r} is not a usable folder ({e})") from None


def make_folder(path: Path) -> None:
    """Create ``path`` and its parents. OutputFolderError when a file is in the way (a setting to change); other
    refusals (no permission, a full or read-only disk) raise their OSError unchanged, for the save's own handling."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = _file_in_the_way(Path(path)) or path
        raise OutputFolderError(f"output folder: cannot create {path}: {blocker} is a file; choose another folder "
                                "in Settings → Paths") from None

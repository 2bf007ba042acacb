"""Saving a job's images when the disk may refuse them: the job keeps its images and says what was not saved.

A full disk (``ENOSPC``, a quota's ``EDQUOT``), a file-size limit (``EFBIG``), a read-only file system (``EROFS``)
or a folder without write permission (``EACCES``/``EPERM``) is the user's to fix, not a fault of the job; any other
``OSError`` still propagates. The server keeps running, and the next save works once the disk takes files again.

A generation worker (:mod:`modules.workers`) writes nothing: inside :func:`deferred_saves` each save is recorded as
a :class:`PendingSave`, and the app writes the records with :func:`write_pending`, so outputs stay in one place.
"""
from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from PIL import Image

from ..image_io import save_image
from ..output_folders import make_folder
from . import outputs

log = logging.getLogger(__name__)

_REASONS = (("ENOSPC", "disk full"), ("EDQUOT", "disk full"), ("EFBIG", "file too large"),
            ("EROFS", "read-only disk"), ("EACCES", "no permission"), ("EPERM", "no permission"))
DISK_REFUSALS: Mapping[int, str] = MappingProxyType(
    {getattr(errno, name): reason for name, reason in _REASONS if hasattr(errno, name)})


@dataclass
class PendingSave:
    """One save a worker left to the app: the arguments of :meth:`UnsavedImages.save`, and the stand-in path the
    job got back (replaced by the written file's path when the app writes it)."""

    image: Image.Image
    folder: Path
    reserve: Callable[[Path], Path]
    infotext: str | None
    extra_text: Mapping[str, str] | None
    dated: bool
    save_txt: bool
    stand_in: Path


_pending: ContextVar[list[PendingSave] | None] = ContextVar("pending_saves", default=None)


@contextlib.contextmanager
def deferred_saves() -> Iterator[list[PendingSave]]:
    """Within the block, :meth:`UnsavedImages.save` records each save in the yielded list instead of writing."""
    records: list[PendingSave] = []
    token = _pending.set(records)
    try:
        yield records
    finally:
        _pending.reset(token)


def write_pending(records: list[PendingSave]) -> tuple[dict[Path, Path | None], list[str]]:
    """Write a worker's recorded saves in order: {stand-in path: written path, None when the disk refused it}, and
    the warnings of :meth:`UnsavedImages.report`."""
    written: dict[Path, Path | None] = {}
    savers: dict[bool, UnsavedImages] = {}
    for r in records:
        saver = savers.setdefault(r.save_txt, UnsavedImages(r.save_txt))
        written[r.stand_in] = saver.save(r.image, r.folder, r.reserve, r.infotext, r.extra_text, r.dated)
    return written, [line for saver in savers.values() for line in saver.report()]


def refusal(error: BaseException) -> str | None:
    """What the disk's refusal means for the user ("disk full", …), or None for an error of another kind.

    ``error`` is the ``OSError``, or an error raised while handling one (creating a folder gives
    :class:`~modules.output_folders.OutputFolderError`, a ValueError)."""
    for candidate in (error, error.__cause__, error.__context__):
        if isinstance(candidate, OSError) and candidate.errno in DISK_REFUSALS:
            return DISK_REFUSALS[candidate.errno]
    return None


def is_unsaved_warning(line: str) -> bool:
    """Whether a job's warning is one of :meth:`UnsavedImages.report`'s lines (the UI shows those loudly)."""
    reason, _, rest = line.partition(": ")
    return reason in DISK_REFUSALS.values() and " not saved (" in rest


class UnsavedImages:
    """One job's saves: each image is saved, or counted by reason and folder when the disk refuses it. With
    ``save_txt`` (A1111's setting), an image saved with an infotext gets it in a ``.txt`` file of the same name."""

    def __init__(self, save_txt: bool = False) -> None:
        self.save_txt = save_txt
        self._refused: dict[tuple[str, Path], tuple[int, Exception]] = {}

    def save(self, image: Image.Image, folder: Path, reserve: Callable[[Path], Path], infotext: str | None,
             extra_text: Mapping[str, str] | None = None, dated: bool = True) -> Path | None:
        """Save ``image`` into today's folder under ``folder`` (``dated`` False: into ``folder`` itself), named by
        ``reserve(that folder)`` (which may create an empty placeholder: it is removed again when the save fails),
        with ``extra_text`` as further PNG text chunks. None when the disk refused it. Inside
        :func:`deferred_saves`: recorded, and a stand-in path returned."""
        pending = _pending.get()
        if pending is not None:
            stand_in = Path(folder) / f".pending-{len(pending)}"
            pending.append(PendingSave(image, Path(folder), reserve, infotext, extra_text, dated, self.save_txt,
                                       stand_in))
            return stand_in
        target = Path(folder)
        try:
            if dated:
                target = outputs.dated_folder(target)
            else:
                make_folder(target)
            path = reserve(target)
            try:
                saved = save_image(image, path, infotext=infotext, extra_text=extra_text)
            except BaseException:
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
            if self.save_txt and infotext:
                saved.with_suffix(".txt").write_text(infotext, encoding="utf-8")
            return saved
        except (OSError, ValueError) as e:
            reason = refusal(e)
            if reason is None:
                raise
            count, _ = self._refused.get((reason, target), (0, e))
            self._refused[(reason, target)] = (count + 1, e)
            return None

    def report(self) -> list[str]:
        """One warning per reason and folder ("disk full: 2 images not saved (/…/2024-05-01)"), each logged."""
        lines = []
        for (reason, folder), (count, error) in self._refused.items():
            line = f"{reason}: {count} image{'s' if count != 1 else ''} not saved ({folder})"
            log.warning("%s: %s", line, error)
            lines.append(line)
        return lines

"""Atomic file writing, and images saved/read with their infotext (PNG text chunk, JPEG/WebP EXIF UserComment).

PNG: the infotext goes into a ``parameters`` text chunk (tEXt, or iTXt when it is not Latin-1), as A1111 does.
JPEG/WebP: into EXIF ``UserComment`` as ``b"UNICODE\\0"`` + UTF-16 big-endian, the encoding A1111 writes
(through piexif) and other readers expect. Files are written to a temporary file in the target folder and moved
into place with :func:`os.replace`, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from PIL import Image, PngImagePlugin

PNG_INFOTEXT_KEY = "parameters"
EXIF_IFD_POINTER = 0x8769
EXIF_USER_COMMENT = 0x9286
_JPEG_EXIF_LIMIT = 65533 - 6  # one APP1 segment, less its "Exif\0\0" header
_COMMENT_PREFIXES = {
    b"UNICODE\x00": "utf-16",
    b"ASCII\x00\x00\x00": "ascii",
    b"JIS\x00\x00\x00\x00\x00": "shift_jis",
    b"\x00" * 8: "utf-8",
}


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], *, mode: int = 0o644) -> Path:
    """Write a file through ``write(binary_file)`` into a temporary file beside ``path``, then replace ``path``.

    The temporary file is flushed and fsynced before the rename and removed if ``write`` raises. An existing
    target keeps its permission bits; a new one gets ``mode``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            mode = target.stat().st_mode & 0o7777
        os.chmod(temp_name, mode)
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return target


def encode_user_comment(text: str) -> bytes:
    """EXIF UserComment bytes for ``text``: the UNICODE prefix and UTF-16BE, as A1111 (piexif) writes it."""
    return b"UNICODE\x00" + text.encode("utf-16-be")


def decode_user_comment(data: bytes | str) -> str:
    """Text of an EXIF UserComment, whatever its declared character code and byte order."""
    if isinstance(data, str):
        return data.rstrip("\x00")
    codec = _COMMENT_PREFIXES.get(data[:8])
    if codec is None:
        return data.decode("utf-8", errors="ignore").rstrip("\x00")
    body = data[8:]
    if codec == "utf-16":
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16", errors="replace").rstrip("\x00")
        # No byte order mark: for mostly-ASCII text the zero bytes sit at even offsets in big-endian data.
        codec = "utf-16-be" if body[0::2].count(0) >= body[1::2].count(0) else "utf-16-le"
    return body.decode(codec, errors="replace").rstrip("\x00")


def _format_for(path: Path, image_format: str | None) -> str:
    if image_format:
        return image_format.upper()
    found = Image.registered_extensions().get(path.suffix.lower())
    if found is None:
        raise ValueError(f"cannot tell the image format of {path}; pass image_format")
    return found


def save_image(image: Image.Image, path: str | os.PathLike[str], *, infotext: str | None = None,
               image_format: str | None = None, quality: int = 80, lossless: bool = False,
               extra_text: Mapping[str, str] | None = None) -> Path:
    """Save ``image`` atomically with ``infotext`` embedded; the format comes from the suffix unless given.

    ``quality`` applies to JPEG and lossy WebP, ``lossless`` to WebP. ``extra_text`` adds PNG text chunks.
    JPEG cannot hold alpha, so RGBA and other modes are converted to RGB. Raises ValueError when the
    infotext is too long for a JPEG EXIF segment (about 32,000 characters).
    """
    target = Path(path)
    fmt = _format_for(target, image_format)
    options: dict[str, object] = {}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        if infotext:
            info.add_text(PNG_INFOTEXT_KEY, infotext)
        for key, value in (extra_text or {}).items():
            info.add_text(key, value)
        options["pnginfo"] = info
    else:
        if infotext:
            exif = Image.Exif()
            exif.get_ifd(EXIF_IFD_POINTER)[EXIF_USER_COMMENT] = encode_user_comment(infotext)
            if fmt == "JPEG" and len(exif.tobytes()) > _JPEG_EXIF_LIMIT:
                raise ValueError(f"infotext of {len(infotext)} characters does not fit into JPEG EXIF")
            options["exif"] = exif
        if fmt == "JPEG":
            options["quality"] = quality
            if image.mode not in ("RGB", "L", "CMYK"):
                image = image.convert("RGB")
        elif fmt == "WEBP":
            options.update(quality=quality, lossless=lossless)
    return atomic_write(target, lambda handle: image.save(handle, format=fmt, **options))


def read_infotext(image: Image.Image) -> str | None:
    """The infotext embedded in an opened image: PNG ``parameters`` chunk, else EXIF UserComment; None if absent."""
    text = image.info.get(PNG_INFOTEXT_KEY)
    if isinstance(text, str) and text:
        return str(text)
    try:
        comment = image.getexif().get_ifd(EXIF_IFD_POINTER).get(EXIF_USER_COMMENT)
    except (OSError, ValueError, SyntaxError):
        return None
    if not comment:
        return None
    return decode_user_comment(comment) or None


def read_infotext_file(path: str | os.PathLike[str]) -> str | None:
    """The infotext of the image file at ``path`` (see :func:`read_infotext`)."""
    with Image.open(path) as image:
        return read_infotext(image)

"""Where generated images go and how several are shown together: A1111 file naming, dated folders, grids, zip.

Names follow A1111: ``NNNNN-SEED.png`` for images and ``grid-NNNN.png`` for grids, the counter continuing from
the highest number already in the folder. A name is reserved by creating the file exclusively (an empty
placeholder), so two jobs, threads or processes never get the same one; the caller then writes the image over
it atomically (``modules.image_io.save_image``), which replaces the placeholder in one rename.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import os
import re
import threading
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..output_folders import make_folder

_NAMING_LOCK = threading.Lock()  # scan + reserve as one step within the process; O_EXCL guards across processes
_MAX_TRIES = 1000


def dated_folder(folder: Path, day: dt.date | None = None) -> Path:
    """``folder/YYYY-MM-DD`` (created); ``day`` defaults to today (local time). ``folder`` comes from
    :meth:`modules.settings.Settings.output_dir` (A1111's layout unless the Paths settings say otherwise).
    :class:`~modules.output_folders.OutputFolderError` (a ValueError) says why when it cannot be created."""
    dated = Path(folder) / (day or dt.date.today()).isoformat()
    make_folder(dated)
    return dated


def _highest_number(folder: Path, pattern: re.Pattern[str]) -> int:
    highest = -1
    with os.scandir(folder) as entries:
        for entry in entries:
            found = pattern.match(entry.name)
            if found:
                highest = max(highest, int(found.group(1)))
    return highest


def _reserve(folder: Path, pattern: re.Pattern[str], make_name: Callable[[int], str]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _NAMING_LOCK:
        number = _highest_number(folder, pattern) + 1
        for _ in range(_MAX_TRIES):
            path = folder / make_name(number)
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:  # another process took it between the scan and now
                number += 1
                continue
            return path
    raise RuntimeError(f"no free image name in {folder} after {_MAX_TRIES} tries")


def next_image_path(folder: Path, seed: int, ext: str = "png") -> Path:
    """Reserve and return ``folder/NNNNN-SEED.ext``: a 5-digit counter one above the highest ``NNNNN-…`` name
    already in the folder (00000 in an empty one). The file is created empty; write the image over it."""
    return _reserve(folder, re.compile(r"(\d+)(?:-|\.|$)"), lambda n: f"{n:05d}-{seed}.{ext}")


def next_extras_path(folder: Path, stem: str = "", ext: str = "png") -> Path:
    """Reserve and return ``folder/NNNNN.ext`` (A1111's Extras naming), or ``NNNNN-STEM.ext`` for an input with a
    file name (a batch's), counting on from the highest ``NNNNN…`` name, like :func:`next_image_path`."""
    return _reserve(folder, re.compile(r"(\d+)(?:-|\.|$)"), lambda n: f"{n:05d}{'-' + stem if stem else ''}.{ext}")


def next_grid_path(folder: Path, ext: str = "png") -> Path:
    """Reserve and return ``folder/grid-NNNN.ext`` (A1111's grid naming, 4-digit counter), like
    :func:`next_image_path`."""
    return _reserve(folder, re.compile(r"grid-(\d+)"), lambda n: f"grid-{n:04d}.{ext}")


def grid_rows(count: int, prevent_empty_spots: bool = False) -> int:
    """A1111's automatic number of grid rows (setting n_rows = -1): ``round(sqrt(count))`` (Python rounding),
    or with ``prevent_empty_spots`` the largest divisor of ``count`` not above ``floor(sqrt(count))``."""
    if count <= 0:
        return 1
    if prevent_empty_spots:
        rows = math.isqrt(count)
        while count % rows:
            rows -= 1
        return rows
    return max(1, round(math.sqrt(count)))


def make_grid(images: Sequence[Image.Image], rows: int | None = None,
              prevent_empty_spots: bool = False) -> Image.Image:
    """Tile ``images`` row by row on black; ``rows`` None picks them as A1111 does (:func:`grid_rows`).

    Columns = ceil(n / rows); every cell is as large as the largest image, and each image sits at its cell's
    top-left corner (A1111 grids hold images of one size, where this is the same thing).
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    rows = min(rows or grid_rows(len(images), prevent_empty_spots), len(images))
    cols = math.ceil(len(images) / rows)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), "black")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % cols) * cell_w, (i // cols) * cell_h))
    return grid


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, max_width: int) -> list[str]:
    """Split ``text`` into lines no wider than ``max_width`` (at spaces; an overlong word stays whole)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > max_width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def labelled_grid(images: Sequence[Image.Image], x_labels: Sequence[str], y_labels: Sequence[str],
                  font_size: int | None = None, background: str = "white", text_colour: str = "black") -> Image.Image:
    """Grid for an X/Y plot: ``images`` row-major, ``len(y_labels)`` rows of ``len(x_labels)`` columns, with the
    X labels centred above the columns and the Y labels centred left of the rows, in margins.

    An empty label list means no margin on that side (then the count comes from the other list and the number
    of images). Labels are wrapped to the cell width; the font is PIL's default at ``font_size`` (default: cell
    height / 16, at least 12 px).
    """
    if not images:
        raise ValueError("labelled_grid needs at least one image")
    cols = len(x_labels) or math.ceil(len(images) / max(1, len(y_labels)))
    rows = len(y_labels) or math.ceil(len(images) / cols)
    if cols * rows != len(images):
        raise ValueError(f"{len(images)} images do not fill {rows} rows x {cols} columns")
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    font = ImageFont.load_default(size=font_size or max(12, cell_h // 16))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(sum(font.getmetrics()) * 1.15)
    pad = line_h // 2

    x_lines = [_wrap(scratch, label, font, cell_w - 2 * pad) for label in x_labels]
    top = (max(len(lines) for lines in x_lines) * line_h + 2 * pad) if x_labels else 0
    y_width = min(cell_w, max((scratch.textlength(label, font=font) for label in y_labels), default=0))
    left = int(y_width + 2 * pad) if y_labels else 0
    y_lines = [_wrap(scratch, label, font, max(1, left - 2 * pad)) for label in y_labels]

    canvas = Image.new("RGB", (left + cols * cell_w, top + rows * cell_h), background)
    for i, image in enumerate(images):
        canvas.paste(image.convert("RGB"), (left + (i % cols) * cell_w, top + (i // cols) * cell_h))
    draw = ImageDraw.Draw(canvas)
    for col, lines in enumerate(x_lines):
        centre_x = left + col * cell_w + cell_w / 2
        first_y = top - pad - len(lines) * line_h
        for n, line in enumerate(lines):
            draw.text((centre_x, first_y + n * line_h), line, fill=text_colour, font=font, anchor="ma")
    for row, lines in enumerate(y_lines):
        centre_y = top + row * cell_h + cell_h / 2
        first_y = centre_y - len(lines) * line_h / 2
        for n, line in enumerate(lines):
            draw.text((left / 2, first_y + n * line_h), line, fill=text_colour, font=font, anchor="ma")
    return canvas


def zip_images(paths: Iterable[Path]) -> bytes:
    """A zip archive (stored, PNG/JPEG are compressed already) of the files, by file name; a repeated name gets
    `` (2)``, `` (3)``… before its suffix."""
    buffer = io.BytesIO()
    used: set[str] = set()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in map(Path, paths):
            name, n = path.name, 1
            while name in used:
                n += 1
                name = f"{path.stem} ({n}){path.suffix}"
            used.add(name)
            archive.write(path, arcname=name)
    return buffer.getvalue()

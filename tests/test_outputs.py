"""Output files and grids: A1111 names and folders, counters that never collide, grid layouts, zip downloads."""

import datetime as dt
import io
import re
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from modules.processing import outputs


def _solid(colour, size=(64, 32)):
    return Image.new("RGB", size, colour)


def test_dated_folders_follow_the_a1111_layout_unless_the_paths_settings_say_otherwise(tmp_path):
    from modules.settings import Settings

    day = dt.date(2024, 5, 6)
    default = Settings()
    assert outputs.dated_folder(default.output_dir("txt2img", tmp_path), day) == tmp_path / "outputs" / "txt2img-images" / "2024-05-06"
    assert outputs.dated_folder(default.output_dir("img2img", tmp_path), day) == tmp_path / "outputs" / "img2img-images" / "2024-05-06"
    assert outputs.dated_folder(default.output_dir("txt2img-grids", tmp_path), day) == tmp_path / "outputs" / "txt2img-grids" / "2024-05-06"
    assert (tmp_path / "outputs" / "img2img-images" / "2024-05-06").is_dir()
    assert outputs.dated_folder(default.output_dir("img2img-grids", tmp_path)).name == dt.date.today().isoformat()
    mine = default.with_overrides({"outdir_txt2img_samples": "mine", "outdir_grids": str(tmp_path / "grids")})
    assert outputs.dated_folder(mine.output_dir("txt2img", tmp_path), day) == tmp_path / "mine" / "2024-05-06"
    assert mine.output_dir("img2img-grids", tmp_path) == tmp_path / "grids"
    with pytest.raises(ValueError, match="output kind"):
        default.output_dir("extras-grids", tmp_path)


def test_image_names_start_at_zero_and_continue_after_the_highest_existing_number(tmp_path):
    assert outputs.next_image_path(tmp_path / "new", 1234).name == "00000-1234.png"
    for name in ("00003-5.png", "00007-123.jpg", "00002.png", "grid-0042.png", "notes.txt", "12abc.png"):
        (tmp_path / name).write_bytes(b"x")
    first = outputs.next_image_path(tmp_path, 99)
    assert first.name == "00008-99.png" and first.exists()  # reserved at once
    assert outputs.next_image_path(tmp_path, 99, ext="webp").name == "00009-99.webp"
    assert outputs.next_image_path(tmp_path, -1).name == "00010--1.png"


def test_grid_names_have_their_own_four_digit_counter(tmp_path):
    (tmp_path / "00041-7.png").write_bytes(b"x")
    assert outputs.next_grid_path(tmp_path).name == "grid-0000.png"
    assert outputs.next_grid_path(tmp_path).name == "grid-0001.png"
    assert outputs.next_image_path(tmp_path, 7).name == "00042-7.png"


def test_names_never_collide_between_threads(tmp_path):
    names, start = [], threading.Barrier(8)

    def worker(seed):
        start.wait()
        for _ in range(15):
            names.append(outputs.next_image_path(tmp_path, seed).name)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = sorted(int(re.match(r"(\d{5})-\d+\.png$", name).group(1)) for name in names)
    assert numbers == list(range(120))


def test_a_name_taken_after_the_scan_is_skipped(tmp_path, monkeypatch):
    # another process creates 00000-… between this process's folder scan and its exclusive create
    real_scan = outputs._highest_number

    def scan_then_race(folder, pattern):
        found = real_scan(folder, pattern)
        (folder / "00000-5.png").write_bytes(b"other process")
        return found

    monkeypatch.setattr(outputs, "_highest_number", scan_then_race)
    path = outputs.next_image_path(tmp_path, 5)
    assert path.name == "00001-5.png" and (tmp_path / "00000-5.png").read_bytes() == b"other process"


@pytest.mark.parametrize("count, rows", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 2), (7, 3), (8, 3), (9, 3),
                                         (10, 3), (12, 3), (16, 4)])
def test_automatic_grid_rows_match_a1111(count, rows):
    assert outputs.grid_rows(count) == rows


@pytest.mark.parametrize("count, rows", [(6, 2), (7, 1), (8, 2), (12, 3), (16, 4)])
def test_grid_rows_without_empty_spots(count, rows):
    assert outputs.grid_rows(count, prevent_empty_spots=True) == rows


def test_grid_layout_and_cell_contents():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    grid = outputs.make_grid([_solid(c) for c in colours])  # 3 images -> 2 rows x 2 columns
    assert grid.size == (128, 64)
    a = np.asarray(grid)
    assert a[10, 10].tolist() == [255, 0, 0] and a[10, 70].tolist() == [0, 255, 0]
    assert a[40, 10].tolist() == [0, 0, 255] and a[40, 70].tolist() == [0, 0, 0]  # empty spot is black
    assert outputs.make_grid([_solid(c) for c in colours], rows=1).size == (192, 32)
    assert outputs.make_grid([_solid(c) for c in colours], rows=5).size == (64, 96)  # at most one per row
    assert outputs.make_grid([_solid((9, 9, 9)) for _ in range(7)], prevent_empty_spots=True).size == (448, 32)


def test_labelled_grid_puts_images_below_and_right_of_label_margins():
    images = [_solid((40 * i, 200, 255 - 40 * i), size=(96, 96)) for i in range(6)]
    grid = outputs.labelled_grid(images, ["CFG 3", "CFG 7", "CFG 12"], ["Euler a", "DPM++ 2M Karras"])
    plain = outputs.make_grid(images, rows=2)
    left, top = grid.width - plain.width, grid.height - plain.height
    assert left > 0 and top > 0
    assert np.array_equal(np.asarray(grid)[top:, left:], np.asarray(plain))
    a = np.asarray(grid).astype(int)
    for col in range(3):  # text above each column
        assert (a[:top, left + col * 96: left + (col + 1) * 96].sum(axis=2) < 200).any()
    for row in range(2):  # text left of each row
        assert (a[top + row * 96: top + (row + 1) * 96, :left].sum(axis=2) < 200).any()

    only_x = outputs.labelled_grid(images[:3], ["a", "b", "c"], [])
    assert only_x.width == 288 and only_x.height > 96
    with pytest.raises(ValueError, match="do not fill"):
        outputs.labelled_grid(images[:5], ["a", "b", "c"], ["x", "y"])


def test_long_labels_wrap_inside_their_column():
    images = [_solid((0, 0, 0), size=(80, 80)) for _ in range(2)]
    short = outputs.labelled_grid(images, ["one", "two"], [], font_size=14)
    long = outputs.labelled_grid(images, ["one two three four five six seven", "two"], [], font_size=14)
    assert long.width == short.width and long.height > short.height


def test_zip_holds_every_file_under_its_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = [tmp_path / "a" / "00000-1.png", tmp_path / "a" / "00001-2.png", tmp_path / "b" / "00000-1.png"]
    for i, path in enumerate(files):
        path.write_bytes(bytes([i]) * 10)
    with zipfile.ZipFile(io.BytesIO(outputs.zip_images(files))) as archive:
        assert archive.namelist() == ["00000-1.png", "00001-2.png", "00000-1 (2).png"]
        assert archive.read("00000-1 (2).png") == bytes([2]) * 10

"""The headless commands, run as a user runs them: ``launch.py --skip-install txt2img|img2img …`` on the bundled
demo model, in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.image_io import read_infotext_file
from modules.infotext import parse_infotext
from modules.training.judge import judge

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a large red circle on a blue background, center"


def printed_paths(stdout: str) -> list[Path]:
    """The paths a command printed (the launcher's own lines start with "launch: ")."""
    return [Path(line) for line in stdout.splitlines() if line.strip() and not line.startswith("launch: ")]


def launch(data: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"COMMANDLINE_ARGS", "VIRTUAL_ENV", "PYTHONPATH"}}
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), "--skip-install", "--data-dir", str(data),
                           "--device", "cpu", "--precision", "full", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A txt2img run: (data folder, printed paths)."""
    data = tmp_path_factory.mktemp("cli")
    result = launch(data, "txt2img", "--prompt", PROMPT, "--steps", "12", "--seed", "3", "--out", str(data / "out"))
    assert result.returncode == 0, result.stderr
    return data, printed_paths(result.stdout)


def test_txt2img_prints_the_copied_file_and_saves_it_with_infotext(made):
    data, paths = made
    assert len(paths) == 1 and paths[0].parent == data / "out" and paths[0].is_file()
    saved = list((data / "outputs" / "txt2img-images").glob("*/*-3.png"))
    assert len(saved) == 1 and saved[0].read_bytes() == paths[0].read_bytes()
    parsed = parse_infotext(read_infotext_file(paths[0]))
    assert (parsed["Prompt"], parsed["Steps"], parsed["Seed"], parsed["Model"]) == (PROMPT, "12", "3", "demo-shapes")
    seen = judge(np.asarray(Image.open(paths[0]).convert("RGB")))
    assert (seen.shape, seen.color, seen.background) == ("circle", "red", "blue")


def test_img2img_repaints_the_masked_half_only(made, tmp_path):
    data, (init,) = made
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(tmp_path / "mask.png")
    result = launch(data, "img2img", "--init-image", str(init), "--mask", str(tmp_path / "mask.png"),
                    "--denoising-strength", "0.9", "--prompt", "a large yellow square on a blue background, center",
                    "--steps", "12", "--seed", "4")
    assert result.returncode == 0, result.stderr
    (path,) = printed_paths(result.stdout)
    assert path.parent.parent.name == "img2img-images" and path.name.endswith("-4.png")
    parsed = parse_infotext(read_infotext_file(path))
    assert (parsed["Denoising strength"], parsed["Mask blur"], parsed["Seed"]) == ("0.9", "4", "4")
    before, after = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (init, path))
    assert np.array_equal(after[:, 44:], before[:, 44:])  # beyond the blurred edge: untouched
    assert np.abs(after[:, :24] - before[:, :24]).mean() > 5


def test_command_help_is_the_commands_own(tmp_path):
    result = launch(tmp_path, "txt2img", "--help")
    assert result.returncode == 0 and "launch.py txt2img" in result.stdout and "--negative-prompt" in result.stdout

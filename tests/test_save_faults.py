"""Saves and faults, on real processes and files: a save killed with SIGKILL leaves nothing behind after the next
start, a full disk (a real tmpfs) keeps the job's images and says so, and a checkpoint with garbage weights is a
clear error that the next start does not bring back."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from modules.app_state import avoid_failed_checkpoint, create_state
from modules.cmd_args import parse_command_line
from modules.image_io import read_infotext_file
from modules.processing.debris import remove_save_debris
from modules.processing.finite import NonFiniteOutput
from modules.processing.params import Txt2ImgParams
from modules.processing.runner import run_job
from tests.browser_support import browser, chromium_path, generate, small_job, watched_page  # noqa: F401
from tests.webui_server import (
    REPO,
    ServerProcess,
    free_port,
    launch_args,
    running_server,
    stop_process,
    wait_for_http,
    write_models,
)

DEMO = REPO / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
BROKEN = "zz-broken-demo.safetensors"  # sorts after the tiny checkpoints: not the default one
SMALL_JOB = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
# The runner's own save (reserve a name, write a hidden temporary file, rename) of a 2048² noise image (~0.5 s
# each), over and over, until the process is killed.
SAVE_LOOP = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from modules.processing import outputs
from modules.processing.saving import UnsavedImages
noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), dtype=np.uint8))
while True:
    UnsavedImages().save(noise, Path(sys.argv[1]), lambda d: outputs.next_image_path(d, 1234), "noise\\nSteps: 1")
"""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed or removed meanwhile
        return -1


def _listing(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(empty images, temporary files, complete images) under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    temps = [p for p in files if p.name.endswith(".tmp")]
    images = [p for p in files if p.suffix == ".png"]
    return [p for p in images if _size(p) == 0], temps, [p for p in images if _size(p) > 0]


def _kill_while_saving(folder: Path, attempts: int = 5) -> None:
    """Run the save loop until two images are complete and a third is being written, then SIGKILL it; again
    when the kill came between two saves."""
    for _ in range(attempts):
        saver = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(folder)], cwd=REPO)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and saver.poll() is None:
                empty, temps, images = _listing(folder)
                if len(images) >= 2 and empty and any(_size(t) > 0 for t in temps):
                    os.kill(saver.pid, signal.SIGKILL)
                    break
                time.sleep(0.01)
        finally:
            saver.kill()
            saver.wait()
        empty, temps, _ = _listing(folder)
        if empty and temps:
            return
    pytest.fail("the save loop was never caught in the middle of a save")


def test_a_save_killed_midway_leaves_no_empty_or_temporary_file_after_the_next_start(tmp_path):
    folder = tmp_path / "data" / "outputs" / "txt2img-images"
    _kill_while_saving(folder)
    empty, temps, complete = _listing(folder)
    assert empty and temps  # what the killed save left: the reserved name and the half-written file
    with running_server(tmp_path) as server:
        deadline = time.monotonic() + 60
        while (_listing(folder)[0] or _listing(folder)[1]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _listing(folder) == ([], [], complete)  # the finished images stay
        log = server.log()
    for path in [*empty, *temps]:
        assert f"{path.name}, left by a save that was interrupted" in log
    assert all(read_infotext_file(p) == "noise\nSteps: 1" for p in complete)


def test_only_debris_older_than_the_start_is_removed(tmp_path):
    dated = tmp_path / "outputs" / "2024-05-01"
    dated.mkdir(parents=True)
    old = {name: dated / name for name in ("00001-7.png", ".00001-7.png.a1b2c3d4.tmp", "grid-0001.png")}
    kept = {name: dated / name for name in ("00002-7.png", "notes.txt", "00003-7.jpg")}
    for path in [*old.values(), kept["notes.txt"]]:
        path.touch()
    kept["00002-7.png"].write_bytes(b"an image")
    start = time.time()
    kept["00003-7.jpg"].touch()  # a save of this process, in progress
    os.utime(kept["00003-7.jpg"], (start + 1, start + 1))
    assert sorted(remove_save_debris([tmp_path / "outputs"], [], start)) == sorted(old.values())
    assert all(p.exists() for p in kept.values())


# --- a full disk: the real server with its outputs folder on a small tmpfs, in its own mount namespace ---------

def _tmpfs_problem() -> str | None:
    """Why a tmpfs cannot be mounted in a private mount namespace here, or None."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', "/mnt"],
                           capture_output=True, text=True)
    if probe.returncode:
        return probe.stderr.strip() or f"exit {probe.returncode}"
    return None


@contextmanager
def server_on_a_full_disk(root: Path, size_kb: int = 256) -> Iterator[tuple[ServerProcess, Path]]:
    """The real server (``--api``) whose ``data/outputs`` is a ``size_kb`` tmpfs filled by the file ``filler``;
    yields the server and the server's root as this process sees it (``/proc/PID/root``: below it, the tmpfs)."""
    problem = _tmpfs_problem()
    if problem:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace: {problem}")
    dirs = write_models(root)
    outputs = dirs["data"] / "outputs"
    outputs.mkdir()
    port = free_port()
    script = ('mount -t tmpfs -o size="$1"k tmpfs "$2" && { head -c "$1"k /dev/zero > "$2/filler" 2>/dev/null; '
              'shift 2; exec "$@"; }')
    command = ["unshare", "-rm", "sh", "-c", script, "sh", str(size_kb), str(outputs),
               *launch_args(root, dirs, port, ("--api",))]
    log_path = root / "server.log"
    env = {**os.environ, "COMMANDLINE_ARGS": "", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1",
           "NO_PROXY": "127.0.0.1,localhost"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path, dirs["data"])
    try:
        wait_for_http(server.url + "/", process, 120)
        yield server, Path(f"/proc/{process.pid}/root")
    except RuntimeError as e:
        raise RuntimeError(f"{e}\n--- server log ---\n{server.log()[-4000:]}") from None
    finally:
        stop_process(process)


def _call(url: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode() if body is not None else None,
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_full_disk_keeps_the_images_says_so_and_the_server_recovers(browser, tmp_path):  # noqa: F811
    with server_on_a_full_disk(tmp_path) as (server, server_root):
        today = dt.date.today().isoformat()
        images_dir, grids_dir = (server.data_dir / "outputs" / f"txt2img-{kind}" / today for kind in ("images", "grids"))
        outputs = server_root / (server.data_dir / "outputs").relative_to("/")  # the tmpfs, seen from here
        status, body = _call(server.url + "/sdapi/v1/txt2img", {**SMALL_JOB, "batch_size": 2, "save_images": True})
        assert status == 200 and len(body["images"]) == 2
        warnings = json.loads(body["info"])["warnings"]
        assert f"disk full: 2 images not saved ({images_dir})" in warnings
        assert f"disk full: 1 image not saved ({grids_dir})" in warnings
        assert [p.name for p in outputs.rglob("*") if p.is_file()] == ["filler"]  # no empty name, no temp file

        with watched_page(browser, server.url) as page:
            page.fill("#txt2img_prompt textarea", "a blue square")
            small_job(page)
            generate(page)
            assert page.locator("#txt2img_gallery img").count() >= 1  # the image is shown all the same
            assert "disk full: 1 image not saved" in page.inner_text("#txt2img_info .sd-warning")
            page.locator(".toast-body", has_text="disk full: 1 image not saved").wait_for()

        (outputs / "filler").unlink()  # space again: the next job saves
        status, body = _call(server.url + "/sdapi/v1/txt2img", {**SMALL_JOB, "batch_size": 2, "save_images": True})
        assert status == 200 and not any("not saved" in w for w in json.loads(body["info"])["warnings"])
        saved = [p for p in (server_root / images_dir.relative_to("/")).iterdir()]
        assert len(saved) == 2 and all(Image.open(path).size == (64, 64) for path in saved)
        assert len(list((server_root / grids_dir.relative_to("/")).iterdir())) == 1
        log = server.log()
    assert "disk full: 2 images not saved" in log and "No space left on device" in log
    assert "Traceback" not in log


# --- a checkpoint with garbage weights ---------------------------------------------------------------------------

def _broken_demo(path: Path, prefix: str, value: float) -> None:
    """The demo checkpoint (the real key layout) with every float weight under ``prefix`` set to ``value``."""
    weights = load_file(str(DEMO))
    for key, tensor in weights.items():
        if key.startswith(prefix) and tensor.is_floating_point():
            weights[key] = torch.full_like(tensor, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))


def test_a_checkpoint_with_garbage_weights_is_a_clear_error_and_not_chosen_again_at_start(tmp_path):
    _broken_demo(tmp_path / "models" / "Stable-diffusion" / BROKEN, "model.diffusion_model.out.", float("nan"))
    with running_server(tmp_path, ("--api",)) as server:
        assert _call(server.url + "/sdapi/v1/options", {"sd_model_checkpoint": BROKEN})[0] == 200  # it loads
        for _ in range(2):
            status, body = _call(server.url + "/sdapi/v1/txt2img", SMALL_JOB)
            assert status == 400, body
            assert body["detail"].startswith(f"sd_model_checkpoint: {BROKEN} produced NaN/inf values while sampling")
        assert "Traceback" not in server.log()

    with running_server(tmp_path, ("--api",)) as server:
        notice = f"{BROKEN} failed on its last jobs"
        assert notice in server.log() and "starting with tiny-alpha.safetensors instead" in server.log()
        assert _call(server.url + "/sdapi/v1/options")[1]["sd_model_checkpoint"].startswith("tiny-alpha")
        status, body = _call(server.url + "/sdapi/v1/txt2img", SMALL_JOB)
        assert status == 200 and json.loads(body["info"])["sd_model_name"] == "tiny-alpha"
        page_config = urllib.request.urlopen(server.url + "/config", timeout=30).read().decode()
        assert "sd-start-notice" in page_config and notice in page_config  # the banner above the tabs


def test_a_vae_with_garbage_weights_is_named_and_a_replaced_file_gets_a_fresh_chance(tmp_path):
    folder = tmp_path / "models"
    _broken_demo(folder / BROKEN, "first_stage_model.decoder.conv_out.", float("inf"))
    options = parse_command_line(["--ckpt-dir", str(folder), "--data-dir", str(tmp_path / "data"),
                                  "--device", "cpu", "--precision", "full"]).options
    state = create_state(options)
    state.models.load(BROKEN)
    state.settings.update({"sd_model_checkpoint": BROKEN})
    with pytest.raises(NonFiniteOutput, match=f"the VAE of {BROKEN} produced NaN/inf values when decoding"):
        run_job(state, Txt2ImgParams(**SMALL_JOB))
    assert not (tmp_path / "data" / "outputs").exists() or not list((tmp_path / "data" / "outputs").rglob("*.png"))
    assert "no other checkpoint works" in avoid_failed_checkpoint(create_state(options))  # the only one: kept, said

    shutil.copyfile(DEMO, folder / BROKEN)  # the owner replaces the file
    fresh = create_state(options)
    assert avoid_failed_checkpoint(fresh) is None and fresh.notices == []
    fresh.models.load(BROKEN)
    assert len(run_job(fresh, Txt2ImgParams(**SMALL_JOB)).paths) == 1
    assert json.loads((tmp_path / "data" / "checkpoint-failures.json").read_text()) == {}

"""Start-up benchmark of the web UI server (the real ``launch.py`` process).

- cold start: process start → HTTP 200 on "/" (launcher checks dependencies; fresh data folder);
- warm start: the same with ``--skip-install`` and the data folder of an earlier run (median of --runs);
- first image: process start → the first 64×64 image shown in the page, clicking Generate in headless chromium.

Targets (issue 6): page ≤ 6 s warm, first 64² image ≤ 10 s after start. Uses tiny checkpoints unless --ckpt-dir.
The load average is printed before and after: on a shared machine the numbers scale with it.
Run: python bench/bench_startup.py [--ckpt-dir DIR] [--runs 3] [--steps 4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.system_deps import ensure_chromium  # noqa: E402
from tests.webui_server import REPO, free_port, launch_args, stop_process, wait_for_http, write_models  # noqa: E402

PAGE_TARGET_S, IMAGE_TARGET_S = 6.0, 10.0
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def start(root: Path, dirs: dict, skip_install: bool) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    args = launch_args(root, dirs, port)
    if not skip_install:
        args.remove("--skip-install")
    env = {**os.environ, "COMMANDLINE_ARGS": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return process, f"http://127.0.0.1:{port}", started


def time_to_page(root: Path, dirs: dict, skip_install: bool) -> float:
    process, url, started = start(root, dirs, skip_install)
    try:
        wait_for_http(url + "/", process, timeout=300)
        return time.perf_counter() - started
    finally:
        stop_process(process)


def time_to_first_image(root: Path, dirs: dict, browser, steps: int) -> tuple[float, float]:
    """(seconds to the page, seconds to the first image), both from process start."""
    process, url, started = start(root, dirs, skip_install=True)
    try:
        wait_for_http(url + "/", process, timeout=300)
        page_s = time.perf_counter() - started
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(300_000)
        page.goto(url + "/")
        for name, value in (("width", 64), ("height", 64), ("steps", steps)):
            box = page.locator(f"#txt2img_{name} input[type=number]")
            box.fill(str(value))
            box.press("Enter")
        page.fill("#txt2img_prompt textarea", "a red circle on a blue background")
        page.click("#txt2img_generate")
        page.wait_for_selector("#txt2img_info .sd-infotext, #txt2img_info .sd-error")
        image_s = time.perf_counter() - started
        if page.locator("#txt2img_info .sd-error").count():
            raise RuntimeError(page.inner_text("#txt2img_info"))
        page.close()
        return page_s, image_s
    finally:
        stop_process(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-dir", type=Path, default=None, help="checkpoints to use (default: tiny ones)")
    parser.add_argument("--runs", type=int, default=3, help="warm starts to time (median reported)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of the first image")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root = Path(tmp)
        dirs = write_models(root)
        if args.ckpt_dir:
            dirs["ckpt"] = args.ckpt_dir.resolve()
        cold = time_to_page(root, dirs, skip_install=False)
        warm = statistics.median(time_to_page(root, dirs, skip_install=True) for _ in range(args.runs))
        chromium = ensure_chromium()
        image = None
        if chromium is None:
            print("first image: skipped (no chromium; see the log for why)")
        else:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS, headless=True)
                _, image = time_to_first_image(root, dirs, browser, args.steps)
                browser.close()
    loads = " ".join(f"{x:.1f}" for x in load_before), " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1/5/15 min): {loads[0]} before, {loads[1]} after, on {os.cpu_count()} cores")
    print(f"cold start to HTTP 200 on /:             {cold:6.2f} s")
    print(f"warm start (--skip-install), median {args.runs}: {warm:6.2f} s   target {PAGE_TARGET_S:.0f} s, "
          f"ratio {warm / PAGE_TARGET_S:.2f}")
    if image is not None:
        print(f"start to first 64x64 image via the UI:   {image:6.2f} s   target {IMAGE_TARGET_S:.0f} s, "
              f"ratio {image / IMAGE_TARGET_S:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

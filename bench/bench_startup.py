"""Start-up benchmark of the web UI server (the real ``launch.py`` process).

- cold start: process start → HTTP 200 on "/" (launcher checks dependencies; fresh data folder);
- warm start: the same with ``--skip-install`` and the data folder of an earlier run (median of --runs);
- first image: process start → the first 64×64 image, (a) through the UI's HTTP API (``--api``,
  ``POST /sdapi/v1/txt2img`` sent as soon as the server answers) and (b) shown in the page at 1440×900, typing the
  prompt and clicking Generate with the page's own defaults (the model's size, 20 steps) in headless chromium as
  soon as the controls are shown (the browser shares the machine's cores with the server);
- UI latency, in the same page: the median time from a click to its result for tab switches (txt2img → img2img →
  PNG Info → txt2img) and for pasting generation parameters (Read parameters until the fields are filled).

Targets: page ≤ 6 s warm, first 64² image ≤ 10 s after start (issues 6 and 14), tab switch and paste ≤ 300 ms
(issue 14). Uses the bundled demo model unless --ckpt-dir.
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

PAGE_TARGET_S, IMAGE_TARGET_S, ACTION_TARGET_MS = 6.0, 10.0, 300.0
PASTED = ("a small blue square on a yellow background\nSteps: 9, Sampler: Euler, CFG scale: 5, Seed: {seed}, "
          "Size: 64x64")
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


def time_to_first_image(root: Path, dirs: dict, browser, repeats: int) -> tuple[dict[str, float], dict]:
    """Seconds from process start to: HTTP 200, the page's controls shown, the first image with the page's
    defaults; then the tab-switch and paste latencies (ms, ``repeats`` of each)."""
    process, url, started = start(root, dirs, skip_install=True)
    marks = {}

    def mark(name: str) -> None:
        marks[name] = time.perf_counter() - started

    try:
        wait_for_http(url + "/", process, timeout=300)
        mark("HTTP 200 on /")
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(300_000)
        page.goto(url + "/")
        page.wait_for_selector("#txt2img_generate")
        mark("page controls shown")
        page.fill("#txt2img_prompt textarea", "a large red circle on a blue background")
        page.click("#txt2img_generate")  # at once, as a user would: the job waits behind the model load
        page.wait_for_selector("#txt2img_info .sd-infotext, #txt2img_info .sd-error")
        mark("first image")
        if page.locator("#txt2img_info .sd-error").count():
            raise RuntimeError(page.inner_text("#txt2img_info"))
        latencies = {"tab switch": tab_switches(page, repeats), "paste": pastes(page, repeats)}
        page.close()
        return marks, latencies
    finally:
        stop_process(process)


def _timed(action, done) -> float:
    began = time.perf_counter()
    action()
    done()
    return (time.perf_counter() - began) * 1000


def tab_switches(page, repeats: int) -> list[float]:
    """Milliseconds from a tab click until that tab's main control is visible."""
    out = []
    for _ in range(repeats):
        for name, shown in (("img2img", "#img2img_generate"), ("PNG Info", "#pnginfo_image"),
                            ("txt2img", "#txt2img_generate")):
            tab = page.get_by_role("tab", name=name).first
            out.append(_timed(tab.click, lambda shown=shown: page.wait_for_selector(shown, state="visible")))
    return out


def pastes(page, repeats: int) -> list[float]:
    """Milliseconds from Read parameters until the pasted seed is in its field."""
    out = []
    for seed in range(1000, 1000 + repeats):
        page.fill("#txt2img_prompt textarea", PASTED.format(seed=seed))
        out.append(_timed(lambda: page.click("#txt2img_read_params"), lambda seed=seed: page.wait_for_function(
            f"() => document.querySelector('#txt2img_seed input').value === '{seed}'")))
    return out


def time_to_first_api_image(root: Path, dirs: dict, steps: int) -> dict[str, float]:
    """Seconds from process start (with --api) to HTTP 200 and to the first image of ``POST /sdapi/v1/txt2img``
    sent as soon as the server answers (it waits behind the model load)."""
    import json
    import urllib.request

    port = free_port()
    args = [*launch_args(root, dirs, port), "--api"]
    env = {**os.environ, "COMMANDLINE_ARGS": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/", process, timeout=300)
        marks = {"HTTP 200 on /": time.perf_counter() - started}
        body = json.dumps({"prompt": "a red circle on a blue background", "width": 64, "height": 64,
                           "steps": steps}).encode()
        request = urllib.request.Request(url + "/sdapi/v1/txt2img", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            if not json.loads(response.read())["images"]:
                raise RuntimeError("no image in the response")
        marks["first image"] = time.perf_counter() - started
        return marks
    finally:
        stop_process(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-dir", type=Path, default=REPO / "models" / "Stable-diffusion",
                        help="checkpoints to use (default: the bundled demo model)")
    parser.add_argument("--runs", type=int, default=3, help="warm starts to time (median reported)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of the first image via the API")
    parser.add_argument("--repeats", type=int, default=10, help="tab switch rounds and pastes to time")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root = Path(tmp)
        dirs = write_models(root)
        dirs["ckpt"] = args.ckpt_dir.resolve()
        cold = time_to_page(root, dirs, skip_install=False)
        warm = statistics.median(time_to_page(root, dirs, skip_install=True) for _ in range(args.runs))
        api_marks = time_to_first_api_image(root, dirs, args.steps)
        chromium = ensure_chromium()
        image = None
        if chromium is None:
            print("first image: skipped (no chromium; see the log for why)")
        else:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS, headless=True)
                marks, latencies = time_to_first_image(root, dirs, browser, args.repeats)
                browser.close()
            image = marks["first image"]
    loads = " ".join(f"{x:.1f}" for x in load_before), " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1/5/15 min): {loads[0]} before, {loads[1]} after, on {os.cpu_count()} cores")
    print(f"cold start to HTTP 200 on /:             {cold:6.2f} s")
    print(f"warm start (--skip-install), median {args.runs}: {warm:6.2f} s   target {PAGE_TARGET_S:.0f} s, "
          f"ratio {warm / PAGE_TARGET_S:.2f}")
    print(f"start to HTTP 200 with --api:           {api_marks['HTTP 200 on /']:6.2f} s")
    print(f"start to first 64x64 image via the API: {api_marks['first image']:6.2f} s   target "
          f"{IMAGE_TARGET_S:.0f} s, ratio {api_marks['first image'] / IMAGE_TARGET_S:.2f}")
    if image is not None:
        for name, seconds in marks.items():
            print(f"  first-image run, {name + ':':25s} {seconds:6.2f} s")
        print(f"start to first image via the UI (page defaults): {image:6.2f} s   target {IMAGE_TARGET_S:.0f} s, "
              f"ratio {image / IMAGE_TARGET_S:.2f}")
        for name, values in latencies.items():
            median = statistics.median(values)
            print(f"{name} latency, median of {len(values)}: {median:6.0f} ms (max {max(values):.0f})   target "
                  f"{ACTION_TARGET_MS:.0f} ms, ratio {median / ACTION_TARGET_MS:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

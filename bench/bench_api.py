"""HTTP API overhead and throughput: txt2img through ``/sdapi/v1`` versus a direct ``run_job`` in the same process.

A uvicorn server runs the API app in a thread of this process over tiny checkpoints (or ``--ckpt``, e.g. the demo
model); direct and HTTP runs alternate so that background load affects both alike. Then ``--concurrent`` requests
with different seeds are sent at once and the images per second are reported, next to the same jobs run directly
one after another.
Run: python bench/bench_api.py [--steps 20] [--size 64] [--repeats 5] [--concurrent 20] [--ckpt PATH]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def start_server(state):
    """Serve the API app (router + security) on a free loopback port in a daemon thread; returns its base URL."""
    import uvicorn

    from tests.api_server import build_app, free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/sdapi/v1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--concurrent", type=int, default=20)
    ap.add_argument("--ckpt", type=Path, help="a checkpoint to use instead of the tiny one (e.g. the demo model)")
    args = ap.parse_args()

    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars between the printed numbers
    import httpx

    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job
    from tests.api_server import build_state

    root = Path(tempfile.mkdtemp(prefix="bench-api-"))
    state = build_state(root, ["--nowebui"])
    if args.ckpt:
        target = state.options.ckpt_dir / args.ckpt.name
        target.symlink_to(args.ckpt.resolve())
        state.checkpoints.refresh()
        state.settings.update({"sd_model_checkpoint": args.ckpt.name})
        state.models.load(args.ckpt.name)
    url = start_server(state)
    body = {"prompt": "a red circle on a blue background", "negative_prompt": "blurry", "steps": args.steps,
            "width": args.size, "height": args.size, "sampler_name": "Euler a", "cfg_scale": 7}

    def direct(seed: int):
        start = time.perf_counter()
        fields = {**body, "seed": seed, "do_not_save_samples": True, "do_not_save_grid": True}
        run_job(state, Txt2ImgParams(**fields))
        return time.perf_counter() - start

    client = httpx.Client(timeout=600)

    def over_http(seed: int):
        start = time.perf_counter()
        response = client.post(f"{url}/txt2img", json={**body, "seed": seed})
        response.raise_for_status()
        return time.perf_counter() - start

    direct(0), over_http(0)  # warm-up: model caches, previewer, first request
    direct_times, http_times = [], []
    for i in range(args.repeats):
        direct_times.append(direct(i + 1))
        http_times.append(over_http(i + 1))
    d, h = statistics.median(direct_times), statistics.median(http_times)
    name = args.ckpt.name if args.ckpt else "tiny SD1"
    print(f"model {name}, {args.size}x{args.size}, {args.steps} steps, Euler a, {args.repeats} runs each (median)")
    print(f"  direct run_job : {d * 1000:8.1f} ms  (runs: {', '.join(f'{t * 1000:.0f}' for t in direct_times)})")
    print(f"  HTTP txt2img   : {h * 1000:8.1f} ms  (runs: {', '.join(f'{t * 1000:.0f}' for t in http_times)})")
    print(f"  API overhead   : {(h - d) * 1000:8.1f} ms  ({(h / d - 1) * 100:+.1f} %)")

    seeds = range(100, 100 + args.concurrent)
    start = time.perf_counter()
    for seed in seeds:
        direct(seed)
    sequential = time.perf_counter() - start

    def one(seed: int):
        with httpx.Client(timeout=600) as own:
            own.post(f"{url}/txt2img", json={**body, "seed": seed}).raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrent) as pool:
        list(pool.map(one, seeds))
    concurrent = time.perf_counter() - start
    print(f"{args.concurrent} concurrent HTTP requests: {concurrent:6.2f} s = {args.concurrent / concurrent:6.2f} images/s")
    print(f"{args.concurrent} direct jobs in a row  : {sequential:6.2f} s = {args.concurrent / sequential:6.2f} images/s"
          f"  (HTTP/direct throughput {sequential / concurrent:.2f})")


if __name__ == "__main__":
    main()

"""What the live preview costs per sampling step: txt2img on the bundled demo model (64², 20 steps, DPM++ 2M Karras,
the default "Auto" preview = a VAE decode at this size), watched (a poller reads the preview before every step, as
the web UI's poll or /sdapi/v1/progress with images does) and unwatched (the CLI, an API client that only waits).
The two run in turn ``--rounds`` times after a warm-up; the median seconds per step of each is reported.

    python bench/bench_preview_cost.py [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS = 20


def seconds_per_step(state, watched: bool) -> float:
    from modules.hooks import HookPoint, HookRegistry
    from modules.processing.params import Txt2ImgParams
    from modules.processing.progress import JobProgress
    from modules.processing.runner import run_job

    progress, hooks = JobProgress(), HookRegistry()
    if watched:
        hooks.register(HookPoint.AFTER_CFG, lambda _e: progress.preview, "poller")
    params = Txt2ImgParams(prompt="a large red circle on a blue background", seed=1, steps=STEPS, width=64, height=64,
                           sampler_name="DPM++ 2M", scheduler="Karras", do_not_save_samples=True,
                           do_not_save_grid=True)
    start = time.perf_counter()
    run_job(state, params, progress, extra_hooks=hooks)
    assert (progress.preview_step == STEPS) == watched
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from bench.bench_demo_quality import DEMO, make_state

    torch.set_num_threads(args.threads)
    state = make_state(DEMO, Path(tempfile.mkdtemp()))
    seconds_per_step(state, True)  # warm-up
    times: dict[str, list[float]] = {"watched": [], "unwatched": []}
    for _ in range(args.rounds):
        for name, seen in times.items():
            seen.append(seconds_per_step(state, name == "watched"))
    report = {name: round(statistics.median(t) * 1000, 2) for name, t in times.items()}
    report["watched_over_unwatched"] = round(report["watched"] / report["unwatched"], 2)
    print(json.dumps({"ms_per_step": report, "rounds": args.rounds, "threads": args.threads}))


if __name__ == "__main__":
    main()

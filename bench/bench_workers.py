"""Generation workers (issue 21): images per minute for a batch of demo-model jobs in the app's process, on one
worker and on two, and the per-job dispatch overhead of a worker against the app's process.

Throughput: ``--jobs`` jobs queued at once (different seeds, one image each) through the app's queue, as the UI and
API queue them; wall time from the first submit to the last result. One worker gets all ``--cpus`` CPUs as torch
threads, two workers half each (on a GPU cluster each worker has its own GPU instead).
Overhead: the same jobs one after another, each waited for, on one worker: the app's time for each job less the
worker's own time for it (``WorkerPool.handoffs``: request and images through Ray, the progress relay; the file
writes are left out, the app's process makes them too). Also the difference of the mean job times against the app's
process at the same torch threads (the same measure, with the noise of two compute runs). Target: ≤ 50 ms per job.
Run: python bench/bench_workers.py [--jobs 16] [--steps 10] [--size 64] [--cpus N]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules import scripts
from modules.app_state import create_state
from modules.cmd_args import REPO_ROOT, parse_command_line
from modules.extensions import load_extensions
from modules.processing.params import Txt2ImgParams

DEMO = "demo-shapes.safetensors"


def make_state(data: Path):
    state = create_state(parse_command_line(["--data-dir", str(data), "--device", "cpu"]).options)
    state.settings.update({"sd_model_checkpoint": DEMO})
    load_extensions(state, [REPO_ROOT / "extensions"])
    state.models.load(DEMO)
    return state


def params(args, seed: int) -> Txt2ImgParams:
    return Txt2ImgParams(prompt="a large red circle on a blue background", seed=seed, steps=args.steps,
                         width=args.size, height=args.size, sampler_name="DPM++ 2M", scheduler="Karras")


def queued_at_once(state, args) -> float:
    """Seconds for ``args.jobs`` jobs queued together."""
    started = time.perf_counter()
    jobs = [scripts.submit(state, params(args, 1000 + i)) for i in range(args.jobs)]
    for job in jobs:
        job.wait(600)
    return time.perf_counter() - started


def one_by_one(state, args, count: int) -> list[float]:
    """Each job's seconds, submitted after the previous one ended."""
    times = []
    for i in range(count):
        started = time.perf_counter()
        scripts.submit(state, params(args, 2000 + i)).wait(600)
        times.append(time.perf_counter() - started)
    return times


def with_workers(state, args, count: int, threads: int):
    from modules.workers.pool import PoolSettings, start_workers

    pool = start_workers(state, PoolSettings(count=count, local_cpus=args.cpus, threads=threads))
    if not pool.wait_ready(900):
        raise SystemExit(f"workers did not start: {pool.status()}")
    return pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--overhead-jobs", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    state = make_state(Path(tempfile.mkdtemp(prefix="bench-workers-")))
    torch.set_num_threads(args.cpus)
    queued_at_once(state, argparse.Namespace(**{**vars(args), "jobs": 2}))  # warm-up
    here = queued_at_once(state, args)
    half = max(1, args.cpus // 2)
    torch.set_num_threads(half)  # the overhead is compared at the same threads as one of two workers
    one_by_one(state, args, 2)
    here_each = one_by_one(state, args, args.overhead_jobs)

    rates = {}
    for count in (1, 2):
        threads = args.cpus // count
        pool = with_workers(state, args, count, threads if count == 2 else half)
        try:
            one_by_one(state, args, 2)  # warm-up (first jobs on a worker)
            if count == 1:
                pool.handoffs.clear()
                worker_each = one_by_one(state, args, args.overhead_jobs)
                handoffs = list(pool.handoffs)
                pool.close()
                pool = with_workers(state, args, 1, threads)
                one_by_one(state, args, 2)
            rates[count] = queued_at_once(state, args)
        finally:
            pool.close()

    def per_minute(seconds: float) -> float:
        return args.jobs * 60 / seconds

    difference = statistics.mean(worker_each) - statistics.mean(here_each)
    print(f"{args.jobs} jobs of {args.steps} steps at {args.size}x{args.size}, {args.cpus} CPUs")
    print(f"app's process:  {per_minute(here):7.1f} images/min ({here:.1f} s)")
    for count, seconds in rates.items():
        print(f"{count} worker{'s' if count > 1 else ' '}:      {per_minute(seconds):7.1f} images/min ({seconds:.1f} s)")
    print(f"2 workers / 1 worker: {rates[1] / rates[2]:.2f}x")
    print(f"one job at a time ({half} torch threads): app's process {statistics.mean(here_each) * 1000:.0f} ms, "
          f"worker {statistics.mean(worker_each) * 1000:.0f} ms")
    print(f"dispatch overhead: {statistics.mean(handoffs) * 1000:.1f} ms per job (median "
          f"{statistics.median(handoffs) * 1000:.1f}, max {max(handoffs) * 1000:.1f}; target <= 50 ms); "
          f"difference of the job times: {difference * 1000:.0f} ms")


if __name__ == "__main__":
    main()

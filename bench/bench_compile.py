"""``--compile`` on this machine: the first job's compile time, the steady per-step ratio compiled / uncompiled, and
the first job of a second start that finds inductor's cache (a fresh process over the same data folder).

txt2img through run_job at the machine's default precision (DPM++ 2M Karras, CFG 7); the bundled demo model at 64²
by default (``--ckpt`` for another checkpoint, e.g. the SD1.5-size one bench_models.py writes, with ``--size``).
Run: python bench/bench_compile.py [--ckpt FILE] [--size 64] [--steps 20] [--data DIR]
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO = ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"


def timed_job(state, size: int, steps: int) -> tuple[float, float, float]:
    """(seconds to the first step's end, median seconds per later step, end-to-end seconds) of one job."""
    from modules.hooks import HookPoint, HookRegistry
    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job

    stamps: list[float] = []
    hooks = HookRegistry()
    hooks.register(HookPoint.AFTER_CFG, lambda e: stamps.append(time.perf_counter()), "bench")
    start = time.perf_counter()
    run_job(state, Txt2ImgParams(prompt="a red circle on a blue background", negative_prompt="blurry", steps=steps,
                                 width=size, height=size, sampler_name="DPM++ 2M", scheduler="Karras", seed=1,
                                 do_not_save_samples=True, do_not_save_grid=True), extra_hooks=hooks)
    total = time.perf_counter() - start
    return stamps[0] - start, statistics.median(b - a for a, b in itertools.pairwise(stamps)), total


def app_state(ckpt: Path, data: Path, compile_flag: bool):
    from modules.app_state import create_state
    from modules.cmd_args import parse_command_line

    flags = ["--ckpt", str(ckpt), "--ckpt-dir", str(data / "none"), "--data-dir", str(data), "--device", "cpu"]
    state = create_state(parse_command_line(flags + (["--compile"] if compile_flag else [])).options)
    state.models.load(ckpt.name)
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=DEMO)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--data", type=Path, help="data folder (its cache/torchinductor is reused)")
    ap.add_argument("--second-start", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="sd-bench-compile-"))
    ckpt = args.ckpt.resolve()
    if args.second_start:
        started = time.perf_counter()
        state = app_state(ckpt, data, True)
        first, step, _ = timed_job(state, args.size, args.steps)
        print(json.dumps({"start": time.perf_counter() - started - first, "first_step": first, "step": step}))
        return

    eager = app_state(ckpt, data / "eager", False)
    timed_job(eager, args.size, 3)  # warm-up
    _, eager_step, eager_total = timed_job(eager, args.size, args.steps)
    del eager
    state = app_state(ckpt, data, True)
    first, _, _ = timed_job(state, args.size, args.steps)
    _, step, total = timed_job(state, args.size, args.steps)
    print(f"{ckpt.name} at {args.size}², {args.steps} steps, precision {state.plan.precision}")
    print(f"  uncompiled: {eager_step:.3f} s/step, {eager_total:.2f} s end-to-end")
    print(f"  compiled: first step of the first job (compiling) {first:.1f} s; then {step:.3f} s/step, "
          f"{total:.2f} s end-to-end | ratio per step {step / eager_step:.3f}, end-to-end {total / eager_total:.3f}")
    child = subprocess.run([sys.executable, __file__, "--ckpt", str(ckpt), "--size", str(args.size), "--steps",
                            str(args.steps), "--data", str(data), "--second-start"], capture_output=True, text=True,
                           check=True)
    second = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"  second start (inductor's cache in {data / 'cache' / 'torchinductor'}): first step "
          f"{second['first_step']:.1f} s (against {first:.1f} s), then {second['step']:.3f} s/step")


if __name__ == "__main__":
    main()

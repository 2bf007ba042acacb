"""txt2img speed versus diffusers' StableDiffusionPipeline on the same SD1.5-size weights, sampler and latents.

Reports seconds per step, end-to-end seconds and the RSS peak during each run, for our engine and for diffusers,
after an untimed 3-step warm-up of each at every size, alternating the two (and who goes first) so that background
load and warm-up effects affect both alike. Weights are random (fp16 file, loaded in the
device's dtype); the work per step is that of a real SD1.5.
With ``--ngms SIGMA`` ours also runs with A1111's "Negative Guidance minimum sigma" (off by default, as in A1111):
the uncond pass is left out on every other step below that sigma; reported as an extra end-to-end ratio.
Run: python bench/bench_engine.py [--sizes 256 512] [--steps 20] [--repeats 2] [--device cpu|cuda] [--ngms 1.0]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_models import write_sd15  # noqa: E402


class PeakRss:
    """Samples this process's RSS in a thread while a block runs."""

    def __enter__(self):
        import psutil

        self._proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.base = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, help="folder for the generated checkpoint (reused if present)")
    ap.add_argument("--ngms", type=float, default=0.0, help="also time ours with this NGMS sigma (0: not)")
    args = ap.parse_args()

    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from modules.app_state import create_state
    from modules.clip_tokenizer import load_clip_tokenizer
    from modules.cmd_args import parse_command_line
    from modules.hooks import HookPoint, HookRegistry
    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job

    folder = args.keep or Path(tempfile.mkdtemp(prefix="sd-bench-engine-"))
    ckpt_dir = folder / "ckpt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if not (ckpt_dir / "sd15.safetensors").exists():
        write_sd15(ckpt_dir / "sd15.safetensors", 0)
    options = parse_command_line(["--ckpt-dir", str(ckpt_dir), "--data-dir", str(folder / "data"), "--device", args.device]).options
    state = create_state(options)
    model = state.models.load("sd15")
    state.hashes.get(model.source)  # let the background hash of the checkpoint finish before anything is timed
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2)
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=load_clip_tokenizer(),
                                   unet=model.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt, negative = "a photo of a cat, highly detailed", "blurry"
    print(f"device {args.device}, dtype {state.plan.dtype}, torch threads {torch.get_num_threads()}, steps {args.steps}")

    for size in args.sizes:
        latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
        rows = {"ours": [], "diffusers": [], "ours+NGMS": []}

        def run_ours(steps: int, ngms: float = 0.0):
            stamps: list[float] = []
            hooks = HookRegistry()
            hooks.register(HookPoint.AFTER_CFG, lambda e: stamps.append(time.perf_counter()), "bench")
            hooks.register(HookPoint.BEFORE_SAMPLING,
                           lambda b: setattr(b, "latents", latents * (1 + float(b.sigmas[0]) ** 2) ** 0.5), "bench")
            with PeakRss() as mem:
                t = time.perf_counter()
                run_job(state, Txt2ImgParams(prompt=prompt, negative_prompt=negative, steps=steps, width=size,
                                             height=size, sampler_name="DPM++ 2M", scheduler="Karras",
                                             s_min_uncond=ngms, do_not_save_samples=True, do_not_save_grid=True),
                        extra_hooks=hooks)
                total = time.perf_counter() - t
            return total, statistics.median(b - a for a, b in zip(stamps, stamps[1:])), mem.peak

        def run_diffusers(steps: int):
            marks: list[float] = []
            with PeakRss() as mem, torch.inference_mode():
                t = time.perf_counter()
                pipe(prompt, negative_prompt=negative, num_inference_steps=steps, height=size, width=size,
                     latents=latents.clone(),
                     callback_on_step_end=lambda p, i, ts, kw: (marks.append(time.perf_counter()), kw)[1])
                total = time.perf_counter() - t
            return total, statistics.median(b - a for a, b in zip(marks, marks[1:])), mem.peak

        runners = {"ours": run_ours, "diffusers": run_diffusers}
        if args.ngms:
            runners["ours+NGMS"] = lambda steps: run_ours(steps, args.ngms)
        for run in runners.values():  # untimed warm-up at this size: the first run pays for kernel and memory set-up
            run(3)
        for repeat in range(args.repeats):  # alternate who goes first
            for name in (list(runners) if repeat % 2 == 0 else list(reversed(runners))):
                rows[name].append(runners[name](args.steps))
        med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in rows.items() if v}
        o, d = med["ours"], med["diffusers"]
        print(f"{size}x{size}: ours {o[1]:.3f} s/step, {o[0]:.2f} s end-to-end, peak RSS {o[2] / 2**30:.2f} GiB | "
              f"diffusers {d[1]:.3f} s/step, {d[0]:.2f} s, peak RSS {d[2] / 2**30:.2f} GiB | "
              f"ratio per step {o[1] / d[1]:.3f}, end-to-end {o[0] / d[0]:.3f}")
        if args.ngms:
            n = med["ours+NGMS"]
            print(f"  with NGMS {args.ngms}: ours {n[0]:.2f} s end-to-end, ratio end-to-end {n[0] / d[0]:.3f}")
        if args.device != "cpu":
            print(f"  it/s: ours {1 / o[1]:.2f}, diffusers {1 / d[1]:.2f}")


if __name__ == "__main__":
    main()

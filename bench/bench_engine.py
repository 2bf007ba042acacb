"""txt2img speed versus diffusers' StableDiffusionPipeline on the same SD1.5-size weights, sampler and latents.

Reports seconds per step (median, and the fastest step: the better estimate on a machine others load too),
end-to-end seconds and the RSS peak during each run, for our engine and for diffusers,
after an untimed 3-step warm-up of each at every size, alternating them (and who goes first) so that background
load and warm-up effects affect all alike. Weights are random (fp16 file); the work per step is that of a real SD1.5.

``--precision default`` (the default): ours as it starts on this machine (on a CPU with native bf16: UNet, text
encoder and VAE in bf16, channels_last, convolution weights kept blocked) against diffusers' default pipeline (fp32,
its own copy of the weights) and against diffusers forced to ours' dtype and layout (its own copy of the weights in
bf16 channels_last, plain convolutions) — so that the gain is shown to be more than the dtype. ``--precision full``: both in fp32 on the same modules (the parity measurement).
With ``--ngms SIGMA`` ours also runs with A1111's "Negative Guidance minimum sigma" (off by default, as in A1111):
the uncond pass is left out on every other step below that sigma; reported as an extra end-to-end ratio.
``--token-merging R`` also runs ours with that token_merging_ratio; ``--compile`` compiles our UNet (the first
call's compile time is reported; diffusers' forced-dtype run shares the compiled module, so it is left out).
Run: python bench/bench_engine.py [--sizes 256 512] [--steps 20] [--repeats 2] [--device cpu|cuda] [--ngms 1.0]
                                  [--precision default|full] [--token-merging 0.5] [--compile]
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
    ap.add_argument("--precision", choices=["default", "full"], default="default")
    ap.add_argument("--token-merging", type=float, default=0.0, help="also time ours with this ratio (0: not)")
    ap.add_argument("--compile", action="store_true", help="compile our UNet (--compile)")
    args = ap.parse_args()

    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from modules.app_state import create_state
    from modules.clip_tokenizer import load_clip_tokenizer
    from modules.cmd_args import parse_command_line
    from modules.hooks import HookPoint, HookRegistry
    from modules.models.loader import LoadOptions, load_checkpoint
    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job

    folder = args.keep or Path(tempfile.mkdtemp(prefix="sd-bench-engine-"))
    ckpt_dir = folder / "ckpt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if not (ckpt_dir / "sd15.safetensors").exists():
        write_sd15(ckpt_dir / "sd15.safetensors", 0)
    def app_state(precision: str, *extra: str):
        flags = ["--ckpt-dir", str(ckpt_dir), "--data-dir", str(folder / "data"), "--device", args.device,
                 "--precision", precision, *extra]
        state = create_state(parse_command_line(flags).options)
        state.hashes.get(state.models.load("sd15").source)  # let the background hash finish before any timing
        return state

    def pipeline(model):
        scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2)
        pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoders[0],
                                       tokenizer=load_clip_tokenizer(), unet=model.unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    state = app_state("autocast" if args.precision == "default" else "full", *(["--compile"] if args.compile else []))
    model = state.models.current
    pipes = {}
    if args.precision == "default":
        pipes["diffusers fp32"] = pipeline(app_state("full").models.current)  # its own fp32 copy
        if not args.compile:
            plan = state.plan  # diffusers forced to our dtype and layout, on its own copy with plain convolutions
            pipes[f"diffusers {plan.precision}"] = pipeline(load_checkpoint(
                ckpt_dir / "sd15.safetensors",
                LoadOptions(dtype=plan.dtype, vae_dtype=plan.vae_dtype, channels_last=plan.channels_last)))
    else:
        pipes["diffusers"] = pipeline(model)
    prompt, negative = "a photo of a cat, highly detailed", "blurry"
    print(f"device {args.device}, ours: UNet {state.plan.precision}, VAE {state.plan.vae_dtype}, channels_last "
          f"{state.plan.channels_last}, compile {args.compile}; torch threads {torch.get_num_threads()}, "
          f"steps {args.steps}")

    for size in args.sizes:
        latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
        def run_ours(steps: int, ngms: float = 0.0, merging: float = 0.0):
            stamps: list[float] = []
            hooks = HookRegistry()
            hooks.register(HookPoint.AFTER_CFG, lambda e: stamps.append(time.perf_counter()), "bench")
            hooks.register(HookPoint.BEFORE_SAMPLING,
                           lambda b: setattr(b, "latents", latents * (1 + float(b.sigmas[0]) ** 2) ** 0.5), "bench")
            with PeakRss() as mem:
                t = time.perf_counter()
                run_job(state, Txt2ImgParams(prompt=prompt, negative_prompt=negative, steps=steps, width=size,
                                             height=size, sampler_name="DPM++ 2M", scheduler="Karras",
                                             s_min_uncond=ngms, do_not_save_samples=True, do_not_save_grid=True,
                                             override_settings={"token_merging_ratio": merging}),
                        extra_hooks=hooks)
                total = time.perf_counter() - t
            steps_s = [b - a for a, b in zip(stamps, stamps[1:])]
            return total, statistics.median(steps_s), mem.peak, min(steps_s)

        def run_diffusers(pipe, steps: int):
            marks: list[float] = []
            with PeakRss() as mem, torch.inference_mode():
                t = time.perf_counter()
                pipe(prompt, negative_prompt=negative, num_inference_steps=steps, height=size, width=size,
                     latents=latents.to(pipe.unet.dtype),
                     callback_on_step_end=lambda p, i, ts, kw: (marks.append(time.perf_counter()), kw)[1])
                total = time.perf_counter() - t
            steps_s = [b - a for a, b in zip(marks, marks[1:])]
            return total, statistics.median(steps_s), mem.peak, min(steps_s)

        runners = {"ours": run_ours}
        runners.update({name: (lambda steps, pipe=pipe: run_diffusers(pipe, steps)) for name, pipe in pipes.items()})
        if args.ngms:
            runners["ours+NGMS"] = lambda steps: run_ours(steps, args.ngms)
        if args.token_merging:
            runners[f"ours+ToMe {args.token_merging}"] = lambda steps: run_ours(steps, merging=args.token_merging)
        rows: dict[str, list] = {name: [] for name in runners}
        for name, run in runners.items():  # untimed warm-up at this size: the first run pays for kernel set-up
            t = time.perf_counter()
            run(3)
            if args.compile and name == "ours":
                print(f"  {size}x{size}: first 3-step run of ours (compiles the UNet) {time.perf_counter() - t:.1f} s")
        for repeat in range(args.repeats):  # alternate who goes first
            for name in (list(runners) if repeat % 2 == 0 else list(reversed(runners))):
                rows[name].append(runners[name](args.steps))
        med = {k: tuple(statistics.median(r[i] for r in v) for i in range(4)) for k, v in rows.items() if v}
        o = med["ours"]
        print(f"{size}x{size}: ours {o[1]:.3f} s/step (fastest {o[3]:.3f}), {o[0]:.2f} s end-to-end, "
              f"peak RSS {o[2] / 2**30:.2f} GiB")
        for name, d in med.items():
            if name != "ours":
                print(f"  {name}: {d[1]:.3f} s/step (fastest {d[3]:.3f}), {d[0]:.2f} s end-to-end, peak RSS "
                      f"{d[2] / 2**30:.2f} GiB | ours / {name}: per step {o[1] / d[1]:.3f} (fastest steps "
                      f"{o[3] / d[3]:.3f}), end-to-end {o[0] / d[0]:.3f}")
        if args.device != "cpu":
            print("  it/s: " + ", ".join(f"{name} {1 / d[1]:.2f}" for name, d in med.items()))


if __name__ == "__main__":
    main()

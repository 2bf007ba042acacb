"""Few-step generation on the bundled model: 4-step LCM with the bundled LCM-LoRA at CFG 1 against the 20-step
reference (DPM++ 2M Karras, CFG 7), judged on the same scenes, with images per minute.

Accuracy: one image per scene (seed = scene index) through ``run_job``, as in ``modules.training.lcm_distill``.
Throughput: the same jobs one image at a time, and batches of ``--batch`` images of one prompt (seeds in a row),
the two settings alternating batch by batch so machine load falls on both alike. Issue 18's target: ≥ 90% of the
reference's judged accuracy in a fifth of the time.
Run: python bench/bench_few_step.py [--images 100] [--batch 8] [--batches 6] [--precision full]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def batch_throughput(state, settings, batch: int, batches: int) -> dict[str, float]:
    """Images per minute of each setting over ``batches`` alternating batches of ``batch`` images."""
    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job
    from modules.training.demo_model import evaluation_scenes
    from modules.training.shapes_world import full_caption

    scenes = evaluation_scenes(batches)
    seconds = {s.label: 0.0 for s in settings}
    for i, scene in enumerate(scenes):
        for s in settings:
            params = Txt2ImgParams(prompt=full_caption(scene) + s.suffix, seed=100 * i, steps=s.steps,
                                   cfg_scale=s.cfg_scale, sampler_name=s.sampler, scheduler=s.scheduler, width=64,
                                   height=64, batch_size=batch, do_not_save_samples=True, do_not_save_grid=True)
            start = time.perf_counter()
            run_job(state, params)
            seconds[s.label] += time.perf_counter() - start
    return {label: round(60 * batch * batches / t, 1) for label, t in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--precision", choices=("autocast", "full"), default=None, help="default: the app's")
    args = parser.parse_args()
    from modules.training import lcm_distill
    from modules.training.demo_networks import make_eval_state

    flags = ("--precision", args.precision) if args.precision else ()
    result = lcm_distill.evaluate(lcm_distill.DEFAULT_CKPT, lcm_distill.DEFAULT_OUT, args.images, flags)
    with tempfile.TemporaryDirectory() as tmp:
        state = make_eval_state(Path(tmp), lcm_distill.DEFAULT_CKPT, lora=lcm_distill.DEFAULT_OUT, flags=flags)
        settings = (lcm_distill.REFERENCE, lcm_distill.FEW_STEP)
        batch_throughput(state, settings, args.batch, 1)  # warm-up
        per_minute = batch_throughput(state, settings, args.batch, args.batches)
    result["batch"] = {"size": args.batch, "batches": args.batches, "images_per_minute": per_minute,
                       "time_ratio": round(per_minute[settings[0].label] / per_minute[settings[1].label], 3)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

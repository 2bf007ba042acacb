"""Quality of the bundled demo model, measured through the app's own generation path and the shapes-world judge.

Generates full-caption images (default 200; DPM++ 2M Karras, 20 steps, CFG 7, 64×64) and reports the judge's
accuracy per attribute, then the same at CFG 1, the negative prompt "red" with "a circle", prompt weighting
(red:1.4) vs (red:0.6), img2img at strength 0.3 (shape and position kept) and inpainting (pixels outside the mask
unchanged). Targets (issue 4): shape color ≥ .90, background ≥ .90, shape / position / size ≥ .80. With ``--ngms``
the CFG 7 accuracy is also measured with A1111's NGMS at that sigma (the engine's uncond-skipping speed option).
``--precision full`` computes in fp32 (the default: this machine's default, bf16 on a CPU with native bf16), and
``--token-merging R`` sets the token_merging_ratio setting, to compare their accuracies with a run without.

    python bench/bench_demo_quality.py [--images 200] [--ckpt models/Stable-diffusion/demo-shapes.safetensors]
                                       [--ngms 1.0] [--precision autocast|full] [--token-merging 0.5] [--cfg7-only]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")  # hundreds of short jobs: no per-job progress bars

from modules.training import shapes_world as world  # noqa: E402
from modules.training.judge import ATTRIBUTES, accuracy, judge  # noqa: E402

DEMO = ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"


def make_state(ckpt: Path, data_dir: Path, precision: str = "autocast"):
    """An app state over ``ckpt`` alone (its own folder), with the model loaded."""
    from modules.app_state import create_state
    from modules.cmd_args import parse_command_line

    options = parse_command_line(["--ckpt", str(ckpt), "--ckpt-dir", str(data_dir / "none"), "--data-dir",
                                  str(data_dir), "--device", "cpu", "--precision", precision]).options
    state = create_state(options)
    state.models.load(ckpt.name)
    return state


def generate(state, prompt: str, seed: int, cfg: float = 7.0, negative: str = "", **extra) -> np.ndarray:
    """One 64×64 image through run_job (DPM++ 2M Karras, 20 steps); img2img when ``extra`` has ``init_images``."""
    from modules.processing.params import Img2ImgParams, Txt2ImgParams
    from modules.processing.runner import run_job

    common = dict(prompt=prompt, negative_prompt=negative, seed=seed, steps=20, cfg_scale=cfg, width=64, height=64,
                  sampler_name="DPM++ 2M", scheduler="Karras", do_not_save_samples=True, do_not_save_grid=True)
    params = (Img2ImgParams if "init_images" in extra else Txt2ImgParams)(**common, **extra)
    return np.asarray(run_job(state, params).images[0].convert("RGB"))


def scenes_for(n: int, seed: int) -> list[world.Scene]:
    rng = np.random.default_rng(seed)
    return [world.sample_scene(rng, jitter=False) for _ in range(n)]


def judged_accuracy(state, scenes, cfg: float, **extra) -> dict[str, float]:
    images = [generate(state, world.full_caption(s), seed=i, cfg=cfg, **extra) for i, s in enumerate(scenes)]
    return accuracy(images, scenes)


def redness(image: np.ndarray) -> float:
    """Mean (R − (G + B) / 2) of the pixels that differ from the judged background."""
    img = image.astype(np.float32)
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3)])
    fg = np.sqrt(((img - np.median(border, axis=0)) ** 2).sum(-1)) > 40
    if fg.sum() < 4:
        return 0.0
    px = img[fg]
    return float((px[:, 0] - (px[:, 1] + px[:, 2]) / 2).mean())


def side_measures(state, n: int, report: dict) -> None:
    """The side measurements on ``n`` images each: negative prompt, weighting, img2img, inpainting."""
    colors = [judge(generate(state, "a circle", seed=i, negative="red")).color for i in range(n)]
    report["negative_red_not_red"] = sum(c is not None and c != "red" for c in colors) / n
    print(f"'a circle', negative 'red': non-red shape {report['negative_red_not_red']:.2f} (target ≥ .80)")

    weights = {}
    for w in (1.4, 0.6):
        images = [generate(state, f"a (red:{w}) circle on a blue background", seed=i)
                  for i in range(n)]
        weights[w] = (float(np.mean([redness(im) for im in images])),
                      sum(judge(im).color == "red" for im in images) / n)
    report["weighting"] = {str(w): {"redness": r, "judged_red": f} for w, (r, f) in weights.items()}
    print(f"(red:1.4) redness {weights[1.4][0]:.1f}, judged red {weights[1.4][1]:.2f} | "
          f"(red:0.6) redness {weights[0.6][0]:.1f}, judged red {weights[0.6][1]:.2f}")

    from PIL import Image

    kept = []
    side = scenes_for(n, 99)
    for i, s in enumerate(side):
        init = Image.fromarray(world.render(s, 64))
        out = judge(generate(state, world.full_caption(s), seed=i, init_images=[init], denoising_strength=0.3))
        kept.append(out.shape == s.shape and out.position == s.position)
    report["img2img_0.3_shape_and_position_kept"] = sum(kept) / n
    print(f"img2img strength 0.3: shape and position kept {report['img2img_0.3_shape_and_position_kept']:.2f} "
          "(target ≥ .90)")

    outside = []
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255  # repaint the right half
    for i, s in enumerate(side[:10]):
        original = world.render(s, 64)
        out = generate(state, "a large yellow square on a green background, right", seed=i,
                       init_images=[Image.fromarray(original)], mask=Image.fromarray(mask), mask_blur=0,
                       denoising_strength=1.0, inpainting_fill=1, inpaint_full_res=False)
        outside.append(int(np.abs(out[:, :28].astype(int) - original[:, :28].astype(int)).max()))
    report["inpaint_max_change_outside_mask"] = max(outside)
    print(f"inpainting the right half: largest change left of the mask (4 px margin) {max(outside)}/255")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=DEMO)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--side-images", type=int, default=50, help="images per side measurement")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--ngms", type=float, default=0.0, help="also judge CFG 7 with this NGMS sigma (0: not)")
    ap.add_argument("--precision", choices=["autocast", "full"], default="autocast",
                    help="the --precision flag (autocast: this machine's default, bf16 where the CPU has it)")
    ap.add_argument("--token-merging", type=float, default=0.0, help="the token_merging_ratio setting")
    ap.add_argument("--cfg7-only", action="store_true", help="only the CFG 7 full-caption accuracy (a quick guard)")
    args = ap.parse_args()
    started = time.perf_counter()
    report: dict = {"checkpoint": args.ckpt.name}
    with tempfile.TemporaryDirectory() as tmp:
        state = make_state(args.ckpt.resolve(), Path(tmp), args.precision)
        state.settings.update({"token_merging_ratio": args.token_merging})
        report["precision"] = state.plan.precision
        report["token_merging_ratio"] = args.token_merging
        print(f"precision {state.plan.precision} (VAE {state.plan.vae_dtype}), token merging {args.token_merging}")
        scenes = scenes_for(args.images, 1234)
        for cfg in (7.0,) if args.cfg7_only else (7.0, 1.0):
            report[f"cfg{cfg:g}"] = judged_accuracy(state, scenes, cfg)
            print(f"CFG {cfg:g}, {len(scenes)} full captions: " +
                  ", ".join(f"{a} {report[f'cfg{cfg:g}'][a]:.2f}" for a in ATTRIBUTES), flush=True)
        if args.ngms:
            report["cfg7_ngms"] = judged_accuracy(state, scenes, 7.0, s_min_uncond=args.ngms)
            judged = report["cfg7_ngms"]
            print(f"CFG 7 with NGMS {args.ngms:g}: " + ", ".join(f"{a} {judged[a]:.2f}" for a in ATTRIBUTES))
        if not args.cfg7_only:
            side_measures(state, args.side_images, report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(f"total {report['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

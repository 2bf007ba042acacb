"""Headless generation for scripts and benchmarks: ``python launch.py txt2img --prompt … --out DIR``."""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .cmd_args import LaunchOptions


def _parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"launch.py {kind}", description=f"Generate images ({kind}) and print their paths.")
    p.add_argument("--prompt", default="")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="DPM++ 2M", help="sampler name as in the UI, e.g. 'Euler a' or 'DPM++ 2M Karras'")
    p.add_argument("--scheduler", default="Automatic")
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--n-iter", type=int, default=1)
    p.add_argument("--clip-skip", type=int)
    p.add_argument("--checkpoint", help="checkpoint name, title or hash (default: the start-up default)")
    p.add_argument("--out", type=Path, help="also copy the images into this folder")
    if kind == "img2img":
        p.add_argument("--init-image", type=Path, required=True)
        p.add_argument("--mask", type=Path)
        p.add_argument("--denoising-strength", type=float, default=0.75)
    return p


def run(kind: str, options: LaunchOptions, argv: Sequence[str]) -> int:
    """Parse ``argv``, run one job on the default (or named) checkpoint, print the saved paths."""
    from PIL import Image

    from .app_state import create_state, default_checkpoint
    from .models.safetensors_file import ModelFileError
    from .processing.params import Img2ImgParams, ParamError, Txt2ImgParams
    from .processing.runner import run_job

    args = _parser(kind).parse_args(list(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    state = create_state(options)
    try:
        state.models.load(args.checkpoint or default_checkpoint(state) or "")
    except ModelFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    native = 8 * state.models.current.unet.config.sample_size  # the model's own resolution
    fields = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, sampler_name=args.sampler,
                  scheduler=args.scheduler, cfg_scale=args.cfg_scale, width=args.width or native,
                  height=args.height or native, seed=args.seed, batch_size=args.batch_size, n_iter=args.n_iter,
                  clip_skip=args.clip_skip)
    if kind == "img2img":
        params = Img2ImgParams(**fields, init_images=[Image.open(args.init_image)], denoising_strength=args.denoising_strength,
                               mask=Image.open(args.mask) if args.mask else None)
    else:
        params = Txt2ImgParams(**fields)
    try:
        result = run_job(state, params)
    except ParamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path in result.paths:
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            path = Path(shutil.copy2(path, args.out / path.name))
        print(path)
    return 0

"""How well generated shapes follow a silhouette ControlNet: mean IoU between the control silhouette and the
generated image's foreground, through the real engine (``run_job`` with the ControlNet ``UNET_CALL`` wrapper).

    python -m modules.training.controlnet_eval --controlnet runs/controlnet/latest.safetensors [--images 50]

Prints (and returns) the mean IoU for weight 0 (the plain base model), weight 1, and weight 1 with guidance end
0.3. Prompts name only the colors by default (``--prompts colors``: "a red shape on a blue background"), so the
shape, position and size can only come from the control; ``--prompts full`` uses the complete captions.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from modules.training import shapes_world as world
from modules.training.controlnet_train import DEFAULT_BASE, render_silhouette
from modules.training.judge import foreground_mask

SETTINGS = ({"weight": 0.0, "guidance_end": 1.0}, {"weight": 1.0, "guidance_end": 1.0},
            {"weight": 1.0, "guidance_end": 0.3})


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def evaluation_scenes(n: int, seed: int = 4321) -> list[world.Scene]:
    """``n`` random jittered scenes (fixed by ``seed``): jitter the prompt cannot describe."""
    rng = np.random.default_rng(seed)
    return [world.sample_scene(rng) for _ in range(n)]


def prompt_for(scene: world.Scene, style: str) -> str:
    if style == "full":
        return world.full_caption(scene)
    return f"a {scene.color} shape on a {scene.background} background"


def make_state(base: Path, data_dir: Path):
    """An app state over ``base``'s folder with the base checkpoint loaded (settings kept in ``data_dir``)."""
    from modules.app_state import create_state
    from modules.cmd_args import parse_command_line

    args = ["--ckpt-dir", str(Path(base).parent), "--data-dir", str(data_dir), "--device", "cpu",
            "--skip-install"]
    state = create_state(parse_command_line(args).options)
    state.settings.update({"samples_save": False, "grid_save": False})
    state.models.load(Path(base).name)
    return state


def generate(state, controlnet, scene: world.Scene, seed: int, weight: float, guidance_end: float, prompt: str,
             steps: int = 20, cfg_scale: float = 7.0) -> np.ndarray:
    """One 64² image of ``prompt`` steered by ``scene``'s silhouette (no hook at all when ``weight`` is 0)."""
    from PIL import Image

    from modules.controlnet.apply import ActiveUnit, unet_call_wrapper
    from modules.controlnet.units import ControlUnit
    from modules.hooks import HookPoint, HookRegistry
    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job

    size = 64
    silhouette = render_silhouette(scene, size)
    hooks = HookRegistry()
    if weight > 0:
        unit = ControlUnit(image=Image.fromarray(silhouette), model="eval", weight=weight, guidance_end=guidance_end)
        hooks.register(HookPoint.UNET_CALL, unet_call_wrapper([ActiveUnit(0, unit, controlnet, silhouette)]), "eval")
    params = Txt2ImgParams(prompt=prompt, seed=seed, steps=steps, cfg_scale=cfg_scale, width=size, height=size,
                           sampler_name="DPM++ 2M", scheduler="Karras", do_not_save_samples=True,
                           do_not_save_grid=True)
    return np.asarray(run_job(state, params, extra_hooks=hooks).images[0].convert("RGB"))


def evaluate(controlnet_path: Path, base: Path = DEFAULT_BASE, images: int = 50, prompts: str = "colors",
             settings=SETTINGS, seed: int = 4321) -> list[dict]:
    """Mean IoU (and the share of images with IoU ≥ 0.5) per setting, over ``images`` scenes."""
    import torch

    from modules.controlnet.loader import load_controlnet

    with tempfile.TemporaryDirectory() as data_dir:
        state = make_state(base, Path(data_dir))
        controlnet = load_controlnet(controlnet_path, dtype=torch.float32)
        scenes = evaluation_scenes(images, seed)
        results = []
        for setting in settings:
            started, scores = time.time(), []
            for i, scene in enumerate(scenes):
                image = generate(state, controlnet, scene, seed + i, setting["weight"], setting["guidance_end"],
                                 prompt_for(scene, prompts))
                scores.append(iou(foreground_mask(image), render_silhouette(scene, 64)[..., 0] > 127))
            results.append({**setting, "prompts": prompts, "images": images,
                            "mean_iou": round(float(np.mean(scores)), 4),
                            "share_iou_0.5": round(float(np.mean(np.array(scores) >= 0.5)), 4),
                            "seconds_per_image": round((time.time() - started) / images, 2)})
            print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--controlnet", type=Path, default=Path("runs/controlnet/latest.safetensors"))
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--prompts", choices=("colors", "full"), default="colors")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    evaluate(args.controlnet, args.base, args.images, args.prompts)


if __name__ == "__main__":
    main()

"""Tiling (seamless textures): the image wraps around, for that job only."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from modules.hooks import HookPoint, HookRegistry
from modules.infotext import infotext_to_params, parse_infotext
from modules.processing.params import Txt2ImgParams
from modules.processing.runner import run_job
from tests.engine_fixtures import make_state

JOB = dict(prompt="a texture", steps=3, width=64, height=64, seed=4, sampler_name="Euler", do_not_save_samples=True)


def px(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def seams(a: np.ndarray) -> tuple[float, float]:
    """How much larger the step across the left/right wrap is than the mean step between neighbouring columns, and
    the same for the top/bottom wrap and rows."""
    def ratio(b: np.ndarray) -> float:
        return float(np.abs(b[:, 0] - b[:, -1]).mean() / np.abs(np.diff(b, axis=1)).mean())
    return ratio(a), ratio(a.transpose(1, 0, 2))


def paddings(model) -> set[str]:
    return {m.padding_mode for c in (model.unet, model.vae) for m in c.modules() if isinstance(m, nn.Conv2d)}


def run(state, shifted: bool = False, **extra):
    """A job's first image; ``shifted``: its start latents rolled by half the image (4 latents = 32 pixels)."""
    hooks = HookRegistry()
    if shifted:
        def roll(before) -> None:
            before.latents = torch.roll(before.latents, (4, 4), dims=(-2, -1))
        hooks.register(HookPoint.BEFORE_SAMPLING, roll, "test")
    result = run_job(state, Txt2ImgParams(**JOB, **extra), extra_hooks=hooks)
    return px(result.images[0]), result.infotexts[0]


def test_tiled_image_wraps_around_and_the_model_is_restored(tmp_path):
    state = make_state(tmp_path, {"sd1": "sd1"})
    before, _ = run(state)
    tiled, infotext = run(state, tiling=True)
    tiled_shifted, _ = run(state, shifted=True, tiling=True)
    plain_shifted, _ = run(state, shifted=True)
    after, plain_infotext = run(state)

    # a tiled image is a torus: starting from the rolled noise gives the same image rolled, seam and all
    assert np.abs(np.roll(tiled, (32, 32), axis=(0, 1)) - tiled_shifted).max() <= 2
    assert np.abs(np.roll(before, (32, 32), axis=(0, 1)) - plain_shifted).mean() > 5  # not so without tiling
    assert max(seams(tiled)) < 1.3  # the wrap is a step like any other between neighbouring columns (rows)
    assert "Tiling: True" in infotext and "Tiling" not in plain_infotext
    assert infotext_to_params(parse_infotext(infotext))["tiling"] is True  # pasted back, it is on again
    assert paddings(state.models.current) == {"zeros"}
    assert np.array_equal(after, before)

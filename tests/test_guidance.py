"""Classifier-free guidance over sub-prompts (AND) and over conditionings of different lengths (BREAK, >75 tokens),
checked against hand computations on the rows the UNet really saw (tiny SD1 checkpoint)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.hooks import HookPoint, HookRegistry
from modules.processing.params import Txt2ImgParams
from modules.processing.runner import run_job
from modules.text_encoding import PromptEncoder
from tests.engine_fixtures import make_state


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("guidance"), {"tiny": "sd1"})


def generate(state, prompt: str, negative: str = "", **kw):
    """(image as an array, the first step's UNet rows (denoised, call), the first step's guided result)."""
    rows, guided = [], []
    hooks = HookRegistry()
    hooks.register(HookPoint.AFTER_UNET, lambda a: rows.append((a.denoised.clone(), a.call)), "t")
    hooks.register(HookPoint.AFTER_CFG, lambda c: guided.append(c.denoised.clone()), "t")
    params = Txt2ImgParams(prompt=prompt, negative_prompt=negative, **{
        "steps": 3, "width": 64, "height": 64, "seed": 4, "sampler_name": "Euler", "cfg_scale": 7.0,
        "do_not_save_samples": True, **kw})
    result = run_job(state, params, extra_hooks=hooks)
    return np.asarray(result.images[0].convert("RGB"), dtype=np.float32), rows[0], guided[0]


def test_and_weights_combine_as_composable_diffusion(state):
    _, (denoised, call), guided = generate(state, "a red circle AND a blue square :0.5", "blurry")
    assert call.is_uncond == [False, False, True]
    a, b, uncond = denoised
    torch.testing.assert_close(guided[0], uncond + 7.0 * (1.0 * (a - uncond) + 0.5 * (b - uncond)))
    encoder = PromptEncoder(state.models.current)  # each part encoded on its own, the negative as the uncond
    for row, text in enumerate(("a red circle", "a blue square", "blurry")):
        torch.testing.assert_close(call.context[row], encoder.encode(text).context[0])


def test_a_negative_weight_pushes_away(state):
    _, (denoised, _), guided = generate(state, "a red circle AND a blue square :-0.5", cfg_scale=3.0)
    a, b, uncond = denoised
    torch.testing.assert_close(guided[0], uncond + 3.0 * ((a - uncond) - 0.5 * (b - uncond)))


@pytest.mark.parametrize("prompt, negative", [("a red circle BREAK on a blue background", "blurry"),
                                              ("blurry", "a red circle BREAK on a blue background")])
def test_conditionings_of_different_chunk_counts_share_one_batch(state, prompt, negative):
    _, (_, call), _ = generate(state, prompt, negative)
    encoder = PromptEncoder(state.models.current)
    long, short = (0, 1) if "BREAK" in prompt else (1, 0)
    assert call.context.shape[1] == 2 * 77  # both rows at the longer one's two chunks
    torch.testing.assert_close(call.context[long], encoder.encode("a red circle BREAK on a blue background").context[0])
    # the shorter is padded with the empty prompt's chunk, as A1111 does
    torch.testing.assert_close(call.context[short, :77], encoder.encode("blurry").context[0])
    torch.testing.assert_close(call.context[short, 77:], encoder.encode("").context[0])


def test_words_in_the_second_chunk_change_the_image(state):
    filler = "a red circle " * 26  # 78 tokens: a word after them is the 79th, in the second chunk
    for template in ("a red circle BREAK on a {} background", filler + "{}"):
        blue, green = (generate(state, template.format(color), "blurry") for color in ("blue", "green"))
        assert blue[1][1].context.shape[1] == 2 * 77
        assert (blue[2] - green[2]).abs().max() > 1e-3 and not np.array_equal(blue[0], green[0]), template

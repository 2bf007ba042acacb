"""Token merging (A1111's token_merging_ratio settings) through diffusers' attention-processor interface."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.hooks import HookPoint, HookRegistry
from modules.infotext import infotext_to_settings, parse_infotext
from modules.processing.image_ops import pil_to_tensor
from modules.processing.params import Img2ImgParams, ParamError, Txt2ImgParams
from modules.processing.runner import run_job
from modules.processing.token_merging import MergingProcessor, plan_merge
from tests.engine_fixtures import make_state


def test_merged_cells_come_back_with_their_anchors_values():
    height, width, channels = 6, 4, 8
    patches = torch.randn(2, height // 2, width // 2, channels)  # every 2×2 patch holds one token four times
    x = patches.repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(2, height * width, channels)
    merge = plan_merge(x, height, width, 0.75)
    reduced = merge.reduce(x)
    assert reduced.shape == (2, height * width // 4, channels)  # only the anchors are left
    torch.testing.assert_close(merge.restore(reduced, height * width), x)
    half = plan_merge(torch.randn(2, height * width, channels), height, width, 0.5)
    assert half.reduce(x).shape == (2, height * width - 12, channels)
    assert plan_merge(x, height, width, 0.01) is None  # less than one cell: nothing merges


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("tome"), {"tiny": "sd1"})


def run(state, seen: list | None = None, cls=Txt2ImgParams, **kw):
    hooks = HookRegistry()
    if seen is not None:  # the self-attention processors' kinds while the UNet runs
        hooks.register(HookPoint.BEFORE_UNET, lambda call: seen.append(
            {type(p) for name, p in call.model.unet.attn_processors.items() if name.endswith("attn1.processor")}),
            "test")
    kw = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler",
          "do_not_save_samples": True, "do_not_save_grid": True, **kw}
    return run_job(state, cls(**kw), extra_hooks=hooks)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.float32)


def test_ratio_zero_changes_nothing_and_half_changes_the_image_a_little_for_that_job_only(state):
    unet = state.models.current.unet
    own = unet.attn_processors
    seen_plain, seen_merged = [], []
    plain = run(state, seen_plain)
    zero = run(state, override_settings={"token_merging_ratio": 0})
    merged = run(state, seen_merged, override_settings={"token_merging_ratio": 0.5})
    assert np.array_equal(pixels(plain), pixels(zero))
    assert MergingProcessor not in set.union(*seen_plain) and seen_merged[0] == {MergingProcessor}
    difference = np.abs(pixels(merged) - pixels(plain))
    assert 0 < difference.mean() < 4 and difference.max() < 64  # measured: mean 0.3, max 3 of 255
    assert all(unet.attn_processors[name] is p for name, p in own.items())  # the UNet's own ones, back
    assert not unet._forward_pre_hooks
    parsed = parse_infotext(merged.infotexts[0])
    assert parsed["Token merging ratio"] == "0.5" and "Token merging ratio" not in plain.infotexts[0]
    assert infotext_to_settings(parsed)["token_merging_ratio"] == 0.5  # pasted back: the same setting
    assert infotext_to_settings({"Token merging": "0.3"})["token_merging_ratio"] == 0.3


def test_img2img_has_its_own_ratio_and_bad_ratios_are_refused(state):
    init = run(state).images[0]
    seen = []
    result = run(state, seen, Img2ImgParams, init_images=[init], denoising_strength=0.6,
                 override_settings={"token_merging_ratio_img2img": 0.4})
    assert seen[0] == {MergingProcessor} and "Token merging ratio: 0.4" in result.infotexts[0]
    assert pil_to_tensor(result.images[0]).shape[-1] == 64
    with pytest.raises(ParamError, match="token_merging_ratio"):
        run(state, override_settings={"token_merging_ratio": 1.5})

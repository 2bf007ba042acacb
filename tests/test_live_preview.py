"""The live preview of a job on the bundled demo model: by default a VAE decode that looks like the result."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.bench_demo_quality import DEMO, make_state
from modules.hooks import HookPoint, HookRegistry
from modules.processing.latent_preview import full_decode
from modules.processing.params import Txt2ImgParams
from modules.processing.progress import JobProgress
from modules.processing.runner import run_job
from modules.settings import Settings

PROMPT = "a large red circle on a blue background"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(DEMO, tmp_path_factory.mktemp("demo"))


def previews(state, width: int = 64, height: int = 64, seed: int = 0, steps: int = 20, **settings):
    """Run a job; its live previews in step order (as a UNet call sees them, and the last after the job),
    and its image."""
    progress, seen = JobProgress(), []

    def record(_event) -> None:
        if progress.preview is not None and (not seen or seen[-1][0] != progress.preview_step):
            seen.append((progress.preview_step, progress.preview))

    hooks = HookRegistry()
    hooks.register(HookPoint.AFTER_CFG, record, "test")
    params = Txt2ImgParams(prompt=PROMPT, seed=seed, steps=steps, cfg_scale=7, width=width, height=height,
                           sampler_name="DPM++ 2M", scheduler="Karras", do_not_save_samples=True,
                           do_not_save_grid=True, override_settings=settings)
    image = run_job(state, params, progress, extra_hooks=hooks).images[0]
    record(None)
    return seen, image


def correlation(a, b) -> float:
    """Pearson correlation of two images' RGB values."""
    x, y = (np.asarray(im.convert("RGB"), dtype=np.float64).ravel() for im in (a, b))
    return float(np.corrcoef(x, y)[0, 1])


def test_default_preview_is_the_final_image_in_the_making(state):
    assert Settings().show_progress_type == "Auto"
    seen, image = previews(state)
    assert [step for step, _ in seen] == list(range(1, 21))  # one per step (show_progress_every_n_steps = 1)
    last = seen[-1][1]
    assert last.size == image.size == (64, 64)
    assert correlation(last, image) > 0.99  # the last estimate is the result
    assert correlation(seen[14][1], image) > 0.9  # and three quarters in, it already looks like it


@pytest.mark.parametrize("seed", [0, 1])
def test_full_decode_resembles_the_result_and_the_cheap_mosaic_does_not(state, seed):
    full, image = previews(state, seed=seed, show_progress_type="Full")
    cheap, same = previews(state, seed=seed, show_progress_type="Approx cheap")
    assert np.array_equal(np.asarray(image), np.asarray(same))  # the preview mode does not change the image
    assert full[-1][1].size == cheap[-1][1].size == image.size
    assert correlation(full[-1][1], image) > 0.99
    assert correlation(cheap[-1][1], image) < 0.8


def test_preview_has_the_output_size_in_every_mode(state):
    for mode in ("Auto", "Full", "Approx cheap"):
        seen, image = previews(state, width=96, height=64, steps=4, show_progress_type=mode,
                               show_progress_every_n_steps=2)
        assert [step for step, _ in seen] == [2, 4]
        assert [im.size for _, im in seen] == [image.size] * 2 == [(96, 64)] * 2


def test_auto_decodes_small_images_only_and_not_while_offloading():
    small, large = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 64, 64)
    assert full_decode("Auto", small, offloading=False)
    assert not full_decode("Auto", large, offloading=False)
    assert not full_decode("Auto", small, offloading=True)
    assert full_decode("Full", large, offloading=True) and not full_decode("Approx cheap", small, offloading=False)
    assert full_decode("Approx NN", small, offloading=False) and not full_decode("TAESD", large, offloading=False)


def test_setting_takes_a1111s_modes():
    for mode in ("Full", "Approx NN", "Approx cheap", "TAESD", "Auto"):
        assert Settings().with_overrides({"show_progress_type": mode}).show_progress_type == mode
    with pytest.raises(ValueError, match="show_progress_type"):
        Settings().with_overrides({"show_progress_type": "Fast"})


def test_a_nested_jobs_preview_shows_in_its_parent():
    """A second pass (hires fix) runs as a nested job; the UI reads the parent's progress."""
    parent = JobProgress()
    parent.begin(2, 1)
    child = parent.nested("Hires pass {step}")
    child.advance("step 1")
    child.show_preview("image")
    assert (child.preview, child.preview_step) == ("image", 1)
    assert (parent.preview, parent.preview_step) == ("image", 1)

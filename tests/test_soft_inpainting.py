"""Soft inpainting (the shipped always-on img2img script) on the bundled demo checkpoint: the masked part is redrawn,
pixels far from the mask stay the original's, the seam is softer than plain inpainting's, A1111's positional
arguments and infotext fields, and pasting the infotext back."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.app_state import create_state
from modules.cmd_args import REPO_ROOT, parse_command_line
from modules.extensions import load_extensions
from modules.infotext import parse_infotext
from modules.processing.params import Img2ImgParams
from modules.scripts import infotext_values, run_generation

DEMO = REPO_ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
A1111_DEFAULTS = [True, 1, 0.5, 4, 0, 0.5, 2]  # enabled, schedule bias, preservation, contrast boost, influence, …


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("soft-inpainting")
    options = parse_command_line(["--ckpt", str(DEMO), "--ckpt-dir", str(root / "none"), "--data-dir", str(root),
                                  "--device", "cpu", "--precision", "full"]).options
    state = create_state(options)
    state.models.load(DEMO.name)
    state.settings.update({"samples_save": False})
    load_extensions(state, [REPO_ROOT / "extensions"])
    return state


def _run(state, soft_args, **kw):
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 19, 63), fill=255)  # the left 20 columns are redrawn
    params = Img2ImgParams(prompt="a large red circle on a yellow background", seed=4, steps=4, width=64, height=64,
                           sampler_name="Euler", denoising_strength=0.9, mask=mask, mask_blur=0, inpainting_fill=1,
                           init_images=[Image.new("RGB", (64, 64), (30, 60, 200))], **kw)
    result = run_generation(state, params, alwayson={"soft inpainting": {"args": soft_args}})
    return np.asarray(result.images[0]).astype(int), result.infotexts[0]


def _seam(pixels: np.ndarray) -> float:
    """The largest step between neighbouring columns of the column-mean colour, across the mask's edge."""
    profile = pixels.mean(axis=0)
    return float(np.abs(np.diff(profile, axis=0)).sum(axis=1)[4:56].max())


def test_soft_inpainting_redraws_the_mask_keeps_far_pixels_and_softens_the_seam(state):
    original = np.array([30, 60, 200])
    plain, plain_text = _run(state, [False])
    soft, text = _run(state, A1111_DEFAULTS)

    assert np.abs(soft[:, :12] - original).sum(axis=2).mean() > 100  # the masked part changed
    assert (soft[:, 56:] == original).all()  # far from the mask: the original, bit for bit
    assert _seam(soft) < _seam(plain) / 2, (_seam(soft), _seam(plain))  # measured: ≈ 63 against ≈ 416
    assert "Soft inpainting" not in plain_text

    fields = parse_infotext(text)
    assert fields["Soft inpainting enabled"] == "True"
    assert [fields[f"Soft inpainting {k}"] for k in ("schedule bias", "preservation strength",
                                                    "transition contrast boost", "mask influence",
                                                    "difference threshold", "difference contrast")] == \
        ["1.0", "0.5", "4.0", "0.0", "0.5", "2.0"]
    pasted = infotext_values(state, "img2img", fields)["Soft Inpainting"]
    assert pasted["enabled"] is True and pasted["composite_difference_contrast"] == 2.0

    cropped, _ = _run(state, A1111_DEFAULTS, inpaint_full_res=True, inpaint_full_res_padding=8)  # "Only masked"
    assert (cropped[:, 56:] == original).all() and np.abs(cropped[:, :12] - original).sum(axis=2).mean() > 100
    with pytest.raises(ValueError, match="composite_difference_contrast: 9 is above 8"):
        _run(state, [True, 1, 0.5, 4, 0, 0.5, 9])

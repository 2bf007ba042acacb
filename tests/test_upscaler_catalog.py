"""Upscaler model files: found in A1111's folders, probed through spandrel, unusable ones listed with the reason,
pickles only with --allow-pickle, and a model upscale that gives the asked size (random-weight models in the real
key layouts; the bundled demo upscaler's quality is tested in test_demo_upscaler.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact
from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

from modules.upscaling.upscale import BUILTIN, Tiling, UnknownUpscaler, Upscalers


def _weights(module: torch.nn.Module) -> dict:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("upscalers")
    esrgan, real = root / "ESRGAN", root / "RealESRGAN"
    esrgan.mkdir()
    (real / "sub").mkdir(parents=True)
    save_file(_weights(RRDBNet(in_nc=3, out_nc=3, num_filters=16, num_blocks=1, scale=2)), esrgan / "rrdb-2x.safetensors")
    compact = _weights(SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4))
    save_file(compact, real / "sub" / "compact-4x.safetensors")
    torch.save(compact, esrgan / "pickled-4x.pth")
    (esrgan / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    save_file({"foo.weight": torch.zeros(3, 3)}, esrgan / "not-an-upscaler.safetensors")
    (esrgan / "notes.txt").write_text("not a model")
    return {"ESRGAN": esrgan, "RealESRGAN": real}


def test_usable_files_are_listed_with_architecture_and_scale(folders):
    upscalers = Upscalers(folders)
    found = {i.name: i for i in upscalers.catalog.items()}
    assert "notes" not in found
    assert (found["rrdb-2x"].architecture, found["rrdb-2x"].scale, found["rrdb-2x"].folder) == ("ESRGAN", 2, "ESRGAN")
    assert (found["compact-4x"].scale, found["compact-4x"].folder) == (4, "RealESRGAN")
    assert upscalers.names() == [*BUILTIN, "rrdb-2x", "compact-4x"]
    assert upscalers.scale_of("compact-4x.safetensors") == 4


def test_unusable_files_are_listed_with_their_reason(folders):
    found = {i.name: i for i in Upscalers(folders).catalog.items()}
    assert "--allow-pickle" in found["pickled-4x"].problem
    assert "truncated.safetensors" in found["truncated"].problem
    assert "not an upscaler architecture" in found["not-an-upscaler"].problem
    with pytest.raises(UnknownUpscaler, match="pickled-4x"):
        Upscalers(folders).find("pickled-4x")


def test_pickles_load_with_allow_pickle(folders):
    upscalers = Upscalers(folders, allow_pickle=True)
    assert upscalers.find("pickled-4x").scale == 4
    image = Image.new("RGB", (20, 12), (200, 40, 40))
    assert upscalers.upscale(image, "pickled-4x", (80, 48)).size == (80, 48)


def test_a_model_upscale_reaches_the_asked_size(folders):
    upscalers = Upscalers(folders)
    image = Image.new("RGB", (24, 16), (20, 20, 20))
    out = upscalers.upscale(image, "rrdb-2x", (72, 48), Tiling(tile=16, overlap=4))  # 2× twice, then down to 3×
    assert out.size == (72, 48)
    assert upscalers.upscale(image, "Lanczos", (48, 32)).size == (48, 32)
    assert upscalers.upscale(image, "None", image.size) is image
    with pytest.raises(UnknownUpscaler, match="valid: None, Lanczos, Nearest"):
        upscalers.upscale(image, "R-ESRGAN 4x+", (48, 32))


def test_refresh_sees_a_new_file(folders, tmp_path):
    upscalers = Upscalers({"DAT": tmp_path})
    assert upscalers.names() == list(BUILTIN)
    save_file(_weights(SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)),
              tmp_path / "new-2x.safetensors")
    upscalers.catalog.refresh()
    assert upscalers.names()[-1] == "new-2x"
    image = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    assert upscalers.upscale(image, "new-2x", (16, 16)).size == (16, 16)

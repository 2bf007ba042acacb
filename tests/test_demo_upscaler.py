"""The bundled demo upscaler (models/ESRGAN/demo-shapes-4x.safetensors): Real-ESRGAN compact layout, quality on
held-out shapes-world renders, and the trainer that made it."""
from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import spandrel
import torch
from safetensors import safe_open

from modules.cmd_args import REPO_ROOT
from modules.training import upscaler_train as up

UPSCALER = REPO_ROOT / "models" / "ESRGAN" / "demo-shapes-4x.safetensors"


@pytest.fixture(scope="module")
def model() -> up.CompactUpscaler:
    return up.load_upscaler(UPSCALER)


def test_the_shipped_file_has_the_compact_layout_scale_and_story():
    assert UPSCALER.stat().st_size <= 3 * 1024 * 1024
    with safe_open(str(UPSCALER), "pt") as file:
        keys, metadata = set(file.keys()), file.metadata()
        state = {key: file.get_tensor(key) for key in keys}
    num_feat, num_conv, scale = up.shape_of(state)
    last = 2 * num_conv + 2
    convs = {f"body.{i}.{p}" for i in range(0, last + 1, 2) for p in ("weight", "bias")}
    prelus = {f"body.{i}.weight" for i in range(1, last, 2)}
    assert keys == convs | prelus
    assert scale == 4 and state[f"body.{last}.weight"].shape[0] == 3 * 4 * 4
    assert all(state[key].shape == (num_feat,) for key in prelus)
    assert metadata["modelspec.architecture"] == up.ARCHITECTURE and metadata["upscaler.scale"] == "4"
    assert re.fullmatch(r"\d+", metadata["training.steps"])


def test_it_enlarges_4x_and_beats_lanczos_by_2_db_on_held_out_renders(model):
    pairs = up.heldout_pairs(12, 4, seed=1)  # not the training scenes, nor the ones watched during training
    assert up.upscale(model, pairs[0][0]).shape == (256, 256, 3)
    scores = up.evaluate(model, pairs)
    assert scores["model"] >= scores["lanczos"] + 2.0, scores
    assert scores["lanczos"] > 25.0, scores  # the baseline is a real upscale of the same images


def test_spandrel_detects_it_and_computes_the_same_image(model):
    descriptor = spandrel.ModelLoader().load_from_file(str(UPSCALER))
    assert descriptor.architecture.id == "Compact" and descriptor.scale == 4
    x = torch.from_numpy(up.heldout_pairs(1, 4, seed=2)[0][0]).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        assert torch.allclose(descriptor.model.eval()(x), model(x), atol=1e-4)


def test_an_interrupted_training_resumes_to_the_same_weights_and_exports_a_loadable_file(tmp_path):
    cfg = up.UpscalerConfig(scale=2, num_feat=8, num_conv=1, steps=3, batch=2, pool_size=4, render_sizes=(64, 64),
                            input_crop=16, checkpoint_minutes=60.0)
    up.train(replace(cfg, steps=2), tmp_path / "cut")
    resumed = up.train(cfg, tmp_path / "cut")
    straight = up.train(cfg, tmp_path / "straight")
    assert [json.loads(line)["step"] for line in (tmp_path / "cut" / "eval.jsonl").read_text().splitlines()] == [2, 3]
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    path = up.export(resumed, tmp_path / "tiny-2x.safetensors", cfg, 3)
    image = np.zeros((10, 12, 3), dtype=np.uint8)
    assert up.upscale(up.load_upscaler(path), image).shape == (20, 24, 3)

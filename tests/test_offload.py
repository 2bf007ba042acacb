"""``--medvram`` / ``--lowvram`` as a mechanism test on the CPU (where the flags normally do nothing): the offloader
brings each component, or each block, to the device while it runs, and the image is the one made without it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from modules import text_encoding
from modules.devices import Offloader, _blocks
from modules.processing.params import Txt2ImgParams
from modules.processing.runner import run_job
from tests.engine_fixtures import make_state

PARAMS = dict(prompt="a red circle", negative_prompt="blurry", steps=3, width=64, height=64, seed=8,
              sampler_name="Euler", do_not_save_samples=True)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    # an SDXL model (two text encoders, one projected) and an SD1 one, for --medvram-sdxl
    return make_state(tmp_path_factory.mktemp("offload"), {"tiny": "sdxl", "tiny-sd1": "sd1"}, load="tiny")


@pytest.fixture
def offload(state):
    """Reload the model under an offload mode on the CPU; the plain mode is restored afterwards."""
    plain = state.models.plan

    def switch(mode: str):
        state.models.unload()
        state.models.plan = dataclasses.replace(plain, offload=mode)
        state.models.offloader = Offloader(state.models.plan)
        return state.models.load("tiny")

    yield switch
    switch("none")
    state.models.plan = plain


def image(state) -> np.ndarray:
    return np.asarray(run_job(state, Txt2ImgParams(**PARAMS)).images[0].convert("RGB"))


def test_medvram_keeps_only_the_component_in_use_on_the_device(state, offload, monkeypatch):
    plain = image(state)
    model = offload("medvram")
    offloader = state.models.offloader
    encoding, sampling = [], []
    real = text_encoding.run_text_encoder

    def encode(encoder, *args):
        encoding.append(offloader._active is encoder)
        return real(encoder, *args)

    monkeypatch.setattr(text_encoding, "run_text_encoder", encode)
    handle = model.unet.register_forward_pre_hook(lambda *_: sampling.append(offloader._active is model.unet))
    try:
        assert np.array_equal(image(state), plain)
    finally:
        handle.remove()
    assert encoding and all(encoding) and sampling and all(sampling)
    assert offloader._active is model.vae  # decoding came last


def test_medvram_sdxl_swaps_the_components_of_sdxl_models_only(state, offload):
    plain = image(state)
    model = offload("medvram-sdxl")
    offloader = state.models.offloader
    assert np.array_equal(image(state), plain)
    assert offloader._active is model.vae  # an SDXL model: swapped in one at a time, decoding last
    sd1 = state.models.load("tiny-sd1")
    run_job(state, Txt2ImgParams(**PARAMS))
    assert offloader._active is model.vae  # the SD1 model's components stayed where they were placed
    assert not {id(c) for c in (sd1.unet, sd1.vae, *sd1.text_encoders)} & offloader._swapped


def test_lowvram_moves_the_model_block_by_block(state, offload, monkeypatch):
    plain = image(state)
    model = offload("lowvram")
    moved: dict[int, int] = {}
    real = torch.nn.Module.to

    def to(module, *args, **kwargs):
        moved[id(module)] = moved.get(id(module), 0) + 1
        return real(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    assert np.array_equal(image(state), plain)
    for component in (model.unet, *model.text_encoders):
        blocks = list(_blocks(component))
        assert len(blocks) > 3 and id(component) not in moved  # never the whole component at once …
        used = [moved.get(id(b), 0) for b in blocks]
        assert sum(n >= 2 for n in used) >= len(blocks) - 2, used  # … but (almost) every block, there and back
    assert all(moved.get(id(b), 0) >= 2 for b in model.vae.decoder.up_blocks)

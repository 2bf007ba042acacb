"""``--compile``: the UNet through torch.compile, its cache in the data folder, and the fall-back where torch
refuses to compile (for real: an option inductor does not have)."""
from __future__ import annotations

import logging

import numpy as np

from modules.models.compile import CompileSettings, compile_unet, is_compiled
from modules.processing.params import Txt2ImgParams
from modules.processing.runner import run_job
from tests.engine_fixtures import make_state


def t2i(state):
    params = Txt2ImgParams(prompt="a red circle", steps=3, width=64, height=64, seed=2, sampler_name="Euler",
                           do_not_save_samples=True, do_not_save_grid=True)
    return np.asarray(run_job(state, params).images[0].convert("RGB"), dtype=np.float32)


def test_refused_options_leave_the_unet_uncompiled_with_a_warning(tmp_path, caplog):
    state = make_state(tmp_path, {"tiny": "sd1"})
    before = t2i(state)
    unet = state.models.current.unet
    with caplog.at_level(logging.WARNING, logger="modules.models.compile"):
        assert not compile_unet(unet, CompileSettings(tmp_path / "cache", options=(("no_such_option", 1),)))
    assert "running it uncompiled" in caplog.text and "no_such_option" in caplog.text
    assert not is_compiled(unet)
    assert np.array_equal(t2i(state), before)


def test_the_flag_compiles_each_loaded_unet_with_its_cache_in_the_data_folder(tmp_path):
    state = make_state(tmp_path, {"tiny": "sd1", "other": "sd1"}, flags=["--compile"])
    assert state.options.compile and is_compiled(state.models.current.unet)  # compiling itself waits for a call
    assert state.models.load("other") is state.models.current and is_compiled(state.models.current.unet)
    assert (state.options.cache_dir / "torchinductor").is_dir()


def test_a_compiled_unet_gives_the_image_of_the_uncompiled_one(tmp_path):
    """Traced by dynamo and AOT autograd as --compile does, with the "aot_eager" backend: inductor's C++ code
    generation on top takes 100 s for the tiny UNet on this idle 2-core CPU, so it is measured in
    bench/bench_compile.py (first step, steady step, second start) instead of here."""
    state = make_state(tmp_path, {"tiny": "sd1"})
    before = t2i(state)
    assert compile_unet(state.models.current.unet, CompileSettings(tmp_path / "cache", backend="aot_eager"))
    assert is_compiled(state.models.current.unet)
    assert np.abs(t2i(state) - before).max() <= 2  # measured: identical

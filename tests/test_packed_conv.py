"""Convolution weights kept in oneDNN's blocked layout (bf16 on a CPU with native bf16): the same images as plain
convolutions, and a weight written in place (a LoRA in or out) or another input size is followed at once."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modules.devices import cpu_has_native_bf16, plan_devices
from modules.models.packed_conv import PackedConv2d, pack_convolutions
from modules.training.demo_networks import generate, make_eval_state

REPO = Path(__file__).resolve().parent.parent
NATIVE_BF16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AMX/AVX512-BF16)")


def test_the_plan_packs_exactly_where_it_computes_bf16_on_the_cpu():
    assert plan_devices("cpu", cpu_bf16=True).packed_convs
    for plan in (plan_devices("cpu", cpu_bf16=False), plan_devices("cpu", precision="full", cpu_bf16=True),
                 plan_devices("cpu", medvram=True, cpu_bf16=True), plan_devices("cpu", lowvram=True, cpu_bf16=True)):
        assert not plan.packed_convs  # fp32, or the user asked to save memory


def _conv() -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(64, 96, 3, padding=1).to(torch.bfloat16).to(memory_format=torch.channels_last)


def _input(*shape: int, seed: int = 1) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


@NATIVE_BF16
def test_a_packed_convolution_follows_in_place_writes_and_new_sizes():
    plain, packed = _conv(), _conv()
    assert pack_convolutions(nn.Sequential(packed, nn.ReLU())) == 1 and type(packed) is PackedConv2d
    with torch.inference_mode():
        for step in range(3):
            for shape in ((2, 64, 16, 16), (1, 64, 24, 40), (2, 64, 16, 16)):
                x = _input(*shape, seed=step)
                assert torch.equal(packed(x), plain(x))
            for conv in (plain, packed):  # as a LoRA patch writes a weight
                conv.weight.add_(0.05 * step + 0.01)
        assert packed._packed is not None  # the last blocked copy is kept for the next call


@NATIVE_BF16
def test_gradients_run_through_the_plain_convolution():
    plain, packed = _conv(), _conv()
    pack_convolutions(packed)
    grads = []
    for conv in (plain, packed):
        x = _input(2, 64, 8, 8).requires_grad_(True)
        conv(x).square().sum().backward()
        grads.append((x.grad, conv.weight.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert packed._packed is None


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The bundled demo model at this machine's default precision, with the bundled LCM-LoRA (which changes every
    ResNet convolution) on offer."""
    return make_eval_state(tmp_path_factory.mktemp("packed"), REPO / "models/Stable-diffusion/demo-shapes.safetensors",
                           REPO / "models/Lora/demo-lcm.safetensors")


def _plain(model):
    for module in model.modules():
        if type(module) is PackedConv2d:
            module.__class__ = nn.Conv2d


@NATIVE_BF16
def test_images_match_plain_convolutions_with_a_lora_in_and_out(demo):
    model = demo.models.current
    convs = [m for part in (model.unet, model.vae) for m in part.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is PackedConv2d for m in convs)
    prompt, tagged = "a large red star on a blue background", "a large red star on a blue background <lora:demo-lcm:1>"
    base = generate(demo, prompt, 5)
    with_lora = generate(demo, tagged, 5)
    assert np.abs(with_lora.astype(int) - base).mean() > 1  # the LoRA's convolution deltas reach the image
    assert np.array_equal(generate(demo, prompt, 5), base)  # and leave with it
    for part in (model.unet, model.vae):
        _plain(part)
    try:
        assert np.array_equal(generate(demo, tagged, 5), with_lora)
        assert np.array_equal(generate(demo, prompt, 5), base)
    finally:
        for part in (model.unet, model.vae):
            pack_convolutions(part)


@NATIVE_BF16
def test_a_refiner_loaded_in_the_middle_of_a_job_runs_on_packed_convolutions(tmp_path):
    """A job computes in inference mode; a checkpoint it loads (the refiner) still gets ordinary weight tensors,
    whose version counter the blocked copies follow."""
    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job
    from tests.engine_fixtures import make_state

    # another architecture: loaded into new tensors, not into the base model's memory
    state = make_state(tmp_path, {"tiny": "sd1", "other": "sd2"}, flags=["--precision", "autocast"])
    params = Txt2ImgParams(prompt="a red circle", steps=4, width=64, height=64, seed=2, sampler_name="Euler",
                           refiner_checkpoint="other", refiner_switch_at=0.5, do_not_save_samples=True,
                           do_not_save_grid=True)
    assert "Refiner: other" in run_job(state, params).infotexts[0]
    refiner = state.models.load("other")
    assert not refiner.unet.conv_in.weight.is_inference() and type(refiner.unet.conv_in) is PackedConv2d


@NATIVE_BF16
def test_compile_traces_the_unet_in_one_graph_with_the_plain_convolutions(tmp_path):
    """--compile on a bf16 CPU: dynamo sees the plain convolution (inductor lowers it), not the blocked-weight path,
    so the UNet stays one graph and gives the uncompiled image (the "aot_eager" backend, as tests/test_compile.py)."""
    from modules.models.compile import CompileSettings, compile_unet
    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job
    from tests.engine_fixtures import make_state

    state = make_state(tmp_path, {"tiny": "sd1"}, flags=["--precision", "autocast"])
    unet = state.models.current.unet
    assert unet.dtype == torch.bfloat16 and type(unet.conv_in) is PackedConv2d

    def t2i():
        params = Txt2ImgParams(prompt="a red circle", steps=3, width=64, height=64, seed=2, sampler_name="Euler",
                               do_not_save_samples=True, do_not_save_grid=True)
        return np.asarray(run_job(state, params).images[0].convert("RGB"), dtype=np.float32)

    before = t2i()
    graphs = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def counting(graph, example_inputs):
        graphs.append(graph)
        return aot_eager(graph, example_inputs)

    assert compile_unet(unet, CompileSettings(tmp_path / "cache", backend=counting))
    assert np.abs(t2i() - before).max() <= 2
    assert len(graphs) == 1

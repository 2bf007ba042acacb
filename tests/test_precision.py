"""Precision by hardware: bf16 with channels_last on a CPU with native bf16 (AMX / AVX512-BF16), fp32 elsewhere
and with ``--precision full``; what ran is said in the infotext and in ``/sdapi/v1/cmd-flags``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules.api.routes import cmd_flags
from modules.devices import cpu_has_native_bf16, cpuinfo_flags, plan_devices
from modules.infotext import infotext_to_params, infotext_to_settings, parse_infotext
from modules.networks.lora import load_network
from modules.networks.patcher import NetworkPatch, WeightPatcher
from modules.processing.params import Txt2ImgParams
from modules.processing.runner import run_job
from tests.engine_fixtures import make_state

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_vnni {extra}
bogomips\t: 4200.00
"""
NATIVE_BF16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AMX/AVX512-BF16)")


@pytest.mark.parametrize(("extra", "native"), [("amx_bf16 amx_tile", True), ("avx512_bf16", True), ("", False),
                                               ("avx512_fp16", False)])
def test_native_bf16_is_read_from_the_cpu_flags(extra, native):
    assert cpu_has_native_bf16(cpuinfo_flags(CPUINFO.format(extra=extra))) is native


def test_the_plan_follows_the_cpu_and_the_flags():
    bf16 = plan_devices("cpu", cpu_bf16=True)
    assert (bf16.dtype, bf16.vae_dtype, bf16.channels_last, bf16.precision) == (torch.bfloat16, torch.bfloat16,
                                                                                True, "bf16")
    for plan in (plan_devices("cpu", cpu_bf16=False), plan_devices("cpu", precision="full", cpu_bf16=True),
                 plan_devices("cpu", no_half=True, no_half_vae=True, cpu_bf16=True)):
        assert (plan.dtype, plan.vae_dtype, plan.channels_last) == (torch.float32, torch.float32, False)
    assert plan_devices("cpu", no_half_vae=True, cpu_bf16=True).vae_dtype == torch.float32


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    """The same tiny checkpoint at the machine's default precision and with --precision full."""
    root = tmp_path_factory.mktemp("precision")
    default = make_state(root / "default", {"tiny": "sd1"}, flags=["--precision", "autocast"])
    full = make_state(root / "full", {"tiny": "sd1"})  # make_state pins --precision full
    return default, full


def t2i(state, **kw):
    kw = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 3, "sampler_name": "DPM++ 2M",
          "do_not_save_samples": True, "do_not_save_grid": True, **kw}
    return run_job(state, Txt2ImgParams(**kw))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.float32)


@NATIVE_BF16
def test_the_default_generates_in_bf16_close_to_fp32_and_says_so(states):
    default, full = states
    model = default.models.current
    conv = model.unet.conv_in.weight
    assert model.unet.dtype == model.vae.dtype == model.text_encoders[0].dtype == torch.bfloat16
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fast, exact = t2i(default), t2i(full)
    difference = np.abs(pixels(fast) - pixels(exact))
    assert 0 < difference.mean() < 2 and difference.max() < 16  # measured (seeds 3-5): mean 0.75, max 6 of 255
    parsed = parse_infotext(fast.infotexts[0])
    assert parsed["Precision"] == "bf16" and "Precision" not in parse_infotext(exact.infotexts[0])
    assert infotext_to_params(parsed)["steps"] == 4 and "Precision" not in str(infotext_to_settings(parsed))
    flags = cmd_flags(default)
    assert (flags["unet_precision"], flags["vae_precision"], flags["precision"]) == ("bf16", "bf16", "autocast")
    assert cmd_flags(full)["unet_precision"] == "fp32"


def test_precision_full_loads_plain_fp32_weights(states):
    model = states[1].models.current  # its images are those of the calibrated tests (parity with diffusers, …)
    for component in (model.unet, model.vae, *model.text_encoders):
        assert all(p.dtype == torch.float32 and p.is_contiguous() for p in component.parameters())


def test_a_conv_lora_with_dora_on_bf16_channels_last_weights_restores_exactly(states, tmp_path):
    unet = states[1].models.current.unet
    unet = type(unet).from_config(unet.config).to(torch.bfloat16, memory_format=torch.channels_last)
    name = "down_blocks.0.resnets.0.conv1"
    conv = unet.get_submodule(name).weight
    out_ch, in_ch = conv.shape[:2]
    gen = torch.Generator().manual_seed(4)
    stem = "lora_unet_" + name.replace(".", "_")
    path = tmp_path / "locon.safetensors"
    save_file({f"{stem}.lora_down.weight": torch.randn(4, in_ch, 3, 3, generator=gen),
               f"{stem}.lora_up.weight": torch.randn(out_ch, 4, 1, 1, generator=gen),
               f"{stem}.alpha": torch.tensor(4.0), f"{stem}.dora_scale": torch.rand(out_ch, 1, 1, 1) + 0.5}, str(path))
    before = conv.detach().clone()
    patcher = WeightPatcher({"unet": unet})
    patcher.apply([NetworkPatch(load_network(path, {"unet": unet}))])
    assert not torch.equal(conv, before) and conv.dtype == torch.bfloat16
    patcher.remove_all()
    assert torch.equal(conv, before) and conv.is_contiguous(memory_format=torch.channels_last)

"""Few-step generation: the bundled LCM-LoRA judged through the app, and LCM-LoRA, SDXL-Lightning and Turbo files
(random weights in their real layouts) through the same loading and sampling paths."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules.hooks import HookPoint, HookRegistry
from modules.networks.active import ldm_names
from modules.processing.params import Txt2ImgParams
from modules.processing.runner import run_job
from modules.sampling import DiscreteSchedule, registry
from modules.training import lcm_distill
from modules.training.demo_model import evaluation_scenes
from modules.training.demo_networks import make_eval_state
from modules.training.judge import accuracy
from tests.engine_fixtures import make_state

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
DEMO_LCM = REPO / "models" / "Lora" / "demo-lcm.safetensors"
# module-name endings of the official LCM-LoRA files (diffusers names in kohya keys, ResNet convolutions included)
LCM_LORA_ENDINGS = lcm_distill.TARGET_ENDINGS


def unet_rows(hooks: HookRegistry) -> list[int]:
    """Register a hook that records the batch rows of every UNet call; returns the list it fills."""
    rows: list[int] = []
    hooks.register(HookPoint.BEFORE_UNET, lambda call: rows.append(call.x.shape[0]), "count-rows")
    return rows


def generate(state, prompt: str, sampler: str, steps: int, cfg: float, scheduler: str = "Automatic", seed: int = 3,
             hooks: HookRegistry | None = None, size: int = 64):
    return run_job(state, Txt2ImgParams(prompt=prompt, seed=seed, steps=steps, cfg_scale=cfg, sampler_name=sampler,
                                         scheduler=scheduler, width=size, height=size, do_not_save_samples=True,
                                         do_not_save_grid=True), extra_hooks=hooks)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def kohya_lora(modules: dict[str, torch.nn.Module], rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA (fp16, as released) over ``modules`` (kohya stem → module): k×k convolutions get a k×k
    ``lora_down`` and a 1×1 ``lora_up``, as LCM-LoRA and Lightning files have them."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for stem, module in modules.items():
        w = module.weight
        down_shape = (rank, *w.shape[1:])
        up_shape = (w.shape[0], rank, *([1, 1] if w.dim() == 4 else []))
        state[f"{stem}.lora_down.weight"] = (torch.randn(down_shape, generator=gen) * 0.2).half()
        state[f"{stem}.lora_up.weight"] = (torch.randn(up_shape, generator=gen) * 0.2).half()
        state[f"{stem}.alpha"] = torch.tensor(float(rank)).half()
    return state


def lcm_lora_modules(unet) -> dict[str, torch.nn.Module]:
    """LCM-LoRA key stems: ``lora_unet_`` + the diffusers module name with ``_`` (lcm-lora-sdv1-5, lcm-lora-sdxl)."""
    return {"lora_unet_" + name.replace(".", "_"): m for name, m in unet.named_modules()
            if isinstance(m, torch.nn.Linear | torch.nn.Conv2d) and name.endswith(LCM_LORA_ENDINGS)}


def lightning_lora_modules(unet) -> dict[str, torch.nn.Module]:
    """SDXL-Lightning LoRA key stems: kohya's SDXL naming, the original (LDM) module names, for every linear and
    convolution of the UNet's blocks."""
    modules = dict(unet.named_modules())
    out = {}
    for ldm, diffusers_key in ldm_names(unet).items():
        name = diffusers_key.removesuffix(".weight")
        module = modules.get(name)
        if diffusers_key.endswith(".weight") and isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            out["lora_unet_" + ldm.removesuffix(".weight").replace(".", "_")] = module
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("few-step")
    return make_state(root, {"tiny": "sd1", "tiny-xl": "sdxl", "tiny-sd2": "sd2"}), root


@pytest.mark.parametrize("family, layout", [("tiny", "lcm"), ("tiny-xl", "lcm"), ("tiny-xl", "lightning")])
def test_lcm_and_lightning_lora_layouts_load_fully_and_apply_then_leave_the_model_exact(tiny, family, layout):
    state, root = tiny
    state.models.load(family)
    unet = state.models.current.unet
    modules = lcm_lora_modules(unet) if layout == "lcm" else lightning_lora_modules(unet)
    assert any(m.weight.dim() == 4 and m.weight.shape[-1] == 3 for m in modules.values())  # 3×3 convs included
    name = f"{layout}-{family}"
    (root / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    save_file(kohya_lora(modules), str(root / "models" / "Lora" / f"{name}.safetensors"))
    state.networks.refresh()
    sampler, scheduler = ("LCM", "Automatic") if layout == "lcm" else ("Euler", "SGM Uniform")
    base = generate(state, "a cat", sampler, 4, 1.0, scheduler)
    fast = generate(state, f"a cat <lora:{name}:1>", sampler, 4, 1.0, scheduler)
    assert fast.warnings == []  # every key matched a module of this model
    assert f"{name}: " in fast.infotexts[0]  # "Lora hashes"
    assert np.abs(pixels(fast) - pixels(base)).max() > 8
    again = generate(state, "a cat", sampler, 4, 1.0, scheduler)
    assert np.array_equal(pixels(again), pixels(base))  # the LoRA is out of the weights again


@pytest.mark.parametrize("family", ["tiny-sd2", "tiny-xl"])
def test_turbo_style_one_step_generation_at_cfg_one_runs_a_single_unet_row(tiny, family):
    """SD-Turbo (SD2.1 layout) and SDXL-Turbo (SDXL layout) checkpoints load like any other; A1111's settings for
    them, Euler a, 1 step, CFG 1, give one UNet call of one row per image."""
    state, _ = tiny
    state.models.load(family)
    hooks = HookRegistry()
    rows = unet_rows(hooks)
    one = generate(state, "a cat", "Euler a", 1, 1.0, hooks=hooks)
    assert rows == [1]
    other = generate(state, "a cat", "Euler a", 1, 1.0, seed=4)
    assert np.abs(pixels(one) - pixels(other)).mean() > 1  # the seed's noise decides the image
    assert "Steps: 1, Sampler: Euler a" in one.infotexts[0] and "CFG scale: 1" in one.infotexts[0]


def test_sgm_uniform_is_the_trailing_spacing_and_answers_to_that_name():
    model = DiscreteSchedule.from_params()
    choice = registry.resolve("Euler", "trailing")
    assert choice.schedule.label == "SGM Uniform" and choice.infotext_schedule == "SGM Uniform"
    sigmas = registry.make_sigmas(choice, 4, model)
    timesteps = model.sigma_to_t(sigmas[:-1]).tolist()
    assert [round(t) for t in timesteps] == [999, 749, 500, 250]  # diffusers' "trailing": 999, 749, 499, 249


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_eval_state(tmp_path_factory.mktemp("demo-lcm"), DEMO, lora=DEMO_LCM, flags=("--precision", "full"))


def test_bundled_lcm_lora_is_small_and_carries_its_card():
    import json

    from safetensors import safe_open

    assert DEMO_LCM.stat().st_size <= 2 * 1024 * 1024
    with safe_open(str(DEMO_LCM), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_base_model_version"] == "sd_v1" and "LCM sampler, 4 steps, CFG 1" in meta["ss_training_comment"]
    assert any(k.endswith("resnets_0_conv1.lora_down.weight") for k in keys)
    assert json.loads(DEMO_LCM.with_suffix(".json").read_text())["preferred weight"] == 1


def test_four_lcm_steps_with_the_bundled_lcm_lora_keep_the_judged_accuracy_at_a_tenth_of_the_unet_work(demo):
    """``<lora:demo-lcm:1>``, LCM sampler, 4 steps, CFG 1 against the page's reference quality (DPM++ 2M Karras,
    20 steps, CFG 7) on the same 60 scenes: ≥ 90% of its judged accuracy with 1/10 of the UNet rows."""
    scenes = evaluation_scenes(60)
    reference_hooks, few_hooks = HookRegistry(), HookRegistry()
    reference_rows, few_rows = unet_rows(reference_hooks), unet_rows(few_hooks)
    reference, few = [], []
    for i, scene in enumerate(scenes):
        prompt = lcm_distill.world.full_caption(scene)
        reference.append(generate(demo, prompt, "DPM++ 2M", 20, 7.0, "Karras", seed=i, hooks=reference_hooks))
        few.append(generate(demo, prompt + " <lora:demo-lcm:1>", "LCM", 4, 1.0, seed=i, hooks=few_hooks))
    assert 'Lora hashes: "demo-lcm: ' in few[0].infotexts[0] and "Sampler: LCM" in few[0].infotexts[0]
    ref_score, few_score = (np.mean(list(accuracy([np.asarray(r.images[0].convert("RGB")) for r in results],
                                                  scenes).values())) for results in (reference, few))
    assert few_score >= 0.9 * ref_score, (few_score, ref_score)
    assert sum(few_rows) * 10 == sum(reference_rows)


def test_distillation_resumes_to_the_same_lora_and_writes_a_file_the_app_applies(tiny, tmp_path):
    """Two steps, a stop, two more from the saved state: the same LoRA as four uninterrupted steps; the file
    (kohya keys, 3×3 convolutions included) matches every target of the model it was distilled from."""
    from safetensors.torch import load_file

    from modules.training.lora_train import load_for_training

    state, root = tiny
    ckpt = root / "models" / "Stable-diffusion" / "tiny.safetensors"
    cfg = lcm_distill.LcmConfig(rank=2, alpha=2.0, steps=4, batch=2, pool_scenes=8, checkpoint_minutes=0.0)
    whole = tmp_path / "whole" / "lcm.safetensors"
    lcm_distill.distill(load_for_training(ckpt), whole, cfg, tmp_path / "whole-work", log=lambda m: None)
    parts = tmp_path / "parts" / "lcm.safetensors"
    half = lcm_distill.LcmConfig(**{**cfg.__dict__, "steps": 2})
    lcm_distill.distill(load_for_training(ckpt), parts, half, tmp_path / "parts-work", log=lambda m: None)
    lcm_distill.distill(load_for_training(ckpt), parts, cfg, tmp_path / "parts-work", log=lambda m: None)
    a, b = load_file(str(whole)), load_file(str(parts))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.dim() == 4 and v.shape[-1] == 3 for k, v in a.items() if k.endswith("conv1.lora_down.weight"))
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in a.items() if k.endswith("lora_up.weight"))
    (root / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    (root / "models" / "Lora" / "distilled.safetensors").write_bytes(whole.read_bytes())
    state.networks.refresh()
    state.models.load("tiny")
    result = generate(state, "a cat <lora:distilled:1>", "LCM", 2, 1.0)
    assert result.warnings == [] and "distilled: " in result.infotexts[0]

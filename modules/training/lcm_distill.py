"""Latent consistency distillation into a LoRA (the LCM-LoRA recipe) and its judged evaluation through the app.

    python -m modules.training.lcm_distill train               # -> models/Lora/demo-lcm.safetensors (+ .json card)
    python -m modules.training.lcm_distill train --steps 3000  # resumed to 3,000 steps: the bundled file
    python -m modules.training.lcm_distill eval                # 4-step LCM (CFG 1) against 20-step DPM++ 2M (CFG 7)

Recipe (Luo et al. 2023, "Latent Consistency Models" and "LCM-LoRA"; consistency models: Song et al. 2023):
the teacher is the frozen checkpoint with classifier-free guidance at ``guidance``; the student is the same UNet
with a LoRA on every attention and feed-forward linear, projection, ResNet convolution, time-embedding projection
and resampling convolution. Training timesteps form the 50-step grid t_i = 20·i − 1 (i = 1 … 50) of the
1000-step schedule. One step, for latents x0 of real images and their captions:

1. draw t on the grid, t' = max(t − 20, 0), and x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε;
2. teacher (LoRA off, no gradient): guided ε_g = ε_u + w·(ε_c − ε_u); one DDIM step from t to t' gives x_t';
3. consistency function f(x, t) = c_skip(t)·x + c_out(t)·x̂0(x, t), x̂0 the UNet's clean estimate, with
   c_skip = σ_d² / ((10t)² + σ_d²), c_out = 10t / √((10t)² + σ_d²), σ_d = 0.5 (so f(x, 0) = x);
4. loss = Huber(f_student(x_t, t), f_target(x_t', t')) with c = 0.001, where the target is the student's own
   weights without gradient (LCM-LoRA uses no EMA copy).

The student needs no guidance at inference (CFG 1: one UNet row per step) and samples with the LCM sampler:
x̂0 at each sigma, then fresh noise at the next. Batches, noise and timesteps come from (seed, step), so a
resumed run (state every ``checkpoint_minutes`` in ``--work``) gives the same weights as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from modules.training import shapes_world as world
from modules.training.lora_train import (
    LoraNetwork,
    base_model_metadata,
    load_for_training,
    load_state,
    noise_schedule,
    prepare_model,
    save_atomic,
    step_generator,
    write_safetensors_atomic,
)

DEFAULT_CKPT = Path("models/Stable-diffusion/demo-shapes.safetensors")
DEFAULT_OUT = Path("models/Lora/demo-lcm.safetensors")
DEFAULT_WORK = Path("runs/demo-lcm")
# module-name endings the LCM-LoRA recipe adapts (diffusers UNet naming)
TARGET_ENDINGS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                  "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


@dataclass(frozen=True)
class LcmConfig:
    """Distillation settings (defaults = the bundled demo-lcm LoRA, which was then resumed to 3,000 steps)."""

    rank: int = 14  # 1.8 MB in fp16 on the demo UNet (rank 16: 2.03 MB, over the 2 MB aimed at)
    alpha: float = 14.0
    lr: float = 1e-3
    warmup: int = 50
    steps: int = 1500
    batch: int = 32
    guidance: float = 7.0  # the teacher's CFG scale (the 20-step reference runs at 7)
    grid: int = 50  # DDIM grid of the solver: steps of 1000 / grid timesteps
    huber_c: float = 1e-3
    pool_scenes: int = 3360  # jittered renders encoded once (each of the 1,680 scenes twice)
    seed: int = 0
    checkpoint_minutes: float = 4.0


def lcm_targets(unet) -> dict[str, tuple[str, torch.nn.Module]]:
    """kohya key stem → ("unet", module) for every UNet module the LCM-LoRA recipe adapts."""
    return {"lora_unet_" + name.replace(".", "_"): ("unet", module) for name, module in unet.named_modules()
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and name.endswith(TARGET_ENDINGS)}


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency function at integer timesteps ``t`` (c_skip(0) = 1, c_out(0) = 0)."""
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
    c_out = scaled / (scaled ** 2 + SIGMA_DATA ** 2).sqrt()
    return _view(c_skip), _view(c_out)


def _view(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def consistency(unet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """f(x, t): the boundary-scaled clean-latent estimate of an eps-prediction ``unet``."""
    a = _view(alphas[t])
    eps = unet(x, t, encoder_hidden_states=context).sample
    clean = (x - (1 - a).sqrt() * eps) / a.sqrt()
    c_skip, c_out = boundary_scalings(t)
    return c_skip * x + c_out * clean


def teacher_step(unet, x: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, cond: torch.Tensor,
                 uncond: torch.Tensor, guidance: float, alphas: torch.Tensor) -> torch.Tensor:
    """One guided DDIM step of the frozen model from ``t`` to ``t_prev``."""
    eps_u, eps_c = unet(torch.cat([x, x]), torch.cat([t, t]),
                        encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
    eps = eps_u + guidance * (eps_c - eps_u)
    a, a_prev = _view(alphas[t]), _view(alphas[t_prev])
    clean = (x - (1 - a).sqrt() * eps) / a.sqrt()
    return a_prev.sqrt() * clean + (1 - a_prev).sqrt() * eps


def huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Pseudo-Huber distance per element, averaged: √((a−b)² + c²) − c."""
    return (((a.float() - b.float()) ** 2 + c * c).sqrt() - c).mean()


def encode_pool(model, cfg: LcmConfig) -> tuple[torch.Tensor, list[world.Scene]]:
    """Scaled VAE latents (posterior means) of ``cfg.pool_scenes`` jittered renders and their scenes."""
    rng = np.random.default_rng([cfg.seed, 77])
    base = world.all_scenes()
    scenes = [world.jittered(base[i % len(base)], rng) for i in range(cfg.pool_scenes)]
    scale = model.vae.config.scaling_factor
    parts = []
    with torch.no_grad():
        for i in range(0, len(scenes), 256):
            pixels = np.stack([world.render(s) for s in scenes[i:i + 256]])
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
            parts.append(model.vae.encode(x).latent_dist.mean * scale)
    return torch.cat(parts), scenes


def _lr_factor(step: int, cfg: LcmConfig) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _resume_key(cfg: LcmConfig) -> str:
    """The settings a saved state must match to be resumed: all but ``steps``, which may grow (the cosine then
    follows the longer schedule from the step reached)."""
    return json.dumps({k: v for k, v in asdict(cfg).items() if k not in ("steps", "checkpoint_minutes")})


def _metadata(model, cfg: LcmConfig, out: Path, step: int, seconds: float) -> dict[str, str]:
    return {
        **base_model_metadata(model),
        "ss_network_module": "networks.lora", "ss_network_dim": str(cfg.rank), "ss_network_alpha": str(cfg.alpha),
        "ss_output_name": out.stem, "ss_steps": str(step), "ss_training_time_s": f"{seconds:.0f}",
        "ss_training_comment": (
            "LCM-LoRA distilled from the bundled demo model by modules/training/lcm_distill.py: "
            f"teacher CFG {cfg.guidance}, {cfg.grid}-step DDIM solver grid, Huber c {cfg.huber_c}. "
            "Use with the LCM sampler, 4 steps, CFG 1."),
        "lcm.config": json.dumps(asdict(cfg)),
    }


def card(cfg: LcmConfig) -> dict:
    """The A1111 user-metadata card written beside the LoRA."""
    return {"description": "Few-step generation for the demo model: LCM sampler, 4 steps, CFG 1.",
            "sd version": "SD1", "activation text": "", "preferred weight": 1,
            "notes": f"Latent consistency distillation, rank {cfg.rank}, {cfg.steps} steps of batch {cfg.batch}."}


def distill(model, out: Path, cfg: LcmConfig, work: Path, log=print, init: Path | None = None) -> LoraNetwork:
    """Distil ``model`` (an SD1 eps model, float32) into an LCM-LoRA written to ``out``; resumes from ``work``.
    ``init``: a state file of an earlier run whose LoRA weights start this one (when ``work`` has no state)."""
    from modules.training.datasets import CaptionTokenizer, encode_text

    prepare_model(model)
    unet = model.unet
    torch.manual_seed(cfg.seed)  # the pairs' initial weights
    network = LoraNetwork(lcm_targets(unet), cfg.rank, cfg.alpha)
    opt = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=0.0)
    state_path = work / "state.pt"
    state = load_state(state_path)
    step, spent = 0, 0.0
    if state is not None and state.get("config") == _resume_key(cfg):
        network.load_state_dict(state["network"])
        opt.load_state_dict(state["optimizer"])
        step, spent = int(state["step"]), float(state["seconds"])
        log(f"resumed at step {step}")
    elif init is not None:
        network.load_state_dict(load_state(init)["network"])
        log(f"LoRA weights from {init}")
    latents, scenes = encode_pool(model, cfg)
    tokens = CaptionTokenizer(model)
    alphas = noise_schedule(model).float()
    stride = 1000 // cfg.grid
    with torch.no_grad():
        uncond = encode_text(model, tokens([""]))[0]

    def save() -> None:
        write_safetensors_atomic(network.kohya_state(), _metadata(model, cfg, out, step, spent), out)
        out.with_suffix(".json").write_text(json.dumps(card(cfg), indent=1) + "\n")
        save_atomic({"network": network.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "seconds": spent, "config": _resume_key(cfg)}, state_path)

    last_save, losses = time.time(), []
    while step < cfg.steps:
        started = time.time()
        gen = step_generator(cfg.seed, step)
        rng = np.random.default_rng([cfg.seed, 5, step])
        index = rng.integers(len(scenes), size=cfg.batch)
        captions = [world.caption(scenes[i], rng, empty_prob=0.0) for i in index]
        x0 = latents[torch.from_numpy(index)]
        t = (torch.randint(1, cfg.grid + 1, (cfg.batch,), generator=gen) * stride - 1)
        t_prev = (t - stride).clamp(min=0)
        noise = torch.randn(x0.shape, generator=gen)
        a = _view(alphas[t])
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.no_grad():
            cond = encode_text(model, tokens(captions))[0]
            network.detach()
            x_prev = teacher_step(unet, x_t, t, t_prev, cond, uncond.expand_as(cond), cfg.guidance, alphas)
            network.attach()
            target = consistency(unet, x_prev, t_prev, cond, alphas)
        loss = huber(consistency(unet, x_t, t, cond, alphas), target, cfg.huber_c)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        opt.step()
        step += 1
        spent += time.time() - started
        losses.append(float(loss.detach()))
        if step % 25 == 0:
            log(f"step {step}/{cfg.steps} loss {np.mean(losses[-25:]):.5f} ({spent / step:.2f} s/step)")
        if time.time() - last_save > cfg.checkpoint_minutes * 60 or step == cfg.steps:
            save()
            last_save = time.time()
    network.detach()
    if not out.exists():
        save()
    return network


# --------------------------------------------------------------------------- judged through the app

@dataclass(frozen=True)
class FewStepSetting:
    """One way to generate: sampler, schedule, steps, CFG and the prompt suffix (a LoRA tag or nothing)."""

    label: str
    sampler: str
    scheduler: str
    steps: int
    cfg_scale: float
    suffix: str = ""


REFERENCE = FewStepSetting("20-step DPM++ 2M Karras, CFG 7", "DPM++ 2M", "Karras", 20, 7.0)
FEW_STEP = FewStepSetting("4-step LCM + demo-lcm, CFG 1", "LCM", "Automatic", 4, 1.0, " <lora:demo-lcm:1>")
WITHOUT_LORA = FewStepSetting("4-step LCM without the LoRA, CFG 1", "LCM", "Automatic", 4, 1.0)


def judged_run(state, setting: FewStepSetting, scenes: list[world.Scene]) -> dict:
    """Generate one 64×64 image per scene (seed = index) through ``run_job``; judged accuracy and wall time."""
    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job
    from modules.training.judge import accuracy

    images, started = [], time.perf_counter()
    for i, scene in enumerate(scenes):
        params = Txt2ImgParams(prompt=world.full_caption(scene) + setting.suffix, seed=i, steps=setting.steps,
                               cfg_scale=setting.cfg_scale, sampler_name=setting.sampler,
                               scheduler=setting.scheduler, width=64, height=64, do_not_save_samples=True,
                               do_not_save_grid=True)
        images.append(np.asarray(run_job(state, params).images[0].convert("RGB")))
    seconds = time.perf_counter() - started
    scores = accuracy(images, scenes)
    return {"setting": setting.label, "images": len(scenes), "seconds": round(seconds, 2),
            "images_per_minute": round(60 * len(scenes) / seconds, 1),
            "accuracy": {k: round(v, 3) for k, v in scores.items()}, "mean": round(float(np.mean(list(scores.values()))), 3)}


def evaluate(ckpt: Path, lora: Path, count: int = 100, flags: tuple[str, ...] = ()) -> dict:
    """The reference, the few-step setting and the same without the LoRA on the same ``count`` evaluation scenes, in
    one app state started with ``flags``."""
    from modules.training.demo_model import evaluation_scenes
    from modules.training.demo_networks import make_eval_state

    scenes = evaluation_scenes(count)
    with tempfile.TemporaryDirectory() as tmp:
        state = make_eval_state(Path(tmp), ckpt, lora=lora, flags=flags)
        judged_run(state, FEW_STEP, scenes[:2])  # warm-up: the LoRA file read and patched once
        reference = judged_run(state, REFERENCE, scenes)
        few = judged_run(state, FEW_STEP, scenes)
        without = judged_run(state, WITHOUT_LORA, scenes)
    return {"reference": reference, "few_step": few, "without_lora": without,
            "accuracy_ratio": round(few["mean"] / reference["mean"], 3),
            "time_ratio": round(few["seconds"] / reference["seconds"], 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("train", "eval"))
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--steps", type=int, default=LcmConfig.steps)
    parser.add_argument("--guidance", type=float, default=LcmConfig.guidance)
    parser.add_argument("--grid", type=int, default=LcmConfig.grid)
    parser.add_argument("--init", type=Path, help="start from the LoRA of this earlier state file")
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.stage == "train":
        cfg = LcmConfig(steps=args.steps, guidance=args.guidance, grid=args.grid)
        distill(load_for_training(args.ckpt, args.threads), args.out, cfg, args.work,
                log=lambda m: print(m, file=sys.stderr, flush=True), init=args.init)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(evaluate(args.ckpt, args.out, args.eval_images), indent=1))


if __name__ == "__main__":
    main()

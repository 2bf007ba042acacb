"""Train the bundled demo model (shapes world) on CPU: VAE first, then text encoder + UNet jointly.

    python -m modules.training.demo_model --out runs/demo --seed 0 [--stage STAGE]

The same command resumes from the last checkpoint in ``--out``. Stages, in order (``all`` runs them one after the
other; ``decoder`` may run beside ``base``): ``vae`` (``<out>/vae``, latent space rescaled so latents × 0.18215 have
unit variance); ``base`` (text encoder + UNet from scratch; EMA weights in ``<out>/latest/`` at each checkpoint and
``<out>/final/`` at the end); ``decoder`` (decoder only, encoder frozen: ``<out>/vae_decoder``); ``color`` (whole
VAE for flat-region color, latents anchored: ``<out>/vae_color``); ``retune`` (the base model on the color VAE's
latents: ``<out>/retuned``). ``export`` writes the most finished weights as the fp16 SD1 single file (default
``models/Stable-diffusion/demo-shapes.safetensors``); ``eval`` judges them at CFG 7 and 1. Judge accuracies of
sampled images during training go to ``<out>/eval.jsonl``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modules.training import shapes_world as world
from modules.training.judge import accuracy

SCALING_FACTOR = 0.18215
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


@dataclass
class DemoConfig:
    """Architecture and schedule of the demo model (defaults = the bundled model)."""

    seed: int = 0
    resolution: int = 64
    vae_channels: tuple[int, ...] = (64, 64, 128, 128)
    vae_layers: int = 1
    text_hidden: int = 64
    text_layers: int = 3
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_attention: tuple[bool, ...] = (True, True, False)
    unet_layers: int = 1
    vae_steps: int = 1100
    vae_batch: int = 12
    vae_lr: float = 1.5e-3
    vae_kl: float = 1e-6
    vae_edge: float = 1.0
    decoder_steps: int = 1000  # decoder fine-tuning (encoder frozen), beside the base stage
    color_steps: int = 1000  # whole-VAE fine-tune for flat-region color, latents anchored to the base stage's
    # the bundled VAE: a 600-step run (round-trip purple .51), resumed to 1000 (.79); the resume restarts the cosine
    # of the longer schedule where it stands (see _lr_factor)
    color_restarts: tuple[int, ...] = (600,)
    color_weight: float = 4.0
    color_anchor: float = 0.5
    retune_steps: int = 1000  # UNet + text encoder on the color-tuned VAE's latents, from the base model's EMA
    retune_lr_factor: float = 0.2
    retune_ema_decay: float = 0.998
    pool_jitters: int = 3
    base_steps: int = 5000
    # the learning rate's cosine first ends here, then restarts (warm) and decays again until base_steps: the bundled
    # model was trained as a 2600-step run, then resumed to 5000 steps (position accuracy went from .45 to 1.0)
    base_restarts: tuple[int, ...] = (2600,)
    base_batch: int = 64
    base_lr: float = 8e-4
    warmup: int = 200
    ema_decay: float = 0.999
    max_loss_weight: float = 20.0
    word_embedding_norm: float = 1.0  # > 0: orthogonal initial embeddings of the caption words (spread_word_embeddings)
    drop_prob: float = 0.15
    empty_prob: float = 0.1
    checkpoint_minutes: float = 5.0
    eval_every: int = 750
    eval_images: int = 100
    threads: int = 2


# --------------------------------------------------------------------------- models

def build_vae(cfg: DemoConfig):
    """An SD-layout ``AutoencoderKL`` (factor 8, 4 latent channels, 32 norm groups)."""
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, layers_per_block=cfg.vae_layers, norm_num_groups=32,
        sample_size=cfg.resolution, scaling_factor=SCALING_FACTOR,
    )


def build_text_encoder(cfg: DemoConfig):
    """A ``CLIPTextModel`` with the CLIP vocabulary and SD1's 77 positions."""
    from transformers import CLIPTextConfig, CLIPTextModel

    h = cfg.text_hidden
    config = CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_size=h, num_attention_heads=max(1, h // 64),
        intermediate_size=4 * h, num_hidden_layers=cfg.text_layers, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=h,
    )
    return CLIPTextModel(config)


def caption_words() -> list[str]:
    """Every word (and the comma) that base-model captions use."""
    return [*world.SHAPES, *world.COLORS, *world.POSITIONS, *world.SIZES, "a", "on", "background", "shape", ","]


def spread_word_embeddings(text_encoder, tokenizer, words: list[str], norm: float) -> None:
    """Give each token of ``words`` an orthogonal embedding of length ``norm`` (others keep their random init).

    Trained from scratch, the text encoder otherwise collapses words whose effect the UNet learns late (the
    position words were left 0.7 apart out of 7.9 after 3,300 steps, so the UNet never saw them): distinct
    starting points keep every caption word visible from the first step.
    """
    import torch

    ids = sorted({i for w in words for i in tokenizer(w, add_special_tokens=False).input_ids})
    table = text_encoder.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(len(ids))
    basis, _ = torch.linalg.qr(torch.randn(table.shape[1], len(ids), generator=generator))
    with torch.no_grad():
        table[ids] = basis.T * norm


def build_unet(cfg: DemoConfig):
    """An SD1-layout ``UNet2DConditionModel`` (8 heads, conv proj_in, 32 norm groups)."""
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_attention))
    return UNet2DConditionModel(
        sample_size=cfg.resolution // 8, in_channels=4, out_channels=4,
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=cfg.unet_channels, layers_per_block=cfg.unet_layers, norm_num_groups=32,
        cross_attention_dim=cfg.text_hidden, attention_head_dim=8, use_linear_projection=False,
        transformer_layers_per_block=1, flip_sin_to_cos=True, freq_shift=0,
    )


def count_parameters(model) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- helpers

def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _lr_factor(step: int, total: int, warmup: int, restarts: tuple[int, ...] = ()) -> float:
    """Linear warm-up, then a cosine from 1 to 0.1 over ``total`` steps. ``restarts`` are the lengths of earlier,
    shorter schedules of a resumed run: before the first one the cosine of that length applies, then up to the next
    the cosine of the next length from where it stands (a warm restart), and so on up to ``total``."""
    total = next((end for end in sorted(restarts) if step < end < total), total)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _save_atomic(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _resume_vae(ckpt_path: Path, vae, opt, what: str) -> int:
    """Load a VAE stage's checkpoint (VAE and optimizer) if there is one; the step to go on from (0: none)."""
    import torch

    if not ckpt_path.exists():
        return 0
    state = torch.load(ckpt_path, weights_only=False)
    vae.load_state_dict(state["vae"])
    opt.load_state_dict(state["opt"])
    _log(f"{what} resumed at step {state['step']}")
    return state["step"]


def _checkpoint_vae_stage(cfg: DemoConfig, vae, opt, step: int, ckpt_path: Path, folder: Path | None = None,
                          what: str = "") -> None:
    """Save a VAE stage's checkpoint; with ``folder``, also the VAE itself (with ``step.txt``) and its round trip."""
    _save_atomic({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt_path)
    if folder is not None:
        vae.eval()
        vae.save_pretrained(folder)
        (folder / "step.txt").write_text(str(step))
        _log(f"{what} step {step}: round trip {vae_roundtrip_accuracy(vae, cfg, 200)}")
        vae.train()


def _optimizer_step(opt, loss, params) -> None:
    """Backward, clip the gradient norm to 1 and step."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def _images_to_tensor(images: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _tensor_to_images(x) -> list[np.ndarray]:
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8)
    return list(x.permute(0, 2, 3, 1).numpy())


def alphas_cumprod():
    """The SD1 noise schedule: cumulative alphas of scaled-linear betas 0.00085–0.012 over 1000 steps."""
    import torch

    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


# --------------------------------------------------------------------------- VAE stage

def _edge_loss(pred, target):
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(pred) - dx(target)).abs().mean() + (dy(pred) - dy(target)).abs().mean()


def _reconstruction_losses(recon, x):
    """Foreground-weighted L1 + 0.5·MSE, and the edge loss."""
    # shapes cover 5-25% of the image: weight their pixels ×4 so their color is learnt as fast as the background's
    weight = 1.0 + 3.0 * ((x - x[:, :, :1, :1]).abs().sum(1, keepdim=True) > 0.05).float()
    rec = ((recon - x).abs() * weight).mean() + 0.5 * (((recon - x) ** 2) * weight).mean()
    return rec, _edge_loss(recon, x)


def train_vae(cfg: DemoConfig, out: Path) -> None:
    """Train the VAE on freshly rendered scenes, rescale its latent space and save it to ``out/vae``."""
    import torch
    from tqdm import tqdm

    if (out / "vae" / "config.json").exists():
        _log("VAE already trained")
        return
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg)
    with torch.no_grad():  # start with a nearly deterministic posterior (std ≈ 0.05) so reconstruction is learnt fast
        vae.quant_conv.weight[4:] *= 0.1
        vae.quant_conv.bias[4:] = -6.0
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt_path = out / "vae_ckpt.pt"
    step = _resume_vae(ckpt_path, vae, opt, "VAE")
    _log(f"VAE: {count_parameters(vae):,} parameters, {cfg.vae_steps} steps")
    last_save = time.time()
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="vae", mininterval=30, file=sys.stderr)
    vae.train()
    while step < cfg.vae_steps:
        rng = np.random.default_rng([cfg.seed, 1, step])
        x = _images_to_tensor([world.render(world.sample_scene(rng), cfg.resolution) for _ in range(cfg.vae_batch)])
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr_factor(step, cfg.vae_steps, 50)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
        recon = vae.decode(z).sample
        rec, edge = _reconstruction_losses(recon, x)
        kl = posterior.kl().mean()
        loss = rec + cfg.vae_edge * edge + cfg.vae_kl * kl
        _optimizer_step(opt, loss, vae.parameters())
        step += 1
        bar.update(1)
        if step % 50 == 0:
            _log(f"vae step {step} rec {rec.item():.4f} edge {edge.item():.4f} kl {kl.item():.1f}")
        if time.time() - last_save > cfg.checkpoint_minutes * 60 or step == cfg.vae_steps:
            _checkpoint_vae_stage(cfg, vae, opt, step, ckpt_path)
            last_save = time.time()
    bar.close()
    vae.eval()
    std = latent_std(vae, cfg)
    rescale_latent_space(vae, 1.0 / (SCALING_FACTOR * std))
    _log(f"VAE latent std {std:.3f} -> rescaled; after: {latent_std(vae, cfg) * SCALING_FACTOR:.3f}")
    vae.save_pretrained(out / "vae")
    acc = vae_roundtrip_accuracy(vae, cfg)
    _log(f"VAE round-trip judge accuracy: {acc}")


def latent_std(vae, cfg: DemoConfig, n: int = 512) -> float:
    """Standard deviation of sampled latents of ``n`` random scenes."""
    import torch

    rng = np.random.default_rng([cfg.seed, 2])
    with torch.no_grad():
        x = _images_to_tensor([world.render(world.sample_scene(rng), cfg.resolution) for _ in range(n)])
        z = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(cfg.seed))
    return float(z.std())


def rescale_latent_space(vae, c: float) -> None:
    """Multiply the VAE's latents by ``c`` exactly: quant_conv mean part ×c, logvar bias +2 ln c, post_quant_conv ÷c."""
    import torch

    with torch.no_grad():
        vae.quant_conv.weight[:4] *= c
        vae.quant_conv.bias[:4] *= c
        vae.quant_conv.bias[4:] += 2 * math.log(c)
        vae.post_quant_conv.weight *= 1.0 / c


def vae_roundtrip_accuracy(vae, cfg: DemoConfig, n: int = 300) -> dict[str, float]:
    """Judge accuracy on VAE reconstructions (posterior mean) of ``n`` random scenes."""
    import torch

    rng = np.random.default_rng([cfg.seed, 3])
    scenes = [world.sample_scene(rng) for _ in range(n)]
    with torch.no_grad():
        x = _images_to_tensor([world.render(s, cfg.resolution) for s in scenes])
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    return accuracy(_tensor_to_images(recon), scenes)


def finetune_decoder(cfg: DemoConfig, out: Path) -> None:
    """Keep training the decoder (post_quant_conv + decoder) of ``out/vae`` with the encoder frozen.

    Runs beside the base stage (the UNet only sees the frozen encoder's latents); writes ``out/vae_decoder``
    (a full VAE folder) at every checkpoint. Resumable.
    """
    import torch
    from diffusers import AutoencoderKL
    from tqdm import tqdm

    vae = AutoencoderKL.from_pretrained(out / "vae")
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vae_lr * 0.5, weight_decay=0.0)
    ckpt_path = out / "decoder_ckpt.pt"
    step = _resume_vae(ckpt_path, vae, opt, "decoder")
    last_save = time.time()
    steps = cfg.decoder_steps
    bar = tqdm(total=steps, initial=step, desc="decoder", mininterval=30, file=sys.stderr)
    while step < steps:
        rng = np.random.default_rng([cfg.seed, 6, step])
        x = _images_to_tensor([world.render(world.sample_scene(rng), cfg.resolution) for _ in range(cfg.vae_batch)])
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * 0.5 * _lr_factor(step, steps, 20)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(cfg.seed * 7 + step))
        rec, edge = _reconstruction_losses(vae.decode(z).sample, x)
        loss = rec + cfg.vae_edge * edge
        _optimizer_step(opt, loss, params)
        step += 1
        bar.update(1)
        if step % 50 == 0:
            _log(f"decoder step {step} rec {rec.item():.4f} edge {edge.item():.4f}")
        if time.time() - last_save > cfg.checkpoint_minutes * 60 or step == steps:
            _checkpoint_vae_stage(cfg, vae, opt, step, ckpt_path, out / "vae_decoder", "decoder")
            last_save = time.time()
    bar.close()


def _region_color_loss(recon, x):
    """L1 between the mean colors of the shape (pixels off the corner color) and of the background."""
    fg = ((x - x[:, :, :1, :1]).abs().sum(1, keepdim=True) > 0.05).float()
    loss = 0.0
    for mask in (fg, 1.0 - fg):
        area = mask.sum(dim=(2, 3)).clamp(min=1.0)
        loss = loss + ((recon * mask).sum(dim=(2, 3)) / area - (x * mask).sum(dim=(2, 3)) / area).abs().mean()
    return loss


def finetune_vae_color(cfg: DemoConfig, out: Path) -> None:
    """Fine-tune encoder and decoder of the best VAE for flat-region color; writes ``out/vae_color``. Resumable.

    The decoder alone could not get purple/green right (the encoder's latents mix them up), so both train, with an
    extra loss on the mean shape and background colors and an anchor that keeps the posterior means close to the
    frozen starting encoder's, so the UNet trained on the old latents needs only a short re-tune (``--stage retune``).
    """
    import torch
    from tqdm import tqdm

    vae = decoder_tuned_vae(out)
    reference = copy.deepcopy(vae).requires_grad_(False)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr * 0.2, weight_decay=0.0)
    ckpt_path = out / "color_ckpt.pt"
    step = _resume_vae(ckpt_path, vae, opt, "color fine-tune")
    last_save = time.time()
    bar = tqdm(total=cfg.color_steps, initial=step, desc="vae color", mininterval=30, file=sys.stderr)
    vae.train()
    while step < cfg.color_steps:
        rng = np.random.default_rng([cfg.seed, 7, step])
        x = _images_to_tensor([world.render(world.sample_scene(rng), cfg.resolution) for _ in range(cfg.vae_batch)])
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * 0.2 * _lr_factor(step, cfg.color_steps, 20, cfg.color_restarts)
        posterior = vae.encode(x).latent_dist
        with torch.no_grad():
            anchor_mean = reference.encode(x).latent_dist.mean
        z = posterior.sample(generator=torch.Generator().manual_seed(cfg.seed * 11 + step))
        recon = vae.decode(z).sample
        rec, edge = _reconstruction_losses(recon, x)
        color = _region_color_loss(recon, x)
        drift = ((posterior.mean - anchor_mean) * SCALING_FACTOR).pow(2).mean()
        loss = rec + cfg.vae_edge * edge + cfg.color_weight * color + cfg.color_anchor * drift
        _optimizer_step(opt, loss, vae.parameters())
        step += 1
        bar.update(1)
        if step % 25 == 0:
            _log(f"color step {step} rec {rec.item():.4f} color {color.item():.4f} drift {drift.item():.5f}")
        if time.time() - last_save > cfg.checkpoint_minutes * 60 or step == cfg.color_steps:
            _checkpoint_vae_stage(cfg, vae, opt, step, ckpt_path, out / "vae_color", "color")
            last_save = time.time()
    bar.close()


def decoder_tuned_vae(out: Path):
    """``out/vae_decoder`` (fine-tuned decoder, same encoder) when present, else ``out/vae``."""
    from diffusers import AutoencoderKL

    folder = out / "vae_decoder" if (out / "vae_decoder" / "config.json").exists() else out / "vae"
    return AutoencoderKL.from_pretrained(folder).eval()


def model_folder(out: Path) -> Path:
    """The most finished EMA weights of ``out``: ``retuned/``, else ``final/``, else ``latest/``."""
    return next(out / name for name in ("retuned", "final", "latest") if (out / name / "unet").exists())


def model_vae(out: Path):
    """The VAE that belongs to ``model_folder(out)``'s UNet."""
    from diffusers import AutoencoderKL

    vae_folder = model_folder(out) / "vae"
    return AutoencoderKL.from_pretrained(vae_folder).eval() if vae_folder.exists() else decoder_tuned_vae(out)


# --------------------------------------------------------------------------- base stage

def build_latent_pool(vae, cfg: DemoConfig, path: Path) -> dict:
    """Encode every scene × ``pool_jitters`` jittered renders once; stores posterior means and stds."""
    import torch

    if path.exists():
        return torch.load(path, weights_only=False)
    rng = np.random.default_rng([cfg.seed, 4])
    scenes = [world.jittered(s, rng) for s in world.all_scenes() for _ in range(cfg.pool_jitters)]
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(scenes), 256):
            x = _images_to_tensor([world.render(s, cfg.resolution) for s in scenes[i:i + 256]])
            dist = vae.encode(x).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    pool = {"scenes": [asdict(s) for s in scenes], "mean": torch.cat(means), "std": torch.cat(stds)}
    _save_atomic(pool, path)
    _log(f"latent pool: {len(scenes)} renders, latent std×0.18215 = {float(pool['mean'].std()) * SCALING_FACTOR:.3f}")
    return pool


class _Tokens:
    """Caches CLIP token ids (77, padded with EOS) per caption."""

    def __init__(self):
        from modules.clip_tokenizer import load_clip_tokenizer

        self.tokenizer = load_clip_tokenizer()
        self.cache: dict[str, object] = {}

    def __call__(self, captions: list[str]):
        import torch

        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[c] for c in captions])


def _ema_update(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        ema_p = [p for p in ema.parameters()]
        model_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)


@dataclass
class _DenoiserRun:
    """One run of the text encoder + UNet training loop: where it checkpoints, its random stream and schedule."""

    name: str
    steps: int
    lr: float
    warmup: int
    restarts: tuple[int, ...]
    ema_decay: float
    stream: int  # numpy/torch random stream of the run's batches
    ckpt_path: Path
    final: Path  # folder written at the end: unet/, text_encoder/, vae/


def _fit_denoiser(cfg: DemoConfig, out: Path, run: _DenoiserRun, unet, text_encoder, tokens, pool, vae) -> None:
    """Train ``unet`` + ``text_encoder`` on ``pool`` (eps-prediction, SD1 schedule); EMA copies are evaluated and saved.

    Resumes from ``run.ckpt_path``; writes the EMA weights to ``<out>/latest`` at each checkpoint and to ``run.final``
    (with ``vae``) at the end.
    """
    import torch
    from tqdm import tqdm

    scenes = [world.Scene(**s) for s in pool["scenes"]]
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=run.lr, weight_decay=0.01)
    step = 0
    if run.ckpt_path.exists():
        state = torch.load(run.ckpt_path, weights_only=False)
        for name, module in (("unet", unet), ("text", text_encoder), ("ema_unet", ema_unet), ("ema_text", ema_text)):
            module.load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        _log(f"{run.name} resumed at step {step}")
    _log(f"{run.name}: UNet {count_parameters(unet):,} / text encoder {count_parameters(text_encoder):,} / "
         f"VAE {count_parameters(vae):,} parameters; {run.steps} steps of batch {cfg.base_batch}")
    ac = alphas_cumprod()
    weights = torch.clamp(1.0 / ac, max=cfg.max_loss_weight)
    weights = weights / weights.mean()
    last_save = time.time()
    bar = tqdm(total=run.steps, initial=step, desc=run.name, mininterval=30, file=sys.stderr)
    unet.train()
    text_encoder.train()
    running = []
    while step < run.steps:
        rng = np.random.default_rng([cfg.seed, run.stream, step])
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + (run.stream - 5) * 7_919 + step)
        idx = torch.from_numpy(rng.integers(len(scenes), size=cfg.base_batch))
        captions = [world.caption(scenes[i], rng, cfg.drop_prob, cfg.empty_prob) for i in idx.tolist()]
        latents = pool["mean"][idx] + pool["std"][idx] * torch.randn(pool["mean"][idx].shape, generator=gen)
        latents = latents * SCALING_FACTOR
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (cfg.base_batch,), generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = run.lr * _lr_factor(step, run.steps, run.warmup, run.restarts)
        context = text_encoder(tokens(captions)).last_hidden_state
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        loss = (((pred - noise) ** 2).mean(dim=(1, 2, 3)) * weights[t]).mean()
        _optimizer_step(opt, loss, params)
        step += 1
        decay = min(run.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        running.append(loss.item())
        bar.update(1)
        if step % 50 == 0:
            _log(f"{run.name} step {step} loss {np.mean(running):.4f} lr {opt.param_groups[0]['lr']:.2e}")
            running = []
        if step % cfg.eval_every == 0 or step == run.steps:
            result = evaluate(ema_unet, ema_text, vae, cfg, tokens)
            result.update(step=step, run=run.name)
            _log(f"eval {run.name} step {step}: {result}")
            with open(out / "eval.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")
        if time.time() - last_save > cfg.checkpoint_minutes * 60 or step == run.steps:
            _save_atomic({"unet": unet.state_dict(), "text": text_encoder.state_dict(),
                          "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                          "opt": opt.state_dict(), "step": step}, run.ckpt_path)
            ema_unet.save_pretrained(out / "latest" / "unet")
            ema_text.save_pretrained(out / "latest" / "text_encoder")
            (out / "latest" / "step.txt").write_text(f"{run.name} {step}")
            last_save = time.time()
    bar.close()
    ema_unet.save_pretrained(run.final / "unet")
    ema_text.save_pretrained(run.final / "text_encoder")
    vae.save_pretrained(run.final / "vae")
    _log(f"done: {run.final}")


def train_base(cfg: DemoConfig, out: Path) -> None:
    """Train text encoder + UNet from scratch on latents of ``out/vae`` into ``out/final``."""
    import torch
    from diffusers import AutoencoderKL

    pool = build_latent_pool(AutoencoderKL.from_pretrained(out / "vae").eval(), cfg, out / "latent_pool.pt")
    torch.manual_seed(cfg.seed)
    unet, text_encoder = build_unet(cfg), build_text_encoder(cfg)
    tokens = _Tokens()
    if cfg.word_embedding_norm > 0:
        spread_word_embeddings(text_encoder, tokens.tokenizer, caption_words(), cfg.word_embedding_norm)
    run = _DenoiserRun("base", cfg.base_steps, cfg.base_lr, cfg.warmup, cfg.base_restarts, cfg.ema_decay,
                       stream=5, ckpt_path=out / "base_ckpt.pt", final=out / "final")
    _fit_denoiser(cfg, out, run, unet, text_encoder, tokens, pool, decoder_tuned_vae(out))


def retune_base(cfg: DemoConfig, out: Path) -> None:
    """Continue the finished base model (EMA weights of ``out/final``) on latents of ``out/vae_color``.

    The color fine-tune moves the latents a little (anchored), so a short run at a low learning rate adapts the
    UNet; writes ``out/retuned``, which export and eval prefer.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    vae = AutoencoderKL.from_pretrained(out / "vae_color").eval()
    pool = build_latent_pool(vae, cfg, out / "latent_pool_color.pt")
    unet = UNet2DConditionModel.from_pretrained(out / "final" / "unet")
    text_encoder = CLIPTextModel.from_pretrained(out / "final" / "text_encoder")
    run = _DenoiserRun("retune", cfg.retune_steps, cfg.base_lr * cfg.retune_lr_factor, 50, (), cfg.retune_ema_decay,
                       stream=8, ckpt_path=out / "retune_ckpt.pt", final=out / "retuned")
    _fit_denoiser(cfg, out, run, unet, text_encoder, _Tokens(), pool, vae)


# --------------------------------------------------------------------------- sampling and evaluation

def sample(unet, text_encoder, vae, tokens, prompts: list[str], seeds: list[int], steps: int = 20,
           guidance: float = 7.0, negative: str = "", resolution: int = 64) -> list[np.ndarray]:
    """Generate images with DPM++ 2M Karras (diffusers) and classifier-free guidance."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
        beta_schedule="scaled_linear", prediction_type="epsilon", algorithm_type="dpmsolver++", solver_order=2,
        use_karras_sigmas=True,
    )
    scheduler.set_timesteps(steps)
    n = len(prompts)
    with torch.no_grad():
        cond = text_encoder(tokens(prompts)).last_hidden_state
        uncond = text_encoder(tokens([negative] * n)).last_hidden_state
        context = torch.cat([uncond, cond])
        size = resolution // 8
        latents = torch.stack([torch.randn(4, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds])
        latents = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            eps_u, eps_c = unet(inp, t, encoder_hidden_states=context).sample.chunk(2)
            latents = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
        images = vae.decode(latents / SCALING_FACTOR).sample
    return _tensor_to_images(images)


def evaluation_scenes(n: int, seed: int = 1234) -> list[world.Scene]:
    """A fixed list of ``n`` random scenes (no jitter) for judging generated images."""
    rng = np.random.default_rng(seed)
    return [world.sample_scene(rng, jitter=False) for _ in range(n)]


def evaluate(unet, text_encoder, vae, cfg: DemoConfig, tokens, guidance: float = 7.0) -> dict[str, float]:
    """Per-attribute judge accuracy on ``cfg.eval_images`` full-caption samples (20 steps DPM++ 2M Karras)."""
    unet.eval()
    text_encoder.eval()
    scenes = evaluation_scenes(cfg.eval_images)
    images = sample(unet, text_encoder, vae, tokens, [world.full_caption(s) for s in scenes],
                    list(range(len(scenes))), guidance=guidance, resolution=cfg.resolution)
    return accuracy(images, scenes)


def export_demo_checkpoint(out: Path, path: Path, cfg: DemoConfig) -> Path:
    """Write the EMA weights of ``model_folder(out)`` and their VAE as one fp16 SD1 single file."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from modules.models.export import export_sd1_checkpoint

    folder = model_folder(out)
    steps = f"{cfg.base_steps} UNet steps" + (f" + {cfg.retune_steps} on the color-tuned VAE's latents"
                                              if folder.name == "retuned" else "")
    metadata = {
        "modelspec.title": "demo-shapes",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.resolution": f"{cfg.resolution}x{cfg.resolution}",
        "modelspec.license": "AGPL-3.0-or-later (trained from scratch by this project on procedural data)",
        "modelspec.description": (
            "Bundled demo model: one flat circle/square/triangle in 8 colors, 5 positions, 2 sizes, 64x64. "
            "Trained from scratch on CPU with modules/training/demo_model.py (VAE, then CLIP text encoder + UNet; "
            f"eps-prediction, SD1 schedule; EMA weights after {steps})."),
        "training.config": json.dumps(asdict(cfg)),
    }
    return export_sd1_checkpoint(
        path, UNet2DConditionModel.from_pretrained(folder / "unet"), model_vae(out),
        CLIPTextModel.from_pretrained(folder / "text_encoder"), metadata, dtype=torch.float16)


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", default="all",
                        choices=("vae", "base", "decoder", "color", "retune", "all", "eval", "export"))
    parser.add_argument("--decoder-steps", type=int, default=DemoConfig.decoder_steps)
    parser.add_argument("--export-to", type=Path, default=Path("models/Stable-diffusion/demo-shapes.safetensors"))
    parser.add_argument("--vae-steps", type=int, default=DemoConfig.vae_steps)
    parser.add_argument("--base-steps", type=int, default=DemoConfig.base_steps)
    parser.add_argument("--threads", type=int, default=DemoConfig.threads)
    args = parser.parse_args(argv)
    cfg = DemoConfig(seed=args.seed, vae_steps=args.vae_steps, base_steps=args.base_steps,
                     decoder_steps=args.decoder_steps, threads=args.threads)
    torch.set_num_threads(cfg.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    stages = {"vae": train_vae, "base": train_base, "decoder": finetune_decoder, "color": finetune_vae_color,
              "retune": retune_base}
    for name, train in stages.items():
        if args.stage in (name, "all"):
            train(cfg, args.out)
    if args.stage == "export":
        _log(f"wrote {export_demo_checkpoint(args.out, args.export_to, cfg)}")
    if args.stage == "eval":
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        folder = model_folder(args.out)
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
        vae = model_vae(args.out)
        for guidance in (7.0, 1.0):
            _log(f"{folder} CFG {guidance}: {evaluate(unet, text_encoder, vae, cfg, _Tokens(), guidance)}")


if __name__ == "__main__":
    main()

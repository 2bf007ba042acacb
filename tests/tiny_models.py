"""Tiny Stable Diffusion checkpoints of every family, built and written in the original single-file layout.

They are random-weight models with the real key layouts and real architectures at small sizes, written with the
project's exporter: the loader, detector, samplers and networks are tested on them as on full-size files.
"""
from __future__ import annotations

from pathlib import Path

import torch

from modules.models.export import export_checkpoint
from modules.models.spec import Family

VOCAB = 49408


def _unet(in_ch=4, channels=(32, 64, 64), attention=(True, True, False), context=32, linear=False, heads=8,
          depth=(1, 1, 1), adm=None, time_dim=256, seed=0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kw = dict(
        sample_size=8, in_channels=in_ch, out_channels=4, block_out_channels=list(channels), layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        cross_attention_dim=context, attention_head_dim=heads if not linear else [c // 64 for c in channels],
        use_linear_projection=linear, transformer_layers_per_block=list(depth), norm_num_groups=32,
    )
    if adm:
        kw.update(addition_embed_type="text_time", addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=adm)
    m = UNet2DConditionModel(**kw)
    with torch.no_grad():  # diffusers zero-inits some output layers; give every weight a value so tests can see it
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.eval()


def _vae(seed=0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 32, 32, 32], layers_per_block=1, latent_channels=4, norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64,
    ).eval()


def _te(hidden=32, layers=2, act="quick_gelu", projection=None, seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), max_position_embeddings=77, hidden_act=act,
                         projection_dim=projection or hidden, bos_token_id=49406, eos_token_id=49407)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(cfg).eval()


def build(family: str, seed: int = 0):
    """(unet, vae, text_encoders, Family) for "sd1", "sd1-inpaint", "pix2pix", "sd2", "sd2-inpaint", "sdxl",
    "sdxl-inpaint" or "refiner"; "sdxl-odd" and "refiner-odd" have SDXL dimensions unlike the real ones (a pooled
    projection of 48 and a size/crop embedding of 8 per id instead of 256)."""
    if family in ("sd1", "sd1-inpaint", "pix2pix"):
        in_ch = {"sd1": 4, "sd1-inpaint": 9, "pix2pix": 8}[family]
        return _unet(in_ch=in_ch, seed=seed), _vae(seed), [_te(seed=seed)], Family.SD1
    if family in ("sd2", "sd2-inpaint"):
        unet = _unet(in_ch=9 if family == "sd2-inpaint" else 4, channels=(64, 64, 128), context=64, linear=True, seed=seed)
        return unet, _vae(seed), [_te(hidden=64, act="gelu", projection=64, seed=seed)], Family.SD2
    pooled, time_dim = (48, 8) if family.endswith("-odd") else (64, 256)
    if family in ("sdxl", "sdxl-inpaint", "sdxl-odd"):
        unet = _unet(in_ch=9 if family == "sdxl-inpaint" else 4, channels=(64, 64, 128), attention=(False, True, True),
                     depth=(1, 1, 2), context=32 + 64, linear=True, adm=pooled + 6 * time_dim, time_dim=time_dim,
                     seed=seed)
        tes = [_te(hidden=32, seed=seed), _te(hidden=64, act="gelu", projection=pooled, seed=seed)]
        return unet, _vae(seed), tes, Family.SDXL
    if family in ("refiner", "refiner-odd"):
        unet = _unet(channels=(64, 64, 128), attention=(False, True, True), depth=(1, 1, 1), context=64,
                     linear=True, adm=pooled + 5 * time_dim, time_dim=time_dim, seed=seed)
        return unet, _vae(seed), [_te(hidden=64, act="gelu", projection=pooled, seed=seed)], Family.SDXL_REFINER
    raise ValueError(family)


def write(family: str, path: Path, seed: int = 0, metadata: dict | None = None, dtype=None) -> Path:
    unet, vae, tes, fam = build(family, seed)
    return export_checkpoint(path, unet, vae, tes, fam, metadata, dtype)

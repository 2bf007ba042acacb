"""ControlNet key layouts: the original single file (``control_model.`` keys, lllyasviel / A1111) ↔ diffusers.

The UNet-encoder part (``time_embed``, ``input_blocks``, ``middle_block``, ``label_emb``) shares its names with the
UNet and reuses :mod:`modules.models.keymap`; the control-specific parts are mapped here:

=========================================  ==========================================
original                                   diffusers ``ControlNetModel``
=========================================  ==========================================
``input_hint_block.{0,2,…,2n-2}``          ``controlnet_cond_embedding.conv_in / blocks.{k} / conv_out``
``zero_convs.{i}.0``                       ``controlnet_down_blocks.{i}``
``middle_block_out.0``                     ``controlnet_mid_block``
=========================================  ==========================================

The architecture (a :class:`~modules.models.spec.UNetSpec` plus the hint embedding) is read from tensor shapes
in either naming, like :func:`modules.models.spec.detect_unet` does for UNets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..models import builders
from ..models.keymap import KeyMap, _unet_module_table
from ..models.spec import Family, UNetSpec, UnknownLayoutError, detect_unet

ORIGINAL_PREFIX = "control_model."
ENCODER_PARTS = ("time_embed.", "input_blocks.", "middle_block.", "label_emb.")


@dataclass(frozen=True)
class ControlNetSpec:
    """A ControlNet's architecture: its UNet-encoder copy and the hint (condition image) embedding."""

    unet: UNetSpec
    hint_channels: int  # channels of the condition image (3: RGB)
    embedding_channels: tuple[int, ...]  # diffusers ``conditioning_embedding_out_channels``

    @property
    def family(self) -> Family:
        if self.unet.adm_in_channels:
            return Family.SDXL
        return Family.SD2 if self.unet.linear_projection else Family.SD1


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def original_prefix(keys) -> str:
    """``"control_model."`` for lllyasviel/A1111 files, ``""`` for files saved without it."""
    keys = list(keys)
    if any(k.startswith(ORIGINAL_PREFIX + "input_hint_block.") for k in keys):
        return ORIGINAL_PREFIX
    if any(k.startswith("input_hint_block.") for k in keys):
        return ""
    raise UnknownLayoutError("not an original-layout ControlNet (no input_hint_block)")


def is_original_layout(keys) -> bool:
    return any("input_hint_block." in k for k in keys)


def _embedding_channels(conv_out_channels: list[int]) -> tuple[int, ...]:
    """The hint embedding's stage widths from its convolutions' output widths (conv_in, pairs of blocks)."""
    if len(conv_out_channels) < 2 or len(conv_out_channels) % 2:
        raise UnknownLayoutError(f"unexpected hint embedding with {len(conv_out_channels)} convolutions")
    return (conv_out_channels[0], *conv_out_channels[2:-1:2])


def detect_original(shapes: dict[str, tuple[int, ...]]) -> tuple[ControlNetSpec, str]:
    """Spec and key prefix of an original-layout ControlNet from its tensor shapes."""
    prefix = original_prefix(shapes)
    hint = _indices(shapes, re.escape(prefix) + r"input_hint_block\.(\d+)\.weight")
    mc = shapes[prefix + "input_blocks.0.0.weight"][0]
    # detect_unet reads the output conv for out_channels; a ControlNet has none (its output is residuals)
    unet = detect_unet({**shapes, prefix + "out.2.weight": (4, mc, 3, 3)}, prefix)
    first = shapes[f"{prefix}input_hint_block.{hint[0]}.weight"]
    widths = [shapes[f"{prefix}input_hint_block.{i}.weight"][0] for i in hint]
    return ControlNetSpec(unet, first[1], _embedding_channels(widths)), prefix


def detect_diffusers(shapes: dict[str, tuple[int, ...]]) -> ControlNetSpec:
    """Spec of a diffusers-named ControlNet from its tensor shapes (a single file without config.json)."""
    try:
        mc, in_ch = shapes["conv_in.weight"][:2]
        cond_in = shapes["controlnet_cond_embedding.conv_in.weight"]
    except KeyError as e:
        raise UnknownLayoutError(f"not a diffusers ControlNet (missing {e.args[0]})") from None
    levels = _indices(shapes, r"down_blocks\.(\d+)\.")
    res = len(_indices(shapes, r"down_blocks\.0\.resnets\.(\d+)\."))
    channels, attention, depth = [], [], []
    for lvl in levels:
        channels.append(shapes[f"down_blocks.{lvl}.resnets.0.conv2.weight"][0])
        has_attn = f"down_blocks.{lvl}.attentions.0.proj_in.weight" in shapes
        attention.append(has_attn)
        depth.append(len(_indices(shapes, rf"down_blocks\.{lvl}\.attentions\.0\.transformer_blocks\.(\d+)\."))
                     if has_attn else 0)
    ctx_key = next((k for k in shapes if k.endswith("attn2.to_k.weight")), None)
    if ctx_key is None or "mid_block.attentions.0.proj_in.weight" not in shapes:
        raise UnknownLayoutError("ControlNet without cross-attention in its middle block is not supported")
    linear = len(shapes["mid_block.attentions.0.proj_in.weight"]) == 2
    adm = shapes.get("add_embedding.linear_1.weight")
    unet = UNetSpec(
        in_channels=in_ch, out_channels=4, model_channels=mc, channel_mult=tuple(c // mc for c in channels),
        num_res_blocks=res, attention_levels=tuple(attention), transformer_depth=tuple(depth),
        mid_transformer_depth=len(_indices(shapes, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")),
        context_dim=shapes[ctx_key][1], linear_projection=linear, adm_in_channels=adm[1] if adm else None,
        heads=None if linear else 8, head_channels=64 if linear else None,
    )
    blocks = _indices(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")
    widths = [cond_in[0], *(shapes[f"controlnet_cond_embedding.blocks.{b}.weight"][0] for b in blocks),
              shapes["controlnet_cond_embedding.conv_out.weight"][0]]
    return ControlNetSpec(unet, cond_in[1], _embedding_channels(widths))


def controlnet_config(spec: ControlNetSpec) -> dict:
    """A diffusers ``ControlNetModel`` config for ``spec``."""
    cfg = builders.unet_config(spec.unet, spec.family)
    for key in ("sample_size", "out_channels", "up_block_types"):
        cfg.pop(key)
    cfg.update(conditioning_channels=spec.hint_channels,
               conditioning_embedding_out_channels=list(spec.embedding_channels))
    return cfg


def spec_from_model(model) -> ControlNetSpec:
    """The spec of a diffusers ``ControlNetModel``."""
    cfg = dict(model.config)
    unet = builders.unet_spec_from_config({**cfg, "out_channels": cfg["in_channels"]})
    return ControlNetSpec(unet, cfg["conditioning_channels"], tuple(cfg["conditioning_embedding_out_channels"]))


def keymap(spec: ControlNetSpec) -> KeyMap:
    """Original names (without ``control_model.``) ↔ diffusers ``ControlNetModel`` names."""
    table = {k: v for k, v in _unet_module_table(spec.unet).items() if k.startswith(ENCODER_PARTS)}
    convs = 2 * len(spec.embedding_channels)
    for k in range(convs):
        target = ("conv_in" if k == 0 else "conv_out" if k == convs - 1 else f"blocks.{k - 1}")
        table[f"input_hint_block.{2 * k}."] = (f"controlnet_cond_embedding.{target}.", {})
    levels, r = len(spec.unet.channel_mult), spec.unet.num_res_blocks
    for i in range(levels * (r + 1)):
        table[f"zero_convs.{i}.0."] = (f"controlnet_down_blocks.{i}.", {})
    table["middle_block_out.0."] = ("controlnet_mid_block.", {})
    return KeyMap(table)


def to_diffusers(sd: dict, spec: ControlNetSpec, prefix: str) -> dict:
    """Original-layout tensors under ``prefix`` → diffusers ``ControlNetModel`` state dict (unknown keys raise)."""
    out, unmapped = keymap(spec).convert(sd, prefix)
    if unmapped:
        raise UnknownLayoutError(f"{len(unmapped)} ControlNet tensors with unknown names, e.g. {unmapped[:3]}")
    return out


def to_original(sd: dict, spec: ControlNetSpec, prefix: str = ORIGINAL_PREFIX) -> dict:
    """A diffusers ``ControlNetModel`` state dict → original names under ``prefix``."""
    km, out = keymap(spec), {}
    for k, v in sd.items():
        ldm = km.to_ldm(k)
        if ldm is None:
            raise KeyError(f"no original-layout name for {k}")
        out[prefix + ldm] = v
    return out

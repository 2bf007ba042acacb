"""Model architecture, read from tensor names and shapes (never from file names).

A checkpoint in the original (LDM) single-file layout is described by a :class:`ModelSpec`: the family, the
variant (plain, 9-channel inpainting, instruct-pix2pix), the prediction type, and every dimension of the UNet,
VAE and text encoders. Everything is inferred from shapes, so a file of the same layout at other sizes (such as
the bundled demo model) takes the same path as a full-size SD1.5 file.

Two things are not visible in shapes and follow the family's convention:
- attention heads: SD1-layout UNets use 8 heads per attention; SD2/SDXL use 64 channels per head. CLIP text
  encoders use 64 channels per head (CLIP-L 12, OpenCLIP-H 16, bigG 20).
- v-prediction for SD2: see :func:`guess_prediction`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import Enum

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


class Family(str, Enum):
    SD1 = "SD1"
    SD2 = "SD2"
    SDXL = "SDXL"
    SDXL_REFINER = "SDXL Refiner"


class UnknownLayoutError(ValueError):
    """The tensors do not form a layout this program knows."""


@dataclass(frozen=True)
class UNetSpec:
    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[bool, ...]
    transformer_depth: tuple[int, ...]  # per level (0 where no attention)
    mid_transformer_depth: int
    context_dim: int
    linear_projection: bool
    adm_in_channels: int | None  # SDXL-style extra conditioning ("label_emb")
    heads: int | None  # fixed head count (SD1 convention) or None …
    head_channels: int | None  # … or fixed channels per head (SD2/SDXL)
    # SDXL: width of each size/crop/target (refiner: aesthetic score) id's embedding; the extra conditioning is the
    # pooled text embedding followed by these, so it is read from the shapes once the text encoders are known.
    time_embed_dim: int | None = None

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)


@dataclass(frozen=True)
class VAESpec:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    in_channels: int = 3
    mid_attention: bool = True


@dataclass(frozen=True)
class TextEncoderSpec:
    layout: str  # "hf" (Hugging Face CLIP names) or "openclip" (fused in_proj)
    prefix: str  # key prefix in the single file, up to the model's own names
    hidden_size: int
    num_layers: int
    intermediate_size: int
    max_positions: int
    vocab_size: int
    projection_dim: int | None  # text_projection output size, when present
    # Which hidden state the family conditions on (before clip skip): SD1 the last layer with the final norm;
    # SD2 (24-layer OpenCLIP-H) the penultimate with the final norm; SDXL encoders the penultimate without it.
    default_skip: int = 0
    final_norm: bool = True

    @property
    def heads(self) -> int:
        return max(1, self.hidden_size // 64)

    @property
    def hidden_act(self) -> str:
        return "quick_gelu" if self.layout == "hf" else "gelu"

    @property
    def pad_with_zero(self) -> bool:
        """OpenCLIP encoders pad with token id 0 ("!"), CLIP-L with the end token."""
        return self.layout == "openclip"


@dataclass(frozen=True)
class ModelSpec:
    family: Family
    variant: str  # "base", "inpaint" (9 channels) or "pix2pix" (8 channels)
    prediction: str  # "eps" or "v"
    unet: UNetSpec
    vae: VAESpec
    text_encoders: tuple[TextEncoderSpec, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def vae_scale(self) -> float:
        return 0.13025 if self.family in (Family.SDXL, Family.SDXL_REFINER) else 0.18215

    @property
    def summary(self) -> str:
        extra = "" if self.variant == "base" else f" {self.variant}"
        pred = " v-pred" if self.prediction == "v" else ""
        return f"{self.family.value}{extra}{pred}"


def _indices(shapes: dict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := rx.match(k))})


def detect_unet(shapes: dict[str, tuple[int, ...]], prefix: str = UNET_PREFIX) -> UNetSpec:
    """Infer the UNet dimensions from the LDM-layout tensor shapes under ``prefix``."""
    p = re.escape(prefix)
    try:
        mc, in_ch = shapes[prefix + "input_blocks.0.0.weight"][:2]
        out_ch = shapes[prefix + "out.2.weight"][0]
    except KeyError as e:
        raise UnknownLayoutError(f"no UNet found (missing {e.args[0]})") from None
    blocks = _indices(shapes, p + r"input_blocks\.(\d+)\.")
    levels: list[dict] = [{"res": 0, "ch": mc, "attn": False, "depth": 0}]
    for i in blocks[1:]:
        b = f"{prefix}input_blocks.{i}."
        if b + "0.op.weight" in shapes:
            levels.append({"res": 0, "ch": None, "attn": False, "depth": 0})
            continue
        lvl = levels[-1]
        lvl["res"] += 1
        lvl["ch"] = shapes[b + "0.out_layers.3.weight"][0]
        if b + "1.proj_in.weight" in shapes:
            lvl["attn"] = True
            lvl["depth"] = len(_indices(shapes, re.escape(b) + r"1\.transformer_blocks\.(\d+)\."))
    res = {lvl["res"] for lvl in levels}
    if len(res) != 1 or 0 in res or any(lvl["ch"] is None for lvl in levels):
        raise UnknownLayoutError(f"irregular UNet input blocks (res blocks per level {[lvl['res'] for lvl in levels]})")
    mid = prefix + "middle_block.1."
    if mid + "proj_in.weight" not in shapes:
        raise UnknownLayoutError("UNet middle block without attention is not supported")
    proj = shapes[mid + "proj_in.weight"]
    ctx_key = next((k for k in shapes if k.startswith(prefix) and k.endswith("attn2.to_k.weight")), None)
    if ctx_key is None:
        raise UnknownLayoutError("UNet has no cross-attention")
    adm = shapes.get(prefix + "label_emb.0.0.weight")
    linear = len(proj) == 2
    return UNetSpec(
        in_channels=in_ch,
        out_channels=out_ch,
        model_channels=mc,
        channel_mult=tuple(lvl["ch"] // mc for lvl in levels),
        num_res_blocks=res.pop(),
        attention_levels=tuple(lvl["attn"] for lvl in levels),
        transformer_depth=tuple(lvl["depth"] for lvl in levels),
        mid_transformer_depth=len(_indices(shapes, re.escape(mid) + r"transformer_blocks\.(\d+)\.")),
        context_dim=shapes[ctx_key][1],
        linear_projection=linear,
        adm_in_channels=adm[1] if adm else None,
        heads=None if linear else 8,
        head_channels=64 if linear else None,
    )


def detect_vae(shapes: dict[str, tuple[int, ...]], prefix: str = VAE_PREFIX) -> VAESpec:
    """Infer AutoencoderKL dimensions from LDM-layout VAE shapes under ``prefix``."""
    p = re.escape(prefix)
    levels = _indices(shapes, p + r"encoder\.down\.(\d+)\.")
    if not levels or prefix + "decoder.conv_out.weight" not in shapes:
        raise UnknownLayoutError("no VAE found")
    channels = tuple(shapes[f"{prefix}encoder.down.{i}.block.0.conv1.weight"][0] for i in levels)
    layers = len(_indices(shapes, p + r"encoder\.down\.0\.block\.(\d+)\."))
    return VAESpec(
        block_out_channels=channels,
        layers_per_block=layers,
        latent_channels=shapes[prefix + "post_quant_conv.weight"][0],
        in_channels=shapes[prefix + "encoder.conv_in.weight"][1],
        mid_attention=prefix + "encoder.mid.attn_1.q.weight" in shapes,
    )


def detect_text_encoder(shapes: dict[str, tuple[int, ...]], prefix: str) -> TextEncoderSpec | None:
    """Describe a CLIP text encoder whose keys start with ``prefix`` (HF or OpenCLIP layout), or None."""
    hf = [prefix + "text_model.", prefix]
    for base in hf:
        tok = shapes.get(base + "embeddings.token_embedding.weight")
        if tok:
            layers = _indices(shapes, re.escape(base) + r"encoder\.layers\.(\d+)\.")
            proj = shapes.get(prefix + "text_projection.weight")
            return TextEncoderSpec(
                layout="hf",
                prefix=prefix,
                hidden_size=tok[1],
                num_layers=len(layers),
                intermediate_size=shapes[base + "encoder.layers.0.mlp.fc1.weight"][0],
                max_positions=shapes[base + "embeddings.position_embedding.weight"][0],
                vocab_size=tok[0],
                projection_dim=proj[0] if proj else None,
            )
    tok = shapes.get(prefix + "token_embedding.weight")
    if tok:
        layers = _indices(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
        proj = shapes.get(prefix + "text_projection")
        return TextEncoderSpec(
            layout="openclip",
            prefix=prefix,
            hidden_size=tok[1],
            num_layers=len(layers),
            intermediate_size=shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0],
            max_positions=shapes[prefix + "positional_embedding"][0],
            vocab_size=tok[0],
            projection_dim=proj[1] if proj else None,
        )
    return None


# Text encoder locations in single-file checkpoints, per family layout.
SD1_TE = "cond_stage_model.transformer."
SD2_TE = "cond_stage_model.model."
SDXL_TE1 = "conditioner.embedders.0.transformer."
SDXL_TE2 = "conditioner.embedders.1.model."
REFINER_TE = "conditioner.embedders.0.model."

# A weight statistic that separates SD2 768-v checkpoints from 512 eps ones: after v-objective training the
# norm1 bias of the last output transformer block (``output_blocks.11.1…`` at full size) has a much larger
# spread. Community-observed, not a flag: a per-model override or an A1111 sidecar .yaml takes precedence.
V_PRED_STD_THRESHOLD = 0.09


def v_pred_probe_key(shapes) -> str | None:
    """The norm1 bias of the first transformer block in the last output block that has attention."""
    blocks = _indices(shapes, re.escape(UNET_PREFIX) + r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias")
    return f"{UNET_PREFIX}output_blocks.{blocks[-1]}.1.transformer_blocks.0.norm1.bias" if blocks else None


def detect(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None) -> ModelSpec:
    """Detect family, variant and dimensions of a single-file checkpoint from its tensor shapes.

    The prediction type is provisional ("eps" unless the file says otherwise); SD2 needs
    :func:`guess_prediction` with tensor values, which the loader calls.
    """
    metadata = metadata or {}
    unet = detect_unet(shapes)
    vae = detect_vae(shapes)
    notes: list[str] = []
    if unet.adm_in_channels:
        te1 = detect_text_encoder(shapes, SDXL_TE1)
        te2 = detect_text_encoder(shapes, SDXL_TE2)
        if te1 and te2:
            family, tes = Family.SDXL, (te1, te2)
        elif (te := detect_text_encoder(shapes, REFINER_TE)) is not None:
            family, tes = Family.SDXL_REFINER, (te,)
        else:
            raise UnknownLayoutError("SDXL-style UNet without the expected text encoders")
    elif (te := detect_text_encoder(shapes, SD1_TE)) is not None:
        family, tes = Family.SD1, (te,)
    elif (te := detect_text_encoder(shapes, SD2_TE)) is not None:
        family, tes = Family.SD2, (te,)
    else:
        raise UnknownLayoutError("no text encoder found in the checkpoint")
    if family is Family.SD2:
        tes = (replace(tes[0], default_skip=1),)
    elif family in (Family.SDXL, Family.SDXL_REFINER):
        tes = tuple(replace(t, default_skip=1, final_norm=False) for t in tes)
    if unet.context_dim != sum(t.hidden_size for t in tes):
        raise UnknownLayoutError(
            f"UNet context size {unet.context_dim} does not match the text encoder width {[t.hidden_size for t in tes]}"
        )
    if unet.adm_in_channels:
        unet = replace(unet, time_embed_dim=time_embed_dim(unet.adm_in_channels, tes[-1].projection_dim, family))
    variant = {4: "base", 9: "inpaint", 8: "pix2pix"}.get(unet.in_channels)
    if variant is None:
        raise UnknownLayoutError(f"unsupported UNet input channels: {unet.in_channels}")
    prediction = "eps"
    declared = metadata.get("modelspec.prediction_type", "").lower()
    if declared in ("v", "v_prediction", "v-prediction"):
        prediction = "v"
    if "v_pred" in shapes:
        prediction = "v"
        notes.append("v_pred key present")
    return ModelSpec(family, variant, prediction, unet, vae, tes, tuple(notes))


def time_embed_dim(adm_in_channels: int, pooled_dim: int | None, family: Family) -> int:
    """The per-id width of SDXL's size/crop embedding: ``adm_in_channels`` = pooled + ids × width (6 ids for SDXL
    base — original size, crop, target size —, 5 for the refiner — original size, crop, aesthetic score)."""
    ids = 6 if family is Family.SDXL else 5
    extra = adm_in_channels - (pooled_dim or 0)
    if not pooled_dim or extra <= 0 or extra % ids:
        raise UnknownLayoutError(f"extra conditioning of {adm_in_channels} channels is not the pooled text embedding "
                                 f"({pooled_dim}) and {ids} equal size/crop embeddings")
    return extra // ids


def guess_prediction(spec: ModelSpec, probe_std: float | None) -> str:
    """Heuristic for SD2 files without a declaration: the probe tensor's spread (see V_PRED_PROBE)."""
    if spec.family is not Family.SD2 or spec.prediction == "v" or probe_std is None:
        return spec.prediction
    return "v" if probe_std > V_PRED_STD_THRESHOLD else "eps"

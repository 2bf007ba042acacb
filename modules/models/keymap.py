"""Key layouts: the original (LDM) single-file names ↔ diffusers / Hugging Face names.

One table per component, built from the architecture spec, used in both directions: loading (LDM → diffusers),
exporting (diffusers → LDM) and translating LoRA module names. Conversions that are more than a rename (VAE
attention 1×1 conv ↔ linear, OpenCLIP fused q/k/v, text projection transpose) are handled here too.
"""
from __future__ import annotations

from .spec import UNetSpec, VAESpec, TextEncoderSpec

RESNET_RENAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
VAE_RESNET_RENAMES = {"nin_shortcut": "conv_shortcut"}
VAE_ATTN_RENAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _unet_module_table(spec: UNetSpec) -> dict[str, tuple[str, dict[str, str]]]:
    """LDM module prefix → (diffusers module prefix, inner renames)."""
    t: dict[str, tuple[str, dict[str, str]]] = {
        "time_embed.0.": ("time_embedding.linear_1.", {}),
        "time_embed.2.": ("time_embedding.linear_2.", {}),
        "input_blocks.0.0.": ("conv_in.", {}),
        "middle_block.0.": ("mid_block.resnets.0.", RESNET_RENAMES),
        "middle_block.1.": ("mid_block.attentions.0.", {}),
        "middle_block.2.": ("mid_block.resnets.1.", RESNET_RENAMES),
        "out.0.": ("conv_norm_out.", {}),
        "out.2.": ("conv_out.", {}),
    }
    if spec.adm_in_channels:
        t["label_emb.0.0."] = ("add_embedding.linear_1.", {})
        t["label_emb.0.2."] = ("add_embedding.linear_2.", {})
    n_levels, r = len(spec.channel_mult), spec.num_res_blocks
    for lvl in range(n_levels):
        for j in range(r):
            i = 1 + lvl * (r + 1) + j
            t[f"input_blocks.{i}.0."] = (f"down_blocks.{lvl}.resnets.{j}.", RESNET_RENAMES)
            if spec.attention_levels[lvl]:
                t[f"input_blocks.{i}.1."] = (f"down_blocks.{lvl}.attentions.{j}.", {})
        if lvl < n_levels - 1:
            t[f"input_blocks.{1 + lvl * (r + 1) + r}.0.op."] = (f"down_blocks.{lvl}.downsamplers.0.conv.", {})
    for u in range(n_levels):
        attn = spec.attention_levels[n_levels - 1 - u]
        for j in range(r + 1):
            i = u * (r + 1) + j
            t[f"output_blocks.{i}.0."] = (f"up_blocks.{u}.resnets.{j}.", RESNET_RENAMES)
            if attn:
                t[f"output_blocks.{i}.1."] = (f"up_blocks.{u}.attentions.{j}.", {})
        if u < n_levels - 1:
            i = u * (r + 1) + r
            t[f"output_blocks.{i}.{2 if attn else 1}.conv."] = (f"up_blocks.{u}.upsamplers.0.conv.", {})
    return t


def _vae_module_table(spec: VAESpec) -> dict[str, tuple[str, dict[str, str]]]:
    t: dict[str, tuple[str, dict[str, str]]] = {
        "quant_conv.": ("quant_conv.", {}),
        "post_quant_conv.": ("post_quant_conv.", {}),
    }
    n = len(spec.block_out_channels)
    for part in ("encoder", "decoder"):
        t[f"{part}.conv_in."] = (f"{part}.conv_in.", {})
        t[f"{part}.conv_out."] = (f"{part}.conv_out.", {})
        t[f"{part}.norm_out."] = (f"{part}.conv_norm_out.", {})
        t[f"{part}.mid.block_1."] = (f"{part}.mid_block.resnets.0.", VAE_RESNET_RENAMES)
        t[f"{part}.mid.block_2."] = (f"{part}.mid_block.resnets.1.", VAE_RESNET_RENAMES)
        if spec.mid_attention:
            t[f"{part}.mid.attn_1."] = (f"{part}.mid_block.attentions.0.", VAE_ATTN_RENAMES)
    for i in range(n):
        for j in range(spec.layers_per_block):
            t[f"encoder.down.{i}.block.{j}."] = (f"encoder.down_blocks.{i}.resnets.{j}.", VAE_RESNET_RENAMES)
        if i < n - 1:
            t[f"encoder.down.{i}.downsample.conv."] = (f"encoder.down_blocks.{i}.downsamplers.0.conv.", {})
        k = n - 1 - i
        for j in range(spec.layers_per_block + 1):
            t[f"decoder.up.{i}.block.{j}."] = (f"decoder.up_blocks.{k}.resnets.{j}.", VAE_RESNET_RENAMES)
        if i > 0:
            t[f"decoder.up.{i}.upsample.conv."] = (f"decoder.up_blocks.{k}.upsamplers.0.conv.", {})
    return t


class KeyMap:
    """A bidirectional rename table over module prefixes with inner renames."""

    def __init__(self, table: dict[str, tuple[str, dict[str, str]]]):
        self._fwd = table
        self._rev = {dst: (src, {v: k for k, v in inner.items()}) for src, (dst, inner) in table.items()}

    @staticmethod
    def _map(key: str, table: dict[str, tuple[str, dict[str, str]]]) -> str | None:
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:n]) + "."
            hit = table.get(head)
            if hit is None:
                continue
            dst, inner = hit
            rest = key[len(head):]
            for a, b in inner.items():
                if rest == a or rest.startswith(a + "."):
                    rest = b + rest[len(a):]
                    break
            return dst + rest
        return None

    def to_diffusers(self, ldm_key: str) -> str | None:
        return self._map(ldm_key, self._fwd)

    def to_ldm(self, diffusers_key: str) -> str | None:
        return self._map(diffusers_key, self._rev)

    def convert(self, sd: dict, prefix: str) -> tuple[dict, list[str]]:
        """The tensors of ``sd`` under ``prefix`` renamed to diffusers names; (state dict, unmapped original keys)."""
        out, unmapped = {}, []
        for k, v in sd.items():
            if not k.startswith(prefix):
                continue
            dk = self.to_diffusers(k[len(prefix):])
            if dk is None:
                unmapped.append(k)
            else:
                out[dk] = v
        return out, unmapped


def unet_keymap(spec: UNetSpec) -> KeyMap:
    return KeyMap(_unet_module_table(spec))


def vae_keymap(spec: VAESpec) -> KeyMap:
    return KeyMap(_vae_module_table(spec))


def _is_vae_attn_matrix(diffusers_key: str) -> bool:
    return ".attentions.0.to_" in diffusers_key and diffusers_key.endswith(".weight")


def convert_unet(sd: dict, spec: UNetSpec, prefix: str) -> tuple[dict, list[str]]:
    """LDM UNet tensors under ``prefix`` → diffusers state dict; returns (state dict, unmapped LDM keys)."""
    return unet_keymap(spec).convert(sd, prefix)


def convert_vae(sd: dict, spec: VAESpec, prefix: str) -> tuple[dict, list[str]]:
    """LDM VAE tensors under ``prefix`` (may be "") → diffusers AutoencoderKL state dict."""
    out, unmapped = vae_keymap(spec).convert(sd, prefix)
    # the original VAE's attention projections are 1×1 convolutions; diffusers' are linear layers
    return {k: v[:, :, 0, 0] if _is_vae_attn_matrix(k) and v.ndim == 4 else v for k, v in out.items()}, unmapped


def export_unet(sd: dict, spec: UNetSpec, prefix: str) -> dict:
    km = unet_keymap(spec)
    return {prefix + _require(km.to_ldm(k), k): v for k, v in sd.items()}


def export_vae(sd: dict, spec: VAESpec, prefix: str) -> dict:
    km, out = vae_keymap(spec), {}
    for k, v in sd.items():
        if _is_vae_attn_matrix(k) and v.ndim == 2:
            v = v[:, :, None, None]
        out[prefix + _require(km.to_ldm(k), k)] = v
    return out


def _require(mapped: str | None, key: str) -> str:
    if mapped is None:
        raise KeyError(f"no original-layout name for {key}")
    return mapped


# --- text encoders -------------------------------------------------------------------------------------------

OPENCLIP_LAYER_RENAMES = {
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "attn.out_proj.": "self_attn.out_proj.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}


def convert_text_encoder(sd: dict, spec: TextEncoderSpec) -> tuple[dict, list[str]]:
    """Single-file text encoder tensors → transformers CLIPTextModel(WithProjection) state dict."""
    p = spec.prefix
    out: dict = {}
    unmapped: list[str] = []
    for k, v in sd.items():
        if not k.startswith(p):
            continue
        rest = k[len(p):]
        if spec.layout == "hf":
            if rest.endswith("position_ids"):
                continue  # a buffer some exporters save; rebuilt by the model
            if rest.startswith("text_projection."):
                out[rest] = v
            else:
                out[rest if rest.startswith("text_model.") else "text_model." + rest] = v
            continue
        mapped = _openclip_to_hf(rest, v, out)
        if not mapped:
            unmapped.append(k)
    return out, unmapped


def _openclip_to_hf(rest: str, v, out: dict) -> bool:
    tm = "text_model."
    simple = {
        "token_embedding.weight": tm + "embeddings.token_embedding.weight",
        "positional_embedding": tm + "embeddings.position_embedding.weight",
        "ln_final.weight": tm + "final_layer_norm.weight",
        "ln_final.bias": tm + "final_layer_norm.bias",
    }
    if rest in simple:
        out[simple[rest]] = v
        return True
    if rest == "text_projection":
        out["text_projection.weight"] = v.t().contiguous()
        return True
    if rest == "logit_scale":
        return True  # contrastive-loss temperature: unused for generation
    if not rest.startswith("transformer.resblocks."):
        return False
    idx, inner = rest[len("transformer.resblocks."):].split(".", 1)
    base = f"{tm}encoder.layers.{idx}."
    if inner in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if inner.endswith("weight") else "bias"
        for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
            out[f"{base}self_attn.{name}.{kind}"] = part.contiguous()
        return True
    for a, b in OPENCLIP_LAYER_RENAMES.items():
        if inner.startswith(a):
            out[base + b + inner[len(a):]] = v
            return True
    return False


def export_text_encoder(sd: dict, spec: TextEncoderSpec) -> dict:
    """transformers CLIP state dict → single-file layout under ``spec.prefix``."""
    import torch

    p = spec.prefix
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    if spec.layout == "hf":
        return {p + k: v for k, v in sd.items()}
    tm = "text_model."
    out = {}
    rev_simple = {
        tm + "embeddings.token_embedding.weight": "token_embedding.weight",
        tm + "embeddings.position_embedding.weight": "positional_embedding",
        tm + "final_layer_norm.weight": "ln_final.weight",
        tm + "final_layer_norm.bias": "ln_final.bias",
    }
    fused: dict[tuple[str, str], dict[str, object]] = {}
    for k, v in sd.items():
        if k in rev_simple:
            out[p + rev_simple[k]] = v
        elif k == "text_projection.weight":
            out[p + "text_projection"] = v.t().contiguous()
        elif k.startswith(tm + "encoder.layers."):
            idx, inner = k[len(tm + "encoder.layers."):].split(".", 1)
            base = f"{p}transformer.resblocks.{idx}."
            if inner.startswith("self_attn.") and inner.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, kind = inner.split(".")
                fused.setdefault((base, kind), {})[proj] = v
                continue
            for a, b in OPENCLIP_LAYER_RENAMES.items():
                if inner.startswith(b):
                    out[base + a + inner[len(b):]] = v
                    break
            else:
                raise KeyError(f"no original-layout name for {k}")
        else:
            raise KeyError(f"no original-layout name for {k}")
    for (base, kind), parts in fused.items():
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out

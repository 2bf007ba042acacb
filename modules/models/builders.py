"""Build diffusers / transformers models from a spec without random init, and read specs back from configs."""
from __future__ import annotations

from .spec import Family, TextEncoderSpec, UNetSpec, VAESpec

NORM_GROUPS = 32  # every SD-family UNet and VAE uses 32 groups; not visible in shapes
TEXT_TIME_EMBED_DIM = 256  # SDXL size/crop/target (or aesthetic score) embedding width per id, when not known


def unet_config(spec: UNetSpec, family: Family, sample_size: int = 64) -> dict:
    """A diffusers UNet2DConditionModel config for ``spec``."""
    n = len(spec.channel_mult)
    last_depth = spec.transformer_depth[-1] if spec.attention_levels[-1] else spec.mid_transformer_depth
    if last_depth != spec.mid_transformer_depth:
        raise ValueError("middle block transformer depth differs from the last level's; not supported")
    depths = [d if a else spec.mid_transformer_depth for d, a in zip(spec.transformer_depth, spec.attention_levels)]
    heads: int | list[int] = spec.heads if spec.heads else [c // spec.head_channels for c in spec.block_out_channels]
    cfg = dict(
        sample_size=sample_size,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in spec.attention_levels],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(spec.attention_levels)],
        block_out_channels=list(spec.block_out_channels),
        layers_per_block=spec.num_res_blocks,
        cross_attention_dim=spec.context_dim,
        attention_head_dim=heads,
        use_linear_projection=spec.linear_projection,
        transformer_layers_per_block=depths,
        norm_num_groups=NORM_GROUPS,
        upcast_attention=family is Family.SD2,
    )
    if n == 0:
        raise ValueError("UNet without levels")
    if spec.adm_in_channels:
        cfg.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=spec.time_embed_dim or TEXT_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=spec.adm_in_channels,
        )
    return cfg


def unet_spec_from_config(cfg) -> UNetSpec:
    """The spec of an existing diffusers UNet (its ``config``)."""
    boc = list(cfg["block_out_channels"])
    mc = boc[0]
    attn = tuple(t.startswith("CrossAttn") for t in cfg["down_block_types"])
    tl = cfg.get("transformer_layers_per_block", 1)
    depths = list(tl) if isinstance(tl, (list, tuple)) else [tl] * len(boc)
    lin = bool(cfg.get("use_linear_projection", False))
    ahd = cfg["attention_head_dim"]
    heads = ahd if isinstance(ahd, int) else None
    if not lin and heads is None:
        heads = ahd[0]
    return UNetSpec(
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        model_channels=mc,
        channel_mult=tuple(c // mc for c in boc),
        num_res_blocks=cfg["layers_per_block"] if isinstance(cfg["layers_per_block"], int) else cfg["layers_per_block"][0],
        attention_levels=attn,
        transformer_depth=tuple(d if a else 0 for d, a in zip(depths, attn)),
        mid_transformer_depth=depths[-1],
        context_dim=cfg["cross_attention_dim"],
        linear_projection=lin,
        adm_in_channels=cfg.get("projection_class_embeddings_input_dim") if cfg.get("addition_embed_type") else None,
        heads=heads if not lin else None,
        head_channels=None if not lin else 64,
        time_embed_dim=cfg.get("addition_time_embed_dim") if cfg.get("addition_embed_type") else None,
    )


def vae_config(spec: VAESpec, scaling_factor: float) -> dict:
    n = len(spec.block_out_channels)
    return dict(
        in_channels=spec.in_channels,
        out_channels=spec.in_channels,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(spec.block_out_channels),
        layers_per_block=spec.layers_per_block,
        latent_channels=spec.latent_channels,
        norm_num_groups=NORM_GROUPS,
        scaling_factor=scaling_factor,
        mid_block_add_attention=spec.mid_attention,
    )


def vae_spec_from_config(cfg) -> VAESpec:
    return VAESpec(
        block_out_channels=tuple(cfg["block_out_channels"]),
        layers_per_block=cfg["layers_per_block"],
        latent_channels=cfg["latent_channels"],
        in_channels=cfg["in_channels"],
        mid_attention=cfg.get("mid_block_add_attention", True),
    )


def text_encoder_config(spec: TextEncoderSpec):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        hidden_act=spec.hidden_act,
        layer_norm_eps=1e-5,
        projection_dim=spec.projection_dim or spec.hidden_size,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0 if spec.pad_with_zero else 49407,
    )


def text_encoder_spec_from_model(model, layout: str, prefix: str) -> TextEncoderSpec:
    cfg = model.config
    has_proj = hasattr(model, "text_projection")
    return TextEncoderSpec(
        layout=layout,
        prefix=prefix,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        intermediate_size=cfg.intermediate_size,
        max_positions=cfg.max_position_embeddings,
        vocab_size=cfg.vocab_size,
        projection_dim=cfg.projection_dim if has_proj else None,
    )


def build_on_meta(factory):
    """Construct a module on the meta device (no memory, no random init)."""
    import torch

    with torch.device("meta"):
        return factory()


def fill(module, state_dict: dict, what: str) -> None:
    """Assign tensors to a meta-built module (strict), then rebuild non-persistent buffers."""
    import torch

    missing, unexpected = module.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            f"{what}: layout mismatch ({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    for name, buf in list(module.named_buffers()):
        if buf.device.type != "meta":
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if attr == "position_ids":
            owner.register_buffer(attr, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
        else:
            raise ValueError(f"{what}: buffer {name} has no value after loading")


def build_unet(spec: UNetSpec, family: Family, sd: dict, sample_size: int = 64):
    from diffusers import UNet2DConditionModel

    model = build_on_meta(lambda: UNet2DConditionModel(**unet_config(spec, family, sample_size)))
    fill(model, sd, "UNet")
    return model.eval().requires_grad_(False)


def build_vae(spec: VAESpec, scaling_factor: float, sd: dict):
    from diffusers import AutoencoderKL

    model = build_on_meta(lambda: AutoencoderKL(**vae_config(spec, scaling_factor)))
    fill(model, sd, "VAE")
    return model.eval().requires_grad_(False)


def canonical_text_encoder_state(model) -> dict:
    """A CLIP text model's tensors under canonical Hugging Face names (``text_model.…``, ``text_projection.…``).

    transformers 5 names a plain ``CLIPTextModel``'s tensors without the ``text_model.`` prefix that checkpoints
    (and ``CLIPTextModelWithProjection``) use.
    """
    return {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
            for k, v in model.state_dict().items()}


def text_encoder_state_for(model, canonical: dict) -> dict:
    """Rename canonical text-encoder tensors to what ``model``'s own state dict expects."""
    if any(k.startswith("text_model.") for k in model.state_dict()):
        return canonical
    return {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in canonical.items()}


def build_text_encoder(spec: TextEncoderSpec, sd: dict):
    """A transformers CLIP text model from canonical-name tensors (with projection when the tensors have one)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if "text_projection.weight" in sd else CLIPTextModel
    config = text_encoder_config(spec)
    model = build_on_meta(lambda: cls(config))
    fill(model, text_encoder_state_for(model, sd), "text encoder")
    return model.eval().requires_grad_(False)

"""Loading real key layouts: detection, dimensions, round trips, full-size layouts, bad files."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from modules.models import builders, keymap
from modules.models.export import export_model, original_state_dict, save_safetensors
from modules.models.loader import LoadOptions, file_resolution, load_checkpoint, load_vae_file
from modules.models.safetensors_file import ModelFileError, read_header
from modules.models.spec import Family, detect
from tests import tiny_models

FAMILIES = {
    "sd1": (Family.SD1, "base"),
    "sd1-inpaint": (Family.SD1, "inpaint"),
    "pix2pix": (Family.SD1, "pix2pix"),
    "sd2": (Family.SD2, "base"),
    "sd2-inpaint": (Family.SD2, "inpaint"),
    "sdxl": (Family.SDXL, "base"),
    "sdxl-inpaint": (Family.SDXL, "inpaint"),
    "refiner": (Family.SDXL_REFINER, "base"),
    "sdxl-odd": (Family.SDXL, "base"),  # pooled 48, size/crop embedding 8 per id
    "refiner-odd": (Family.SDXL_REFINER, "base"),
}


def _unet_out(unet, family, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    kw = {}
    if unet.config.addition_embed_type == "text_time":
        n_ids = 6 if family is Family.SDXL else 5
        pooled = unet.config.projection_class_embeddings_input_dim - unet.config.addition_time_embed_dim * n_ids
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g), "time_ids": torch.rand(1, n_ids, generator=g) * 64}
    with torch.inference_mode():
        return unet(x, torch.tensor([500.0]), encoder_hidden_states=ctx, **kw).sample


@pytest.mark.parametrize("name", list(FAMILIES))
def test_round_trip_is_bit_identical(name, tmp_path):
    unet, vae, tes, family = tiny_models.build(name, seed=1)
    path = tiny_models.write(name, tmp_path / f"{name}.safetensors", seed=1)
    model = load_checkpoint(path)
    assert (model.family, model.spec.variant) == FAMILIES[name]
    for a, b in ((unet, model.unet), (vae, model.vae), *zip(tes, model.text_encoders)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(_unet_out(unet, family), _unet_out(model.unet, family))
    ids = torch.tensor([[49406, 320, 1125, 49407] + [49407] * 73])
    with torch.inference_mode():
        for a, b in zip(tes, model.text_encoders):
            assert torch.equal(a(ids).last_hidden_state, b(ids).last_hidden_state)
    # export of the loaded model writes the same tensors again
    again = export_model(model, tmp_path / "again.safetensors")
    assert read_header(again).shapes() == read_header(path).shapes()


def test_detected_dimensions_of_tiny_sdxl(tmp_path):
    model = load_checkpoint(tiny_models.write("sdxl", tmp_path / "x.safetensors"))
    u = model.spec.unet
    assert (u.model_channels, u.channel_mult, u.num_res_blocks) == (64, (1, 1, 2), 1)
    assert u.attention_levels == (False, True, True) and u.transformer_depth == (0, 1, 2)
    assert (u.context_dim, u.adm_in_channels, u.linear_projection, u.time_embed_dim) == (96, 64 + 1536, True, 256)
    te1, te2 = model.spec.text_encoders
    assert (te1.layout, te1.hidden_size, te1.num_layers) == ("hf", 32, 2)
    assert (te2.layout, te2.hidden_size, te2.projection_dim, te2.pad_with_zero) == ("openclip", 64, 64, True)
    assert model.spec.vae_scale == 0.13025


@pytest.mark.parametrize("name, pooled, time_dim", [("sdxl-odd", 48, 8), ("refiner-odd", 48, 8), ("refiner", 64, 256)])
def test_sdxl_extra_conditioning_widths_come_from_the_shapes(tmp_path, name, pooled, time_dim):
    model = load_checkpoint(tiny_models.write(name, tmp_path / "x.safetensors"))
    assert model.spec.text_encoders[-1].projection_dim == pooled and model.spec.unet.time_embed_dim == time_dim
    assert model.unet.config.addition_time_embed_dim == time_dim


# --- full-size layouts on the meta device ---------------------------------------------------------------------

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    cross_attention_dim=768, attention_head_dim=8,
)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280], layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=2048,
    attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)


def _meta(factory):
    return builders.build_on_meta(factory)


def _clip(hidden, layers, inter, act, projection=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, max_position_embeddings=77, hidden_act=act,
                         projection_dim=projection or hidden)
    return _meta(lambda: (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg))


@pytest.mark.parametrize("which", ["sd15", "sdxl"])
def test_full_size_layout_matches_diffusers_converters(which):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    unet = _meta(lambda: UNet2DConditionModel(**(SD15_UNET if which == "sd15" else SDXL_UNET)))
    vae = _meta(lambda: AutoencoderKL(**SD_VAE))
    if which == "sd15":
        tes, family = [_clip(768, 12, 3072, "quick_gelu")], Family.SD1
    else:
        tes, family = [_clip(768, 12, 3072, "quick_gelu"), _clip(1280, 32, 5120, "gelu", 1280)], Family.SDXL
    ldm = original_state_dict(unet, vae, tes, family)
    n_unet = sum(k.startswith("model.diffusion_model.") for k in ldm)
    assert n_unet == (686 if which == "sd15" else 1680)  # tensor counts of the published single files

    spec = detect({k: tuple(v.shape) for k, v in ldm.items()})
    assert spec.family is family
    assert spec.unet.block_out_channels == tuple(unet.config.block_out_channels)
    assert spec.unet.num_res_blocks == 2 and spec.unet.context_dim == unet.config.cross_attention_dim
    assert builders.unet_config(spec.unet, family)["attention_head_dim"] == unet.config.attention_head_dim

    # diffusers' own converters read our original-layout names back to exactly the model's names and shapes
    theirs = sfu.convert_ldm_unet_checkpoint(dict(ldm), unet.config)
    ours, unmapped = keymap.convert_unet(ldm, spec.unet, "model.diffusion_model.")
    model_shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert not unmapped
    assert {k: tuple(v.shape) for k, v in theirs.items()} == model_shapes
    assert {k: tuple(v.shape) for k, v in ours.items()} == model_shapes
    vae_theirs = sfu.convert_ldm_vae_checkpoint(dict(ldm), vae.config)
    assert {k: tuple(v.shape) for k, v in vae_theirs.items()} == {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    if which == "sdxl":
        te2 = sfu.convert_open_clip_checkpoint(tes[1], dict(ldm), prefix="conditioner.embedders.1.model.")
        ours_te2, _ = keymap.convert_text_encoder(ldm, spec.text_encoders[1])
        assert {k: tuple(v.shape) for k, v in te2.items()} == {k: tuple(v.shape) for k, v in ours_te2.items()}


# --- dtypes, EMA, VAE files, diffusers folders, v-prediction ------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load(dtype, tmp_path):
    path = tiny_models.write("sd1", tmp_path / "half.safetensors", dtype=dtype)
    assert {e.dtype for e in read_header(path).tensors.values()} == {"F16" if dtype == torch.float16 else "BF16"}
    model = load_checkpoint(path, LoadOptions(dtype=torch.float32))
    assert next(model.unet.parameters()).dtype == torch.float32
    assert torch.isfinite(_unet_out(model.unet, Family.SD1)).all()


def test_ema_weights_ignored_unless_asked(tmp_path):
    unet, vae, tes, family = tiny_models.build("sd1")
    sd = original_state_dict(unet, vae, tes, family)
    key = "model.diffusion_model.out.2.weight"
    sd["model_ema.diffusion_model" + key[len("model.diffusion_model."):].replace(".", "")] = torch.zeros_like(sd[key])
    path = save_safetensors(sd, tmp_path / "ema.safetensors")
    assert load_checkpoint(path).unet.conv_out.weight.abs().sum() > 0
    assert load_checkpoint(path, LoadOptions(use_ema=True)).unet.conv_out.weight.abs().sum() == 0


@pytest.mark.parametrize("layout", ["ldm-prefixed", "ldm-bare", "diffusers"])
def test_vae_file_layouts(layout, tmp_path):
    _, vae, _, _ = tiny_models.build("sd1", seed=3)
    if layout == "diffusers":
        sd = vae.state_dict()
    else:
        prefix = "first_stage_model." if layout == "ldm-prefixed" else ""
        sd = keymap.export_vae(vae.state_dict(), builders.vae_spec_from_config(vae.config), prefix)
    path = save_safetensors({k: v.contiguous() for k, v in sd.items()}, tmp_path / "vae.safetensors")
    loaded = load_vae_file(path, None, 0.18215)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(vae.decode(vae.encode(x).latent_dist.mean).sample, loaded.decode(loaded.encode(x).latent_dist.mean).sample)


def test_diffusers_folder(tmp_path):
    unet, vae, tes, _ = tiny_models.build("sd2")
    folder = tmp_path / "my-model"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    tes[0].save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    (folder / "model_index.json").write_text(json.dumps({"unet": [], "vae": [], "text_encoder": [], "scheduler": []}))
    model = load_checkpoint(folder)
    assert model.family is Family.SD2 and model.spec.prediction == "v"
    assert torch.equal(_unet_out(unet, Family.SD2), _unet_out(model.unet, Family.SD2))


def test_v_prediction_sources(tmp_path):
    path = tiny_models.write("sd2", tmp_path / "sd2.safetensors")
    assert load_checkpoint(path).spec.prediction == "eps"  # zero-spread probe → the 512 eps heuristic
    assert load_checkpoint(path, LoadOptions(prediction="v")).spec.prediction == "v"  # per-model override
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert load_checkpoint(path).spec.prediction == "v"  # A1111 sidecar config
    declared = tiny_models.write("sd2", tmp_path / "declared.safetensors", metadata={"modelspec.prediction_type": "v"})
    assert load_checkpoint(declared).spec.prediction == "v"
    unet, vae, tes, family = tiny_models.build("sd2")
    sd = original_state_dict(unet, vae, tes, family)
    probe = "model.diffusion_model.output_blocks.5.1.transformer_blocks.0.norm1.bias"  # the tiny model's last block
    sd[probe] = torch.linspace(-0.5, 0.5, sd[probe].numel())  # the spread v-objective training leaves
    assert load_checkpoint(save_safetensors(sd, tmp_path / "v.safetensors")).spec.prediction == "v"


def test_native_size_from_metadata_or_family(tmp_path):
    sd1 = tiny_models.write("sd1", tmp_path / "sd1.safetensors")
    assert file_resolution(sd1) == (512, 512) == load_checkpoint(sd1).native_size
    wide = tiny_models.write("sd1", tmp_path / "wide.safetensors", metadata={"modelspec.resolution": "96x64"})
    assert file_resolution(wide) == (96, 64) == load_checkpoint(wide).native_size
    sd2 = tiny_models.write("sd2", tmp_path / "sd2.safetensors")
    assert file_resolution(sd2) == (512, 512)
    sd2.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert file_resolution(sd2) == (768, 768) == load_checkpoint(sd2).native_size  # SD2 768-v
    assert file_resolution(tiny_models.write("sdxl", tmp_path / "xl.safetensors")) == (1024, 1024)
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    assert file_resolution(tmp_path / "broken.safetensors") is None


# --- bad files ------------------------------------------------------------------------------------------------

def test_bad_files_give_clear_errors(tmp_path):
    good = tiny_models.write("sd1", tmp_path / "good.safetensors")
    data = good.read_bytes()
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(struct.pack("<Q", 40) + b"{not json" + b" " * 40 + data[100:200])
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    wrong = save_safetensors({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, tmp_path / "wrong.safetensors")
    pickle = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, pickle)
    cases = {corrupt: "corrupt safetensors header", truncated: "truncated", wrong: "no UNet found", pickle: "--allow-pickle"}
    for path, words in cases.items():
        with pytest.raises(ModelFileError) as err:
            load_checkpoint(path)
        assert path.name in str(err.value) and words in str(err.value)


def test_pickle_loads_only_with_flag_and_weights_only(tmp_path):
    unet, vae, tes, family = tiny_models.build("sd1")
    sd = original_state_dict(unet, vae, tes, family)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd}, path)
    model = load_checkpoint(path, LoadOptions(allow_pickle=True))
    assert torch.equal(model.unet.conv_in.weight, unet.conv_in.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": Evil()}}, evil)
    with pytest.raises(ModelFileError, match="cannot load pickle"):
        load_checkpoint(evil, LoadOptions(allow_pickle=True))

"""LoRA family: files written in the real layouts, loaded through the loader, applied to tiny real models."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import diffusers
import pytest
import torch
import transformers
from safetensors.torch import save_file

from modules.hashing import HashCache
from modules.networks.catalog import LoraCatalog
from modules.networks.lora import WeightRef, build_module_index, load_network
from modules.networks.patcher import NetworkPatch, WeightPatcher

UNET_ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
UNET_CONV = "down_blocks.0.resnets.0.conv1"  # 3×3
TE_Q = "encoder.layers.0.self_attn.q_proj"


def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()


def clip_config(hidden: int = 32) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=hidden,
    )


@pytest.fixture
def models() -> dict[str, torch.nn.Module]:
    unet = tiny_unet()
    torch.manual_seed(1)
    return {"unet": unet, "te1": transformers.CLIPTextModel(clip_config()).eval()}


def snapshot(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{role}.{k}": v.detach().clone() for role, m in models.items() for k, v in m.state_dict().items()}


def assert_bit_identical(models: dict[str, torch.nn.Module], before: dict[str, torch.Tensor]) -> None:
    now = snapshot(models)
    assert now.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k].view(torch.uint8), now[k].view(torch.uint8))]
    assert changed == []


def outputs(models: dict[str, torch.nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])
    with torch.inference_mode():
        text = models["te1"](input_ids=ids).last_hidden_state
        latent = torch.randn(1, 4, 8, 8, generator=gen)
        ctx = torch.randn(1, 7, 32, generator=gen)
        noise = models["unet"](latent, 10, encoder_hidden_states=ctx).sample
    return text, noise


def kohya_targets(models: dict[str, torch.nn.Module]) -> dict[str, tuple[str, torch.Size]]:
    """kohya key stem → (role, weight shape) for every attention linear / 1×1 conv of the UNet and TE linears."""
    targets = {}
    for name, module in models["unet"].named_modules():
        linear = isinstance(module, torch.nn.Linear) or (
            isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
        )
        if ".attentions." in name and linear:
            targets["lora_unet_" + name.replace(".", "_")] = ("unet", module.weight.shape)
    for name, module in models["te1"].named_modules():
        if isinstance(module, torch.nn.Linear):
            # kohya writes HF CLIP names with the `text_model.` level, which transformers 5 no longer has
            targets["lora_te_text_model_" + name.replace(".", "_")] = ("te1", module.weight.shape)
    return targets


def make_kohya_lora(models, rank: int = 4, alpha: float = 2.0, seed: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for stem, (_, shape) in kohya_targets(models).items():
        fan_in = shape[1:]
        state[f"{stem}.lora_down.weight"] = torch.randn(rank, *fan_in, generator=gen, dtype=torch.float32) * 0.3
        state[f"{stem}.lora_up.weight"] = torch.randn(shape[0], rank, *[1] * len(fan_in[1:]), generator=gen) * 0.3
        state[f"{stem}.alpha"] = torch.tensor(alpha)
    return {k: v.to(torch.float16) if v.dim() > 0 else v for k, v in state.items()}


def save(tmp_path, name: str, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path), metadata=metadata)
    return path


def weight(models, role: str, module: str) -> torch.Tensor:
    return models[role].get_submodule(module).weight.detach()


def test_kohya_lora_changes_outputs_and_removal_restores_every_weight(models, tmp_path):
    before, (text0, noise0) = snapshot(models), outputs(models)
    net = load_network(save(tmp_path, "style", make_kohya_lora(models)), models)
    assert net.unmatched == () and dict(net.unsupported) == {}
    assert len(net.updates) == len(kohya_targets(models))

    patcher = WeightPatcher(models)
    assert patcher.apply([NetworkPatch(net)]) == len(net.updates)
    text1, noise1 = outputs(models)
    assert not torch.allclose(text0, text1, atol=1e-3)
    assert not torch.allclose(noise0, noise1, atol=1e-3)

    patcher.remove_all()
    assert_bit_identical(models, before)
    text2, noise2 = outputs(models)
    assert torch.equal(text0, text2) and torch.equal(noise0, noise2)
    assert patcher.backup_bytes > 0  # originals stay backed up for the next application …
    patcher.release_backups()
    assert patcher.backup_bytes == 0  # … until released
    assert_bit_identical(models, before)


def test_delta_is_up_down_alpha_over_rank_times_multiplier(models, tmp_path):
    state = make_kohya_lora(models, rank=4, alpha=2.0)
    net = load_network(save(tmp_path, "style", state), models)
    stem = "lora_unet_" + UNET_ATTN.replace(".", "_")
    expected_delta = state[f"{stem}.lora_up.weight"].double() @ state[f"{stem}.lora_down.weight"].double() * 0.5
    w0 = weight(models, "unet", UNET_ATTN).clone()
    WeightPatcher(models).apply([NetworkPatch(net, te_multiplier=1.0, unet_multiplier=0.8)])
    got = weight(models, "unet", UNET_ATTN).double() - w0.double()
    torch.testing.assert_close(got, 0.8 * expected_delta, rtol=1e-5, atol=1e-6)


def test_weight_change_recomputes_from_originals(models, tmp_path):
    before = snapshot(models)
    net = load_network(save(tmp_path, "style", make_kohya_lora(models)), models)
    patcher = WeightPatcher(models)
    patcher.apply([NetworkPatch(net, 1.0, 1.0)])
    patcher.apply([NetworkPatch(net, 0.5, 0.5)])
    half_after_full = snapshot(models)

    patcher.apply([NetworkPatch(net, 0.0, 0.0)])
    assert_bit_identical(models, before)
    patcher.apply([NetworkPatch(net, 0.5, 0.5)])
    assert_bit_identical(models, half_after_full)  # 1 → 0.5 lands exactly where 0 → 0.5 does: no drift
    w0 = before[f"unet.{UNET_ATTN}.weight"]
    w_half = weight(models, "unet", UNET_ATTN)
    assert not torch.equal(w_half, w0)


def test_te_only_and_unet_only_multipliers(models, tmp_path):
    before = snapshot(models)
    net = load_network(save(tmp_path, "style", make_kohya_lora(models)), models)
    patcher = WeightPatcher(models)

    def changed_roles() -> set[str]:
        now = snapshot(models)
        return {k.split(".")[0] for k in before if not torch.equal(before[k], now[k])}

    patcher.apply([NetworkPatch(net, te_multiplier=1.0, unet_multiplier=0.0)])
    assert changed_roles() == {"te1"}
    patcher.apply([NetworkPatch(net, te_multiplier=0.0, unet_multiplier=1.0)])
    assert changed_roles() == {"unet"}
    patcher.remove_all()
    assert changed_roles() == set()


def test_same_set_again_writes_nothing(models, tmp_path):
    path = save(tmp_path, "style", make_kohya_lora(models))
    patcher = WeightPatcher(models)
    assert patcher.apply([NetworkPatch(load_network(path, models), 0.7, 0.9)]) > 0
    versions = {k: p._version for role, m in models.items() for k, p in m.named_parameters()}
    reloaded = load_network(path, models)  # a new object for the same file: compared by file identity
    assert patcher.apply([NetworkPatch(reloaded, 0.7, 0.9)]) == 0
    assert versions == {k: p._version for role, m in models.items() for k, p in m.named_parameters()}


def test_several_networks_add_and_removing_one_keeps_the_other_exact(models, tmp_path):
    a = load_network(save(tmp_path, "a", make_kohya_lora(models, seed=10)), models)
    b = load_network(save(tmp_path, "b", make_kohya_lora(models, seed=11)), models)
    patcher = WeightPatcher(models)
    patcher.apply([NetworkPatch(b, 0.6, 0.6)])
    only_b = snapshot(models)
    patcher.remove_all()

    w0 = weight(models, "unet", UNET_ATTN).double()
    patcher.apply([NetworkPatch(a, 1.0, 1.0), NetworkPatch(b, 0.6, 0.6)])
    both = weight(models, "unet", UNET_ATTN).double()
    delta_b = only_b[f"unet.{UNET_ATTN}.weight"].double() - w0
    patcher.apply([NetworkPatch(a, 1.0, 1.0)])
    delta_a = weight(models, "unet", UNET_ATTN).double() - w0
    torch.testing.assert_close(both - w0, delta_a + delta_b, rtol=1e-5, atol=1e-6)

    patcher.apply([NetworkPatch(b, 0.6, 0.6)])
    assert_bit_identical(models, only_b)


def test_locon_3x3_down_1x1_up_changes_the_conv_by_the_expected_delta(models, tmp_path):
    gen = torch.Generator().manual_seed(4)
    out_ch, in_ch = weight(models, "unet", UNET_CONV).shape[:2]
    down = torch.randn(8, in_ch, 3, 3, generator=gen)
    up = torch.randn(out_ch, 8, 1, 1, generator=gen)
    stem = "lora_unet_" + UNET_CONV.replace(".", "_")
    state = {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up, f"{stem}.alpha": torch.tensor(4.0)}
    net = load_network(save(tmp_path, "locon", state), models)
    w0 = weight(models, "unet", UNET_CONV).double().clone()
    WeightPatcher(models).apply([NetworkPatch(net, unet_multiplier=0.5)])
    expected = torch.einsum("or,rikl->oikl", up[:, :, 0, 0].double(), down.double()) * (4.0 / 8) * 0.5
    torch.testing.assert_close(weight(models, "unet", UNET_CONV).double() - w0, expected, rtol=1e-5, atol=1e-6)


def test_locon_tucker_mid(models, tmp_path):
    gen = torch.Generator().manual_seed(5)
    out_ch, in_ch = weight(models, "unet", UNET_CONV).shape[:2]
    down, mid = torch.randn(4, in_ch, 1, 1, generator=gen), torch.randn(4, 4, 3, 3, generator=gen)
    up = torch.randn(out_ch, 4, 1, 1, generator=gen)
    stem = "lora_unet_" + UNET_CONV.replace(".", "_")
    state = {f"{stem}.lora_down.weight": down, f"{stem}.lora_mid.weight": mid, f"{stem}.lora_up.weight": up}
    net = load_network(save(tmp_path, "tucker", state), models)
    w0 = weight(models, "unet", UNET_CONV).double().clone()
    WeightPatcher(models).apply([NetworkPatch(net)])
    expected = torch.zeros(out_ch, in_ch, 3, 3, dtype=torch.float64)
    for r1 in range(4):  # sum of rank-1 terms: up[:, r1] ⊗ (mid[r1, r2] ⊛ down[r2])
        for r2 in range(4):
            expected += up[:, r1, 0, 0].double()[:, None, None, None] * (
                mid[r1, r2].double()[None, None] * down[r2, :, 0, 0].double()[None, :, None, None]
            )
    torch.testing.assert_close(weight(models, "unet", UNET_CONV).double() - w0, expected, rtol=1e-5, atol=1e-5)


def test_loha_on_linear_and_conv(models, tmp_path):
    gen = torch.Generator().manual_seed(6)
    state, expected = {}, {}
    for module in (UNET_ATTN, UNET_CONV):
        shape = weight(models, "unet", module).shape
        fan_in = shape[1:].numel()
        stem = "lora_unet_" + module.replace(".", "_")
        w1a, w1b = torch.randn(shape[0], 4, generator=gen), torch.randn(4, fan_in, generator=gen)
        w2a, w2b = torch.randn(shape[0], 4, generator=gen), torch.randn(4, fan_in, generator=gen)
        state |= {f"{stem}.hada_w1_a": w1a, f"{stem}.hada_w1_b": w1b, f"{stem}.hada_w2_a": w2a}
        state |= {f"{stem}.hada_w2_b": w2b, f"{stem}.alpha": torch.tensor(2.0)}
        hadamard = (w1a.double() @ w1b.double()) * (w2a.double() @ w2b.double())
        expected[module] = (hadamard * 0.5).reshape(shape)
    net = load_network(save(tmp_path, "loha", state), models)
    assert {ref.module for ref in net.updates} == set(expected)
    w0 = {m: weight(models, "unet", m).double().clone() for m in expected}
    WeightPatcher(models).apply([NetworkPatch(net)])
    for module, delta in expected.items():
        torch.testing.assert_close(weight(models, "unet", module).double() - w0[module], delta, rtol=1e-5, atol=1e-5)


def test_lokr_kronecker_product(models, tmp_path):
    gen = torch.Generator().manual_seed(8)
    stem = "lora_unet_" + UNET_ATTN.replace(".", "_")  # 32 × 32 = kron(4 × 2, 8 × 16)
    w1 = torch.randn(4, 2, generator=gen)
    w2a, w2b = torch.randn(8, 2, generator=gen), torch.randn(2, 16, generator=gen)
    state = {
        f"{stem}.lokr_w1": w1,
        f"{stem}.lokr_w2_a": w2a,
        f"{stem}.lokr_w2_b": w2b,
        f"{stem}.alpha": torch.tensor(1.0),
    }
    net = load_network(save(tmp_path, "lokr", state), models)
    w0 = weight(models, "unet", UNET_ATTN).double().clone()
    WeightPatcher(models).apply([NetworkPatch(net)])
    w2 = w2a.double() @ w2b.double()
    expected = torch.einsum("ab,cd->acbd", w1.double(), w2).reshape(32, 32) * 0.5
    torch.testing.assert_close(weight(models, "unet", UNET_ATTN).double() - w0, expected, rtol=1e-5, atol=1e-6)


def test_dora_scale_sets_the_column_norms(models, tmp_path):
    state = make_kohya_lora(models)
    stem = "lora_unet_" + UNET_ATTN.replace(".", "_")
    magnitude = torch.linspace(0.5, 2.0, weight(models, "unet", UNET_ATTN).shape[1])
    state[f"{stem}.dora_scale"] = magnitude[None, :]
    net = load_network(save(tmp_path, "dora", state), models)
    WeightPatcher(models).apply([NetworkPatch(net)])
    column_norms = weight(models, "unet", UNET_ATTN).norm(dim=0)
    torch.testing.assert_close(column_norms, magnitude, rtol=1e-5, atol=1e-5)


def test_peft_layout_with_adapter_metadata_alpha(models, tmp_path):
    gen = torch.Generator().manual_seed(9)
    te_module = "text_model.encoder.layers.1.mlp.fc1"  # written with the text_model level, as diffusers does
    a_unet, b_unet = torch.randn(4, 32, generator=gen), torch.randn(32, 4, generator=gen)
    a_te, b_te = torch.randn(4, 32, generator=gen), torch.randn(64, 4, generator=gen)
    state = {
        f"unet.{UNET_ATTN}.lora_A.weight": a_unet,
        f"unet.{UNET_ATTN}.lora_B.weight": b_unet,
        f"text_encoder.{te_module}.lora_A.weight": a_te,
        f"text_encoder.{te_module}.lora_B.weight": b_te,
    }
    metadata = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, "unet.r": 4, "text_encoder.r": 4})}
    net = load_network(save(tmp_path, "peft", state, metadata), models)
    assert net.unmatched == () and len(net.updates) == 2
    unet_w0 = weight(models, "unet", UNET_ATTN).double().clone()
    te_w0 = weight(models, "te1", "encoder.layers.1.mlp.fc1").double().clone()
    WeightPatcher(models).apply([NetworkPatch(net)])
    unet_delta = weight(models, "unet", UNET_ATTN).double() - unet_w0
    torch.testing.assert_close(unet_delta, (b_unet @ a_unet).double() * 2.0)  # lora_alpha 8 / rank 4
    te_delta = weight(models, "te1", "encoder.layers.1.mlp.fc1").double() - te_w0
    torch.testing.assert_close(te_delta, (b_te @ a_te).double())  # no alpha given: scale 1


def test_older_diffusers_lora_naming(models, tmp_path):
    gen = torch.Generator().manual_seed(13)
    module = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"
    out_module = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"
    down, up = torch.randn(2, 32, generator=gen), torch.randn(32, 2, generator=gen)
    down_o, up_o = torch.randn(2, 32, generator=gen), torch.randn(32, 2, generator=gen)
    state = {
        f"unet.{module}.lora.down.weight": down,
        f"unet.{module}.lora.up.weight": up,
        # attention-processor naming of the first diffusers LoRA scripts
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": down_o,
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": up_o,
    }
    net = load_network(save(tmp_path, "old", state), models)
    assert net.unmatched == () and len(net.updates) == 2
    w0 = {m: weight(models, "unet", m).double().clone() for m in (module, out_module)}
    WeightPatcher(models).apply([NetworkPatch(net)])
    torch.testing.assert_close(weight(models, "unet", module).double() - w0[module], (up @ down).double())
    torch.testing.assert_close(weight(models, "unet", out_module).double() - w0[out_module], (up_o @ down_o).double())


def test_unmatched_and_unusable_keys_are_reported_not_dropped(models, tmp_path, caplog):
    state = make_kohya_lora(models)
    state["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight"] = torch.zeros(4, 32)
    state["lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight"] = torch.zeros(32, 4)
    stem = "lora_te_text_model_encoder_layers_0_mlp_fc2"
    state[f"{stem}.lora_down.weight"] = torch.zeros(4, 999)  # wrong width for fc2 (in = 64)
    state["lora_unet_mid_block_attentions_0_proj_in.oft_blocks"] = torch.zeros(4, 16, 16)
    with caplog.at_level(logging.WARNING):
        net = load_network(save(tmp_path, "odd", state), models)
    assert set(net.unmatched) == {
        "lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight",
        "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight",
    }
    assert "does not fit a weight of shape (32, 64)" in net.unsupported[stem]
    assert "lora_unet_mid_block_attentions_0_proj_in.oft_blocks" in net.unsupported
    assert "match no module" in caplog.text and "odd" in caplog.text
    assert WeightRef("te1", "encoder.layers.0.mlp.fc2") not in net.updates


def test_sdxl_kohya_lora_with_original_unet_names_and_two_text_encoders(tmp_path):
    unet = tiny_unet()
    torch.manual_seed(2)
    te1 = transformers.CLIPTextModel(clip_config(32)).eval()
    te2 = transformers.CLIPTextModelWithProjection(clip_config(64)).eval()
    models = {"unet": unet, "te1": te1, "te2": te2}
    ldm_to_diffusers = {  # as modules.models.keymap provides it (a few entries of the real map)
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": f"{UNET_ATTN}.weight",
        "input_blocks.1.0.in_layers.2.weight": f"{UNET_CONV}.weight",
    }
    gen = torch.Generator().manual_seed(12)
    state = {
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.randn(
            2, 32, generator=gen
        ),
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.randn(32, 2, generator=gen),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(2, 32, generator=gen),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(32, 2, generator=gen),
        "lora_te2_text_model_encoder_layers_1_mlp_fc2.lora_down.weight": torch.randn(2, 128, generator=gen),
        "lora_te2_text_model_encoder_layers_1_mlp_fc2.lora_up.weight": torch.randn(64, 2, generator=gen),
    }
    path = save(tmp_path, "xl", state)
    assert load_network(path, models).unmatched != ()  # without the name map the LDM names match nothing
    net = load_network(path, models, ldm_to_diffusers=ldm_to_diffusers)
    assert net.unmatched == ()
    assert set(net.updates) == {
        WeightRef("unet", UNET_ATTN),
        WeightRef("te1", "encoder.layers.0.self_attn.q_proj"),
        WeightRef("te2", "text_model.encoder.layers.1.mlp.fc2"),
    }
    before = snapshot(models)
    patcher = WeightPatcher(models)
    patcher.apply([NetworkPatch(net)])
    assert not torch.equal(
        weight(models, "te2", "text_model.encoder.layers.1.mlp.fc2"),
        before["te2.text_model.encoder.layers.1.mlp.fc2.weight"],
    )
    patcher.remove_all()
    assert_bit_identical(models, before)


def test_half_precision_weights_are_patched_in_float32_and_restored(tmp_path):
    unet = tiny_unet().to(torch.float16)
    models = {"unet": unet}
    state = {
        k: v
        for k, v in make_kohya_lora({"unet": unet, "te1": transformers.CLIPTextModel(clip_config())}).items()
        if k.startswith("lora_unet_")
    }
    net = load_network(save(tmp_path, "fp16", state), build_module_index(models))
    before = snapshot(models)
    stem = "lora_unet_" + UNET_ATTN.replace(".", "_")
    w0 = weight(models, "unet", UNET_ATTN).float()
    delta = state[f"{stem}.lora_up.weight"].float() @ state[f"{stem}.lora_down.weight"].float() * 0.5
    patcher = WeightPatcher(models)
    patcher.apply([NetworkPatch(net)])
    w = weight(models, "unet", UNET_ATTN)
    assert w.dtype == torch.float16
    assert torch.equal(w, (w0 + delta).half())
    patcher.remove_all()
    assert_bit_identical(models, before)


def test_lora_listing_name_hash_metadata_and_lazy_cached_hashing(models, tmp_path):
    root = tmp_path / "Lora"
    (root / "styles").mkdir(parents=True)
    tags = {"10_ink": {"ink wash": 40, "mountain": 12}, "5_misc": {"mountain": 30, "river": 3}}
    meta = {
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_output_name": "InkStyle",
        "ss_tag_frequency": json.dumps(tags),
    }
    path = save(root / "styles", "ink_v2", make_kohya_lora(models), meta)
    save(root, "plain", make_kohya_lora(models, seed=5))
    (root / "broken.safetensors").write_bytes(b"\xff" * 20)

    hashes = HashCache(tmp_path / "hashes.json")
    catalog = LoraCatalog(root, hashes)
    items = catalog.refresh()
    assert [i.name for i in items] == ["plain", "ink_v2"]  # sorted by path: plain.safetensors < styles/
    assert list(catalog.errors) == [root / "broken.safetensors"]
    ink = catalog.find("InkStyle")
    assert ink is catalog.find("ink_v2") and ink.alias == "InkStyle"
    assert ink.base_model == "SDXL"
    assert ink.trigger_words[:3] == ("mountain", "ink wash", "river")
    assert hashes.cached(path, "addnet") is None  # listing never hashes

    data = path.read_bytes()
    expected = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()
    assert catalog.short_hash(ink) == expected[:12]
    assert HashCache(tmp_path / "hashes.json").cached(path, "addnet") == expected  # kept on disk
    save(root / "styles", "ink_v2", make_kohya_lora(models, seed=99), meta)  # file replaced: same size
    mtime = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(mtime, mtime))
    assert catalog.short_hash(ink) != expected[:12]


def test_base_model_from_key_shapes_when_metadata_is_missing(tmp_path):
    def lora(name, keys):
        return save(tmp_path, name, {k: torch.zeros(shape) for k, shape in keys.items()})

    q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"
    lora("sd1", {q: (4, 768)})
    lora("sd2", {q: (4, 1024)})
    lora("sdxl", {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280)})
    lora("ctx", {"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048)})
    lora("spec", {q: (4, 768)})
    spec = tmp_path / "spec.safetensors"
    save_file(
        {q: torch.zeros(4, 768)}, str(spec), metadata={"modelspec.architecture": "stable-diffusion-v2-768-v/lora"}
    )
    catalog = LoraCatalog(tmp_path, HashCache(tmp_path / "hashes.json"))
    catalog.refresh()
    found = {i.name: i.base_model for i in catalog.items}
    assert found == {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "ctx": "SDXL", "spec": "SD2"}


def test_a_failing_apply_leaves_the_originals(models, tmp_path):
    good = load_network(save(tmp_path, "good", make_kohya_lora(models)), models)
    other = {"unet": tiny_unet(), "te1": transformers.CLIPTextModel(clip_config(64))}  # wider text encoder
    wrong = load_network(save(tmp_path, "wide", make_kohya_lora(other, seed=4)), other)
    before = snapshot(models)
    patcher = WeightPatcher(models)
    patcher.apply([NetworkPatch(good)])
    with pytest.raises((ValueError, RuntimeError)):
        patcher.apply([NetworkPatch(good), NetworkPatch(wrong)])
    assert patcher.applied == ()
    assert_bit_identical(models, before)


def test_half_precision_with_two_networks_dora_and_backups_beside_the_weights(tmp_path):
    unet = tiny_unet().to(torch.float16)
    models = {"unet": unet}
    full = make_kohya_lora({"unet": unet, "te1": transformers.CLIPTextModel(clip_config())})
    state = {k: v for k, v in full.items() if k.startswith("lora_unet_")}
    stem = "lora_unet_" + UNET_ATTN.replace(".", "_")
    magnitude = torch.linspace(0.5, 2.0, 32)
    dora = dict(state) | {f"{stem}.dora_scale": magnitude[None, :]}
    a = load_network(save(tmp_path, "a", state), models)
    b = load_network(save(tmp_path, "b", dora), models)
    before = snapshot(models)
    patcher = WeightPatcher(models, backup_device=None)
    patcher.apply([NetworkPatch(a, unet_multiplier=0.5), NetworkPatch(b)])
    w0 = before[f"unet.{UNET_ATTN}.weight"].float()
    delta = state[f"{stem}.lora_up.weight"].float() @ state[f"{stem}.lora_down.weight"].float() * 0.5
    merged = w0 + delta
    expected = w0 + 0.5 * delta + (merged * (magnitude / merged.norm(dim=0)) - w0)
    torch.testing.assert_close(weight(models, "unet", UNET_ATTN).float(), expected, rtol=2e-3, atol=2e-3)
    patcher.remove_all()
    assert_bit_identical(models, before)

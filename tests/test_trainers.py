"""The LoRA and embedding trainers on tiny SD1 and SDXL checkpoints: they learn, resume, and write files that the
app's own loaders use (all keys matched, weight 0 = the base model bit-for-bit, the embedding used in prompts)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from modules.networks.active import ldm_names, model_roles
from modules.networks.catalog import describe_lora
from modules.networks.embeddings import load_embedding
from modules.networks.lora import load_network
from modules.processing.params import Txt2ImgParams
from modules.processing.runner import run_job
from modules.training import shapes_world as world
from modules.training.datasets import CaptionTokenizer, encode_images, encode_text, scan_folder, tag_frequency
from modules.training.embedding_train import EmbeddingConfig, train_embedding
from modules.training.lora_train import (
    LoraConfig,
    LoraNetwork,
    diffusion_loss,
    load_for_training,
    lora_targets,
    noise_schedule,
    prepare_model,
    train_lora,
)
from tests.engine_fixtures import make_state

FAMILIES = {"sd1": "tiny-sd1", "sdxl": "tiny-sdxl"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainers")
    world.concept_dataset(root / "data" / "star", 8, (world.STAR,), seed=1)
    world.concept_dataset(root / "data" / "checkered", 8, world.SHAPES, world.CHECKERED, seed=1)
    return root


@pytest.fixture(scope="module")
def state(root):
    """An app over the tiny checkpoints (written by make_state) that the trainers train on."""
    return make_state(root / "app", {stem: family for family, stem in FAMILIES.items()})


def ckpt_path(root, family: str):
    return root / "app" / "models" / "Stable-diffusion" / f"{FAMILIES[family]}.safetensors"


def generate(state, family: str, prompt: str) -> np.ndarray:
    state.models.load(FAMILIES[family])
    params = Txt2ImgParams(prompt=prompt, seed=3, steps=3, width=64, height=64, sampler_name="Euler",
                           do_not_save_samples=True, do_not_save_grid=True)
    return np.asarray(run_job(state, params).images[0])


def test_folder_dataset_reads_txt_and_jsonl_captions_and_kohya_repeats(tmp_path):
    from PIL import Image

    (tmp_path / "5_stars").mkdir()
    for name in ("a.png", "b.jpg"):
        Image.new("RGB", (96, 64), "red").save(tmp_path / "5_stars" / name)
    (tmp_path / "5_stars" / "a.txt").write_text("a star, red\n")
    (tmp_path / "5_stars" / "metadata.jsonl").write_text(json.dumps({"file_name": "b.jpg", "text": "a star"}) + "\n")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "c.png")
    items = scan_folder(tmp_path)
    assert [(i.path.name, i.caption, i.repeats) for i in items] == [
        ("c.png", "", 1), ("a.png", "a star, red", 5), ("b.jpg", "a star", 5)]
    assert tag_frequency(items)["5_stars"] == {"a star": 10, "red": 5}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_loss_goes_down_on_a_fixed_batch(root, state, family):
    model = load_for_training(ckpt_path(root, family))
    items = scan_folder(root / "data" / "star")[:2]
    cache = encode_images(model.vae, items, 64)
    prepare_model(model)
    network = LoraNetwork(lora_targets(model, text_encoders=True), rank=4, alpha=4.0)
    network.attach()
    opt = torch.optim.AdamW(network.parameters(), lr=1e-2)
    tokens = CaptionTokenizer(model)(cache.captions)
    latents = cache.sample(torch.arange(2), torch.Generator().manual_seed(0))
    alphas = noise_schedule(model)
    losses = []
    for _ in range(5):
        context, pooled = encode_text(model, tokens)
        loss = diffusion_loss(model, latents, context, pooled, cache.time_ids[:2], alphas,
                              torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_lora_loads_fully_and_weight_zero_is_the_base_model(root, state, family):
    out = root / "app" / "models" / "Lora" / f"star-{family}.safetensors"
    model = load_for_training(ckpt_path(root, family))
    cfg = LoraConfig(rank=4, alpha=4.0, unet_lr=1e-2, te_lr=1e-2, steps=3, batch=2, resolution=64, warmup=1)
    network = train_lora(model, root / "data" / "star", out, cfg, progress=False)
    network.detach()

    loaded = load_network(out, model_roles(model), ldm_to_diffusers=ldm_names(model.unet))
    assert loaded.unmatched == () and dict(loaded.unsupported) == {}
    assert len(loaded.updates) == len(network.pairs) and loaded.roles == set(model_roles(model))
    with safe_open(out, "pt") as f:
        keys = set(f.keys())
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in keys)
    assert any(k.startswith("lora_te1_" if family == "sdxl" else "lora_te_") for k in keys)
    if family == "sdxl":  # kohya writes SDXL UNet modules with the original names
        assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    info = describe_lora(out)
    assert info.base_model == {"sd1": "SD1", "sdxl": "SDXL"}[family]
    assert info.metadata["ss_network_dim"] == "4" and info.metadata["ss_steps"] == "3"
    assert info.metadata["ss_sd_model_name"] == f"{FAMILIES[family]}.safetensors"
    assert any("star" in tag for tag in json.loads(info.metadata["ss_tag_frequency"])["star"])

    state.networks.refresh()
    prompt = "a large red star on a blue background"
    base = generate(state, family, prompt)
    assert not np.array_equal(generate(state, family, f"{prompt} <lora:{out.stem}:1>"), base)
    assert np.array_equal(generate(state, family, f"{prompt} <lora:{out.stem}:0>"), base)


def test_lora_training_resumes_to_the_same_weights(root, state, tmp_path):
    cfg = LoraConfig(rank=2, alpha=2.0, unet_lr=1e-2, steps=3, batch=2, resolution=64)
    model = load_for_training(ckpt_path(root, "sd1"))
    train_lora(model, root / "data" / "star", tmp_path / "once.safetensors", cfg, progress=False).detach()
    model = load_for_training(ckpt_path(root, "sd1"))
    first = LoraConfig(**{**cfg.__dict__, "steps": 2})
    train_lora(model, root / "data" / "star", tmp_path / "twice.safetensors", first, tmp_path / "work",
               progress=False).detach()
    model = load_for_training(ckpt_path(root, "sd1"))
    train_lora(model, root / "data" / "star", tmp_path / "twice.safetensors", cfg, tmp_path / "work",
               progress=False).detach()
    with safe_open(tmp_path / "once.safetensors", "pt") as a, safe_open(tmp_path / "twice.safetensors", "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118 (safe_open)


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_embedding_loads_and_changes_only_prompts_that_use_it(root, state, family):
    folder = root / "app" / "embeddings"
    out = folder / "checkered.safetensors"
    model = load_for_training(ckpt_path(root, family))
    cfg = EmbeddingConfig(vectors=2, init_word="pattern", lr=5e-2, steps=3, batch=2, resolution=64)
    vectors = train_embedding(model, root / "data" / "checkered", out, cfg, progress=False)
    emb = load_embedding(out)
    widths = [te.config.hidden_size for te in model.text_encoders]
    assert emb.vector_count == 2 and list(emb.dims.values()) == widths
    assert torch.equal(emb.vectors["te1"], vectors[0])
    init = model.text_encoders[0].embeddings.token_embedding.weight[CaptionTokenizer(model).tokenize("pattern")[0]]
    assert not torch.allclose(vectors[0][0], init)  # trained away from the init word

    with_word, without = "a red circle on a blue checkered background", "a red circle on a blue background"
    state.networks.refresh()
    used = generate(state, family, with_word), generate(state, family, without)
    out.unlink()
    state.networks.refresh()
    unused = generate(state, family, with_word), generate(state, family, without)
    assert not np.array_equal(used[0], unused[0])
    assert np.array_equal(used[1], unused[1])


def test_embedding_training_needs_the_word_in_captions(root, state, tmp_path):
    model = load_for_training(ckpt_path(root, "sd1"))
    with pytest.raises(ValueError, match="sparkly"):
        train_embedding(model, root / "data" / "star", tmp_path / "sparkly.safetensors",
                        EmbeddingConfig(steps=1, resolution=64), progress=False)

"""Training as an app job (the Train tab's and the training API's engine) on a tiny SD1 checkpoint: aspect-ratio
buckets, interrupt and resume after a restart to the same weights, the model left exactly as it was, samples and
card files, and requests refused with a message before anything is queued."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from modules.processing.params import Txt2ImgParams
from modules.processing.runner import run_job
from modules.training import shapes_world as world
from modules.training.buckets import bucket_sizes, nearest_bucket
from modules.training.datasets import scan_folder
from modules.training.embedding_train import EmbeddingConfig
from modules.training.lora_train import LoraConfig, batch_indices, load_for_training, training_rows
from modules.training.loss_plot import loss_svg
from modules.training.train_job import (
    SampleSettings,
    TrainError,
    TrainParams,
    prepare,
    submit_training,
)
from tests.engine_fixtures import make_state

CKPT = {"tiny": "sd1"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-job")
    world.concept_dataset(root / "data" / "star", 8, (world.STAR,), seed=2)
    make_state(root, CKPT)  # writes the checkpoint
    return root


def new_state(root):
    """A fresh app over the same folders (as after a restart)."""
    return make_state(root, CKPT)


def lora_params(name: str, steps: int, every: int = 0, **kw) -> TrainParams:
    cfg = LoraConfig(rank=4, alpha=4.0, unet_lr=5e-3, steps=steps, batch=2, seed=5, buckets=True, resolution=64)
    return TrainParams("lora", name, folder="star", lora=cfg, sample=SampleSettings(every=every, steps=3), **kw)


def tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def test_buckets_keep_the_area_and_follow_the_images_shape():
    sizes = bucket_sizes(512, 64)
    assert (512, 512) in sizes and (640, 384) in sizes and (384, 640) in sizes
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in sizes)
    assert nearest_bucket((1600, 900), sizes) == (640, 384)  # 16:9 → the nearest wide bucket
    assert nearest_bucket((900, 1600), sizes) == (384, 640)
    assert nearest_bucket((1000, 1000), sizes) == (512, 512)


def test_wide_images_train_at_their_bucket_and_a_batch_holds_one_size(root, tmp_path):
    data = tmp_path / "mixed"
    world.concept_dataset(data, 4, (world.STAR,), seed=3)
    for i in range(2):  # two wide images beside the four square ones
        Image.new("RGB", (128, 48), (200, 30, 30)).save(data / f"wide{i}.png")
        (data / f"wide{i}.txt").write_text("a red banner", encoding="utf-8")
    model = load_for_training(root / "models" / "Stable-diffusion" / "tiny.safetensors")
    items = scan_folder(data)
    cache, groups, _ = training_rows(model, items, LoraConfig(buckets=True, resolution=64))
    wide = [cache.sizes[i] for i, item in enumerate(items) if item.path.name.startswith("wide")]
    assert wide == [(96, 32)] * 2 and cache.mean[items.index(items[-1])].shape[-2:] == (4, 12)
    assert sorted(len(g) for g in groups) == [2, 4]
    for step in range(20):
        rows = batch_indices(groups, 3, seed=0, step=step).tolist()
        assert len({cache.sizes[r] for r in rows}) == 1
    square, _, _ = training_rows(model, items, LoraConfig(buckets=False, resolution=64))
    assert set(square.sizes) == {(64, 64)}


def test_training_leaves_the_model_exactly_as_it_was_and_writes_a_card(root):
    state = new_state(root)
    model = state.models.current
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    base = np.asarray(run_job(state, Txt2ImgParams(prompt="a star", seed=4, steps=3, width=64, height=64,
                                                   do_not_save_samples=True)).images[0])
    job, run = submit_training(state, lora_params("cardstar", steps=10, every=5))
    assert job.wait() is run and run.stopped_at is None
    assert [s for s, _ in run.samples] == [5, 10] and job.progress.preview is run.samples[-1][1]
    assert job.progress.fraction == 1.0 and "loss" in job.progress.textinfo
    assert [s for s, _ in run.losses] == list(range(1, 11))
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    assert not model.unet.training and not any(m._forward_hooks for m in model.unet.modules())
    after = np.asarray(run_job(state, Txt2ImgParams(prompt="a star", seed=4, steps=3, width=64, height=64,
                                                    do_not_save_samples=True)).images[0])
    assert np.array_equal(after, base)  # the LoRA is gone from the model until a prompt asks for it
    lora_dir = root / "models" / "Lora"
    assert {p.name for p in lora_dir.glob("cardstar*")} == {"cardstar.safetensors", "cardstar.preview.png",
                                                            "cardstar.json"}
    assert state.networks.loras.find("cardstar") is not None  # listed without a manual refresh
    with_lora = run_job(state, Txt2ImgParams(prompt="a star <lora:cardstar:1>", seed=4, steps=3, width=64,
                                             height=64, do_not_save_samples=True))
    assert not np.array_equal(np.asarray(with_lora.images[0]), base)
    svg = loss_svg(run.losses)
    assert 'data-points="10"' in svg and svg.count("<polyline") == 2


def test_interrupted_training_resumes_after_a_restart_to_the_same_weights(root):
    state = new_state(root)
    job, run = submit_training(state, lora_params("once", steps=30))
    job.wait()
    job, run = submit_training(state, lora_params("twice", steps=30))

    def interrupt_midway():
        while len(run.losses) < 12 and not job.done:
            time.sleep(0.002)
        job.interrupt()

    threading.Thread(target=interrupt_midway, daemon=True).start()
    job.wait()
    stopped = run.stopped_at
    assert stopped is not None and 12 <= stopped < 30, stopped
    assert "Interrupted at step" in run.summary
    assert (root / "models" / "Lora" / "twice.safetensors").exists()  # the state so far is usable

    state = new_state(root)  # a restart
    job, run = submit_training(state, lora_params("twice", steps=30))
    job.wait()
    assert run.resumed_from == stopped and run.losses[0][0] == stopped + 1
    once, twice = tensors(root / "models" / "Lora" / "once.safetensors"), tensors(
        root / "models" / "Lora" / "twice.safetensors")
    assert once.keys() == twice.keys() and all(torch.equal(once[k], twice[k]) for k in once)

    other = lora_params("twice", steps=30)
    job, run = submit_training(state, TrainParams("lora", "twice", folder="star", lora=LoraConfig(
        rank=2, alpha=2.0, steps=3, batch=2, buckets=True, resolution=64), sample=other.sample))
    job.wait()  # other settings: starts over instead of loading a state of another shape
    assert run.resumed_from == 0 and any("started over" in n for n in run.notes)


def test_requests_are_refused_before_anything_is_queued(root, tmp_path):
    state = new_state(root)
    cases = [
        (TrainParams("lora", "../evil", folder="star"), "name"),
        (TrainParams("lora", "ok", folder=""), "dataset"),
        (TrainParams("lora", "ok", folder=str(tmp_path)), "dataset folder"),  # outside the data folder, remote
        (TrainParams("embedding", "zork", folder="star", embedding=EmbeddingConfig(steps=5)), "no caption contains"),
        (TrainParams("lora", "ok", folder="star", sample=SampleSettings(sampler_name="Nope")), "sample sampler"),
        (TrainParams("lora", "ok", folder="star", lora=LoraConfig(steps=0)), "steps"),
    ]
    for params, words in cases:
        with pytest.raises(TrainError, match=words):
            prepare(state, params, remote=True)
    assert state.queue.waiting == 0
    local = prepare(state, TrainParams("lora", "ok", folder=str(root / "data" / "star")), remote=False)[0]
    assert local.sample.prompt  # a local browser may name any folder; the sample prompt is the first caption


def test_embedding_from_uploads_learns_its_word(root, tmp_path):
    uploads = []
    for i in range(4):  # as Gradio keeps them: each upload in its own folder
        folder = tmp_path / f"u{i}"
        folder.mkdir()
        Image.fromarray(world.render_concept(world.ConceptScene("star", "red", "blue", "center", "large"))).save(
            folder / f"img{i}.png")
        sub = tmp_path / f"c{i}"
        sub.mkdir()
        (sub / f"img{i}.txt").write_text("a zorkle on a blue background", encoding="utf-8")
        uploads += [str(folder / f"img{i}.png"), str(sub / f"img{i}.txt")]
    state = new_state(root)
    params = TrainParams("embedding", "zorkle", uploads=tuple(uploads),
                         embedding=EmbeddingConfig(vectors=2, init_word="shape", lr=5e-2, steps=6, batch=2, resolution=64),
                         sample=SampleSettings(every=3, steps=3))
    job, run = submit_training(state, params)
    job.wait()
    assert run.params.sample.prompt == "a zorkle on a blue background" and len(run.samples) == 2
    assert "zorkle" in state.networks.embeddings()
    dataset = root / "data" / "train" / "embedding" / "zorkle" / "dataset"
    assert sorted(p.name for p in dataset.iterdir()) == sorted(
        [f"img{i}.png" for i in range(4)] + [f"img{i}.txt" for i in range(4)])


def test_gradient_checkpointing_trains_the_same_weights_and_is_off_afterwards(root):
    state = new_state(root)
    for name, checkpointing in (("plain", False), ("recomputed", True)):
        params = lora_params(name, steps=3)
        params = TrainParams("lora", name, folder="star", lora=LoraConfig(
            **{**params.lora.__dict__, "gradient_checkpointing": checkpointing}), sample=params.sample)
        submit_training(state, params)[0].wait()
    assert not state.models.current.unet.is_gradient_checkpointing
    plain, recomputed = (tensors(root / "models" / "Lora" / f"{n}.safetensors") for n in ("plain", "recomputed"))
    assert all(torch.allclose(plain[k].float(), recomputed[k].float(), atol=1e-3) for k in plain)


def test_automatic_rates_follow_the_models_size(root):
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    from modules.models.builders import build_on_meta
    from modules.training.train_job import with_rates

    state = new_state(root)
    auto = TrainParams("lora", "auto", lora=LoraConfig(unet_lr=0.0, te_lr=0.0),
                       embedding=EmbeddingConfig(lr=0.0))
    small = with_rates(auto, state.models.current)
    assert (small.lora.unet_lr, small.lora.te_lr, small.embedding.lr) == (5e-3, 1e-3, 2e-2)
    sd15 = SimpleNamespace(unet=build_on_meta(lambda: UNet2DConditionModel(
        block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768)))  # 860 M parameters, no memory
    full = with_rates(auto, sd15)
    assert (full.lora.unet_lr, full.lora.te_lr, full.embedding.lr) == (1e-4, 5e-5, 5e-3)
    chosen = with_rates(TrainParams("lora", "x", lora=LoraConfig(unet_lr=3e-3, te_lr=None)), sd15)
    assert (chosen.lora.unet_lr, chosen.lora.te_lr) == (3e-3, None)  # typed rates and "off" stay


def test_training_on_a_half_precision_model_keeps_its_weights_and_learns(root, tmp_path):
    """The app's default on a CPU with native bf16 (and on GPUs: fp16/bf16): the pairs train in float32 beside the
    half-precision base, which is left bit for bit as it was."""
    state = make_state(tmp_path, CKPT, flags=["--precision", "autocast", "--no-half-vae"])
    model = state.models.current
    model.unet.to(torch.bfloat16)  # a half UNet on any CPU (the plan's choice depends on the CPU's flags)
    for encoder in model.text_encoders:
        encoder.to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    world.concept_dataset(tmp_path / "data" / "star", 4, (world.STAR,), seed=2)
    job, run = submit_training(state, lora_params("halfstar", steps=12))
    job.wait()
    losses = [loss for _, loss in run.losses]
    assert all(np.isfinite(losses)) and np.mean(losses[-4:]) < np.mean(losses[:4]) * 1.5
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    trained = tensors(tmp_path / "models" / "Lora" / "halfstar.safetensors")
    assert any(k.endswith("lora_up.weight") and trained[k].abs().max() > 0 for k in trained)

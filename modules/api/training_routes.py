"""Training routes: A1111's ``/create/embedding`` and ``/train/embedding``, and ``/train/lora`` in the same style.

Training runs as a job in the app's queue (progress, the sample image as the live preview and interrupt through
``/progress`` and ``/interrupt``); the request returns when it ends, as in A1111. A dataset folder from a request
must lie inside the data folder or an ``--allowed-output-roots`` root. The result goes into the embeddings / LoRA
folder with a preview image and a metadata sidecar, and the catalogs are rescanned.
"""
from __future__ import annotations

import re

from fastapi import APIRouter

from modules.models.safetensors_file import read_shapes
from modules.training.embedding_train import EmbeddingConfig, embedding_tensors, initial_vectors
from modules.training.lora_train import LoraConfig, write_safetensors_atomic
from modules.training.train_job import (
    EMBEDDING,
    LORA,
    NAME,
    SampleSettings,
    TrainError,
    TrainParams,
    output_path,
    submit_training,
)

from . import models as m
from .routes import ApiError

_SCHEDULE = re.compile(r"[:,]")


def learning_rate(value: float | str, field: str = "learn_rate") -> float:
    """One learning rate from a number or a numeric string; A1111's "rate:step, …" schedules are refused."""
    if isinstance(value, str):
        if _SCHEDULE.search(value):
            raise ApiError(400, field, f"{value!r}: learning-rate schedules are not supported; give one number")
        try:
            value = float(value)
        except ValueError:
            raise ApiError(400, field, f"{value!r} is not a number") from None
    if not value > 0:
        raise ApiError(400, field, f"{value} must be above 0")
    return float(value)


def _common(req: m.TrainRequestBase) -> dict:
    if req.training_width != req.training_height:
        raise ApiError(400, "training_height", "training is square: training_height must equal training_width "
                                               "(set varsize for images of other shapes)")
    return {"steps": req.steps, "batch": req.batch_size, "seed": req.seed, "resolution": req.training_width,
            "repeats": req.repeats, "buckets": req.varsize, "gradient_checkpointing": req.gradient_checkpointing}


def _sample(req: m.TrainRequestBase) -> SampleSettings:
    return SampleSettings(prompt=req.preview_prompt, negative_prompt=req.preview_negative_prompt,
                          every=req.create_image_every, steps=req.preview_steps, cfg_scale=req.preview_cfg_scale,
                          seed=req.preview_seed, sampler_name=req.preview_sampler_name)


def _created_embedding(state, name: str) -> tuple[int, str] | None:
    """(vectors, initialization text) of an embedding file made by /create/embedding, or None."""
    path = output_path(state, EMBEDDING, name)
    if not path.is_file():
        return None
    shapes, meta = read_shapes(path, False)
    vectors = int(meta.get("vectors") or next(iter(shapes.values()))[0])
    return vectors, meta.get("init_word", "*")


def _run(state, params: TrainParams) -> dict:
    try:
        job, run = submit_training(state, params, remote=True)
    except TrainError as e:
        field, _, message = str(e).partition(": ")
        raise ApiError(400, field if message else "request", message or str(e)) from None
    try:
        job.wait()
    except TrainError as e:
        raise ApiError(400, "request", str(e)) from None
    done = run.stopped_at if run.stopped_at is not None else run.config.steps
    return {"info": f"train {params.kind} complete: filename: {run.output} error: None. {run.summary}",
            "filename": str(run.output), "step": done, "losses": [loss for _, loss in run.losses]}


def create_embedding(state, req: m.CreateEmbeddingRequest) -> dict:
    """Write a new embedding whose vectors are the initialization text's token embeddings (on the loaded model)."""
    if not NAME.match(req.name):
        raise ApiError(400, "name", f"{req.name!r} must be 1–64 letters, digits, '-' or '_'")
    path = output_path(state, EMBEDDING, req.name)
    if path.exists() and not req.overwrite_old:
        raise ApiError(400, "name", f"{path.name} exists; set overwrite_old to replace it")

    def make():
        from modules.training.datasets import CaptionTokenizer

        model = state.models.current
        if model is None:
            raise TrainError("no checkpoint is loaded")
        vectors = initial_vectors(model, CaptionTokenizer(model), req.init_text, req.num_vectors_per_token)
        meta = {"name": req.name, "step": "0", "init_word": req.init_text, "vectors": str(req.num_vectors_per_token),
                "base_model": model.family.value}
        write_safetensors_atomic(embedding_tensors(model, vectors), meta, path)
        state.networks.refresh()

    try:
        state.queue.run_exclusive(make, "create embedding")
    except TrainError as e:
        raise ApiError(400, "sd_model_checkpoint", str(e)) from None
    return {"info": f"create embedding filename: {path}"}


def add_training_routes(router: APIRouter, state) -> None:
    """Register the training routes on ``router`` (the ``/sdapi/v1`` one)."""

    @router.post("/create/embedding", response_model=m.CreateResponse)
    def post_create_embedding(req: m.CreateEmbeddingRequest):
        return create_embedding(state, req)

    @router.post("/train/embedding", response_model=m.TrainResponse)
    def post_train_embedding(req: m.TrainEmbeddingRequest):
        vectors, init = _created_embedding(state, req.embedding_name) or (req.num_vectors_per_token, req.init_text)
        cfg = EmbeddingConfig(vectors=vectors, init_word=init, lr=learning_rate(req.learn_rate), **_common(req))
        return _run(state, TrainParams(EMBEDDING, req.embedding_name, req.data_root, embedding=cfg,
                                       sample=_sample(req)))

    @router.post("/train/lora", response_model=m.TrainResponse)
    def post_train_lora(req: m.TrainLoraRequest):
        cfg = LoraConfig(rank=req.network_dim, alpha=req.network_alpha, unet_lr=learning_rate(req.learn_rate),
                         te_lr=req.text_encoder_lr or None, min_snr_gamma=req.min_snr_gamma or None, **_common(req))
        return _run(state, TrainParams(LORA, req.lora_name, req.data_root, lora=cfg, sample=_sample(req),
                                       activation_text=req.activation_text))


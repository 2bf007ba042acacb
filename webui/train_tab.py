"""The Train tab: teach the loaded checkpoint a new concept as a LoRA or a textual-inversion embedding, from a server
folder of captioned images or from images uploaded in the page. The training runs as a job in the app's queue; the
page shows its progress and ETA, the loss curve and a sample image every N steps, and Interrupt keeps a state to
resume from. The finished network appears at once among the cards of the generation tabs."""
from __future__ import annotations

import html
from dataclasses import dataclass, fields

import gradio as gr
from PIL import Image

from modules import requester
from modules.training.embedding_train import EmbeddingConfig
from modules.training.lora_train import LoraConfig
from modules.training.loss_plot import loss_svg
from modules.training.train_job import (
    EMBEDDING,
    LORA,
    SampleSettings,
    TrainError,
    TrainParams,
    dataset_items,
    submit_training,
)
from webui.context import UiContext
from webui.generation_tab import POLL_SECONDS, is_local
from webui.progress_html import job_progress_html

KIND = "train"
KIND_LABELS = {"LoRA": LORA, "Textual inversion (embedding)": EMBEDDING}
PREVIEW_LIMIT = 24  # images shown in the dataset preview
THUMB = 256
AUTOMATIC_RATES = ("0 picks a rate for the loaded model: for a small UNet like the bundled model's, UNet 5e-3, text "
                   "encoder 1e-3, embedding 2e-2; for a full-size one 1e-4, 5e-5 and 5e-3")


@dataclass
class _Controls:
    """The tab's fields (values read by name in :func:`params_from`)."""

    kind: gr.Radio
    name: gr.Textbox
    folder: gr.Textbox
    uploads: gr.File
    resolution: gr.Number
    repeats: gr.Number
    buckets: gr.Checkbox
    checkpointing: gr.Checkbox
    rank: gr.Number
    alpha: gr.Number
    unet_lr: gr.Number
    train_te: gr.Checkbox
    te_lr: gr.Number
    min_snr_gamma: gr.Number
    init_text: gr.Textbox
    vectors: gr.Number
    embedding_lr: gr.Number
    steps: gr.Number
    batch: gr.Number
    seed: gr.Number
    sample_prompt: gr.Textbox
    sample_every: gr.Number
    activation_text: gr.Textbox
    description: gr.Textbox

    def components(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]


def params_from(values: dict) -> TrainParams:
    """A TrainParams from the tab's field values (by field name)."""
    v = values
    kind = KIND_LABELS.get(v["kind"], v["kind"])
    resolution = int(v["resolution"] or 0) or None
    common = {"steps": int(v["steps"]), "batch": int(v["batch"]), "seed": int(v["seed"]), "resolution": resolution,
              "repeats": int(v["repeats"]), "buckets": bool(v["buckets"]),
              "gradient_checkpointing": bool(v["checkpointing"])}
    lora = LoraConfig(rank=int(v["rank"]), alpha=float(v["alpha"]), unet_lr=float(v["unet_lr"]),
                      te_lr=float(v["te_lr"]) if v["train_te"] else None,
                      min_snr_gamma=float(v["min_snr_gamma"]) or None, **common)
    embedding = EmbeddingConfig(vectors=int(v["vectors"]), init_word=v["init_text"] or "*",
                                lr=float(v["embedding_lr"]), **common)
    uploads = tuple(str(getattr(f, "name", f)) for f in (v["uploads"] or ()))
    return TrainParams(kind, (v["name"] or "").strip(), (v["folder"] or "").strip(), uploads, lora, embedding,
                       SampleSettings(prompt=v["sample_prompt"] or "", every=int(v["sample_every"])),
                       activation_text=v["activation_text"] or "", description=v["description"] or "")


def _note(text: str, error: bool = False) -> str:
    return f'<div class="{"sd-error" if error else "sd-note"}">{html.escape(text)}</div>'


def _controls(ctx: UiContext) -> tuple[_Controls, gr.Group, gr.Group, gr.Button]:
    defaults_emb = EmbeddingConfig()
    kind = gr.Radio(list(KIND_LABELS), value="LoRA", label="Train", elem_id="train_kind")
    name = gr.Textbox(label="Name", placeholder="e.g. mystar", elem_id=ctx.tip(
        "train_name", "The new file's name; for an embedding also the word that stands for it in prompts"))
    with gr.Group():
        folder = gr.Textbox(label="Dataset folder on the server", placeholder="a folder of images with .txt captions",
                            elem_id=ctx.tip("train_folder", "Images with a caption file of the same name (img.png + "
                                            "img.txt); kohya's <repeats>_<name> subfolders count"))
        uploads = gr.File(label="…or upload images and their .txt captions", file_count="multiple",
                          file_types=["image", ".txt"], elem_id="train_uploads")
        check = gr.Button("Preview dataset", elem_id="train_preview_dataset")
    with gr.Row():
        resolution = gr.Number(0, label="Resolution (0: the model's)", precision=0, minimum=0,
                               elem_id=ctx.tip("train_resolution", "Training size; the bundled model's is 64"))
        repeats = gr.Number(1, label="Repeats", precision=0, minimum=1, elem_id=ctx.tip(
            "train_repeats", "How many times each image counts per epoch"))
        buckets = gr.Checkbox(True, label="Bucket by aspect ratio", elem_id=ctx.tip(
            "train_buckets", "Train each image at the size of about the same area nearest to its shape, "
                             "instead of a centre crop"))
        checkpointing = gr.Checkbox(False, label="Gradient checkpointing", elem_id=ctx.tip(
            "train_gradient_checkpointing", "Recompute the UNet's activations in the backward pass: much less "
                                            "memory for a full-size model, about a third slower"))
    with gr.Group(visible=True, elem_id="train_lora_settings") as lora_group, gr.Row():
        rank = gr.Number(8, label="Rank (dim)", precision=0, minimum=1, elem_id="train_rank")
        alpha = gr.Number(8.0, label="Alpha", minimum=0, elem_id="train_alpha")
        unet_lr = gr.Number(0.0, label="UNet learning rate (0: automatic)", minimum=0, elem_id=ctx.tip(
            "train_unet_lr", AUTOMATIC_RATES))
        train_te = gr.Checkbox(True, label="Train the text encoder", elem_id="train_train_te")
        te_lr = gr.Number(0.0, label="Text encoder learning rate (0: automatic)", minimum=0, elem_id=ctx.tip(
            "train_te_lr", AUTOMATIC_RATES))
        snr = gr.Number(0.0, label="Min-SNR gamma (0: off)", minimum=0, elem_id=ctx.tip(
            "train_min_snr", "Weights the loss by min(SNR, gamma): often 5"))
    with gr.Group(visible=False, elem_id="train_embedding_settings") as embedding_group, gr.Row():
        init = gr.Textbox(defaults_emb.init_word, label="Initialization text", elem_id=ctx.tip(
            "train_init_text", "The vectors start as this text's token embeddings"))
        vectors = gr.Number(defaults_emb.vectors, label="Vectors per token", precision=0, minimum=1,
                            elem_id="train_vectors")
        emb_lr = gr.Number(0.0, label="Learning rate (0: automatic)", minimum=0, elem_id=ctx.tip(
            "train_embedding_lr", AUTOMATIC_RATES))
    with gr.Row():
        steps = gr.Number(150, label="Steps", precision=0, minimum=1, elem_id="train_steps")
        batch = gr.Number(4, label="Batch size", precision=0, minimum=1, elem_id="train_batch")
        seed = gr.Number(0, label="Seed", precision=0, elem_id="train_seed")
    with gr.Row():
        sample_prompt = gr.Textbox(label="Sample prompt", scale=3, elem_id=ctx.tip(
            "train_sample_prompt", "Empty: the first caption (for an embedding, the first that names it)"))
        sample_every = gr.Number(50, label="Sample every N steps (0: never)", precision=0, minimum=0,
                                 elem_id="train_sample_every")
    with gr.Accordion("Card metadata", open=False):
        activation = gr.Textbox(label="Activation text", elem_id=ctx.tip(
            "train_activation_text", "Added to the prompt with the LoRA when its card is clicked"))
        description = gr.Textbox(label="Description", elem_id="train_description")
    controls = _Controls(kind, name, folder, uploads, resolution, repeats, buckets, checkpointing, rank, alpha, unet_lr,
                         train_te, te_lr, snr, init, vectors, emb_lr, steps, batch, seed, sample_prompt, sample_every,
                         activation, description)
    return controls, lora_group, embedding_group, check


def _dataset_preview(ctx: UiContext, params: TrainParams, remote: bool) -> tuple[str, list]:
    items = dataset_items(ctx.state, params, remote)
    repeats = sum(i.repeats for i in items) * max(1, params.lora.repeats)
    captioned = sum(1 for i in items if i.caption)
    text = (f"{len(items)} images ({captioned} with captions), {repeats} per epoch with repeats"
            + (f"; showing the first {PREVIEW_LIMIT}" if len(items) > PREVIEW_LIMIT else ""))
    return _note(text), [(_thumbnail(i.path), i.caption or "(no caption)") for i in items[:PREVIEW_LIMIT]]


def _enlarged(image: Image.Image) -> Image.Image:
    """A small sample shown at :data:`THUMB` pixels at least (pixel-sharp), so a 64² model's output is visible."""
    factor = THUMB // max(image.size)
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST) if factor > 1 \
        else image


def _thumbnail(path) -> Image.Image:
    """A small copy of a dataset image (the page gets pixels, never a server path)."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    image.thumbnail((THUMB, THUMB))
    return image


def build(ctx: UiContext) -> None:
    """Lay out the tab (settings left; Train, progress, loss curve and samples right) and wire its events."""
    state = ctx.state
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, elem_id="train_settings"):
            controls, lora_group, embedding_group, check = _controls(ctx)
        with gr.Column(scale=1, elem_id="train_results"):
            with gr.Row():
                train = gr.Button("Train", variant="primary", scale=3, elem_id=ctx.tip(
                    "train_start", "Train on the loaded checkpoint; the same name and settings resume a stopped run"))
                interrupt = gr.Button("Interrupt", scale=1, elem_id=ctx.tip(
                    "train_interrupt", "Stop at the next step; the state is kept to resume from"))
            status = gr.HTML("", elem_id="train_status")
            plot = gr.HTML(loss_svg([]), elem_id="train_loss_plot")
            sample = gr.Image(label="Latest sample", type="pil", interactive=False, height=256,
                              elem_id="train_sample")
            samples = gr.Gallery(label="Samples", columns=6, height=160, object_fit="contain",
                                 elem_id="train_samples")
            dataset = gr.Gallery(label="Dataset", columns=6, height=200, object_fit="contain",
                                 elem_id="train_dataset")
    panels = ctx.card_panels
    searches = [p.search for p in panels]
    boxes = [box for p in panels for box in p.boxes]

    def show_kind(label: str):
        lora = KIND_LABELS.get(label) == LORA
        return gr.update(visible=lora), gr.update(visible=not lora)

    def preview(data: dict, request: gr.Request):
        try:
            return _dataset_preview(ctx, params_from({f.name: data[getattr(controls, f.name)]
                                                      for f in fields(_Controls)}), not is_local(request))
        except TrainError as e:
            return _note(str(e), error=True), []

    def frames(run, job) -> list:
        latest = _enlarged(run.samples[-1][1]) if run.samples else gr.skip()
        gallery = [(img, f"step {step}") for step, img in run.samples] if run.samples else gr.skip()
        return [job_progress_html(state.queue, job), loss_svg(list(run.losses)), latest,
                gallery]

    def run_training(data: dict, request: gr.Request):
        skip = [gr.skip()] * (3 + len(boxes))
        try:
            params = params_from({f.name: data[getattr(controls, f.name)] for f in fields(_Controls)})
            with requester.acting_as(requester.from_gradio(request)):  # the queue's turns
                job, run = submit_training(state, params, remote=not is_local(request))
        except (TrainError, ValueError) as e:
            yield [_note(str(e), error=True), *skip]
            return
        ctx.outputs.get(request.session_hash, KIND).job = job
        while not job.done:
            yield [*frames(run, job), *[gr.skip()] * len(boxes)]
            job.wait_done(POLL_SECONDS)
        try:
            job.wait()
        except Exception as e:  # noqa: BLE001 - the error is the user's to read; the UI goes on
            message = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            yield [_note(f"Training failed: {message}", error=True), loss_svg(list(run.losses)), gr.skip(),
                   gr.skip(), *[gr.skip()] * len(boxes)]
            return
        lines = [*run.notes, run.summary]
        cards = [html_ for p, q in zip(panels, data_searches(data), strict=True) for html_ in p.render(q)]
        latest, gallery = frames(run, job)[2:]
        yield [_note(" · ".join(lines)), loss_svg(list(run.losses)), latest, gallery, *cards]

    def data_searches(data: dict) -> list[str]:
        return [data[s] or "" for s in searches]

    def stop(request: gr.Request):
        job = ctx.outputs.get(request.session_hash, KIND).job
        if job is not None and not job.done:
            job.interrupt()

    controls.kind.change(show_kind, controls.kind, [lora_group, embedding_group], queue=False,
                         show_progress="hidden")
    check.click(preview, set(controls.components()), [status, dataset], show_progress="hidden")
    train.click(run_training, {*controls.components(), *searches}, [status, plot, sample, samples, *boxes],
                concurrency_limit=None, show_progress="hidden")
    interrupt.click(stop, None, None, queue=False)

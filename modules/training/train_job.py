"""Training in the app: a LoRA or a textual-inversion embedding on the loaded checkpoint, as one job in the app's
queue (one thing on the model at a time), for the Train tab and the training API routes.

The dataset is a folder of images with ``.txt`` captions on the server, or files uploaded in the page (copied into
the run's folder, so a restart can resume from them). Every ``sample_every`` steps the result is written into
``models/Lora`` / ``embeddings`` and a sample image is made from the sample prompt (shown as the job's live
preview). A run keeps its resume state in ``<data>/train/<kind>/<name>``: starting the same name again with the same
settings goes on from the last saved step (after an interrupt or a restart); other settings start over. At the end
the file gets a preview image (``name.preview.png``) and an A1111 metadata sidecar (``name.json``), and the catalogs
are rescanned, so the network shows as a card at once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from modules.image_io import atomic_write
from modules.networks.user_metadata import UserMetadata, read_user_metadata, write_user_metadata
from modules.output_folders import typed_folder
from modules.processing.params import Txt2ImgParams
from modules.processing.progress import JobProgress
from modules.training.datasets import IMAGE_SUFFIXES, CaptionedImage, scan_folder
from modules.training.embedding_train import EmbeddingConfig, train_embedding
from modules.training.lora_train import LoraConfig, TrainObserver, release_model, train_lora

log = logging.getLogger(__name__)
LORA, EMBEDDING = "lora", "embedding"
KINDS = (LORA, EMBEDDING)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
MAX_STEPS = 100_000
SMALL_UNET = 100_000_000  # parameters: below, a model like the bundled one, which learns at far higher rates
UPLOAD_SUFFIXES = (*IMAGE_SUFFIXES, ".txt")  # what an upload keeps: images and their captions


class TrainError(ValueError):
    """A training request that cannot run; the message names the field."""


@dataclass(frozen=True)
class SampleSettings:
    """The image made every ``every`` steps (0: none) to show what the network has learnt."""

    prompt: str = ""  # empty: the first caption of the dataset (that names the embedding, for one)
    negative_prompt: str = ""
    every: int = 50
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = 1
    sampler_name: str = "DPM++ 2M"


@dataclass(frozen=True)
class TrainParams:
    """One training request. ``folder``: a server folder (relative: below the data folder) or ``uploads``: files
    uploaded in the page (images and their .txt captions). ``lora`` / ``embedding``: the trainer's settings for
    ``kind``."""

    kind: str
    name: str
    folder: str = ""
    uploads: tuple[str, ...] = ()
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(steps=150, batch=4, buckets=True))
    embedding: EmbeddingConfig = field(default_factory=lambda: EmbeddingConfig(steps=150, batch=4, buckets=True))
    sample: SampleSettings = field(default_factory=SampleSettings)
    activation_text: str = ""  # written into the LoRA's sidecar: a card click adds it to the prompt
    description: str = ""


@dataclass
class TrainRun:
    """What a running or finished training shows: the loss curve, the samples, the outcome (read by UI threads)."""

    params: TrainParams
    output: Path
    work_dir: Path
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[int, object]] = field(default_factory=list)  # (step, PIL image)
    resumed_from: int = 0
    stopped_at: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def config(self):
        return self.params.lora if self.params.kind == LORA else self.params.embedding

    @property
    def summary(self) -> str:
        """One line on how the run ended (or stands)."""
        steps = self.config.steps
        if self.stopped_at is not None:
            return (f"Interrupted at step {self.stopped_at} of {steps}: {self.output.name} holds that state; press "
                    "Train again with the same settings to resume")
        done = self.losses[-1][0] if self.losses else self.resumed_from
        resumed = f", resumed at step {self.resumed_from}" if self.resumed_from else ""
        return f"Trained {self.output.name}: step {done} of {steps} ({self.rates}{resumed})"

    @property
    def rates(self) -> str:
        """The learning rates the run used, as words."""
        cfg = self.config
        if self.params.kind == EMBEDDING:
            return f"learning rate {cfg.lr:g}"
        te = f"text encoder {cfg.te_lr:g}" if cfg.te_lr else "text encoder not trained"
        return f"UNet learning rate {cfg.unet_lr:g}, {te}"


# --- checking a request --------------------------------------------------------------------------------------

def output_path(state, kind: str, name: str) -> Path:
    """Where a trained network goes: the LoRA folder, or the first embeddings folder."""
    folder = state.options.lora_dir if kind == LORA else state.networks.embedding_dirs[0]
    return Path(folder) / f"{name}.safetensors"


def work_dir(state, kind: str, name: str) -> Path:
    """The run's own folder (resume state, uploaded dataset) under the data folder."""
    return Path(state.options.data_dir) / "train" / kind / name


def _check(params: TrainParams) -> None:
    if params.kind not in KINDS:
        raise TrainError(f"kind: {params.kind!r} is not one of {', '.join(KINDS)}")
    if not NAME.match(params.name or ""):
        raise TrainError(f"name: {params.name!r} must be 1–64 letters, digits, '-' or '_' (it becomes the file name"
                         + (" and the word for prompts)" if params.kind == EMBEDDING else ")"))
    if params.folder and params.uploads:
        raise TrainError("dataset: give a server folder or uploaded files, not both")
    cfg = params.lora if params.kind == LORA else params.embedding
    if not 1 <= cfg.steps <= MAX_STEPS:
        raise TrainError(f"steps: {cfg.steps} must be between 1 and {MAX_STEPS}")
    if not 1 <= cfg.batch <= 64:
        raise TrainError(f"batch size: {cfg.batch} must be between 1 and 64")
    if cfg.repeats < 1:
        raise TrainError(f"repeats: {cfg.repeats} must be at least 1")
    if cfg.resolution is not None and not 64 <= cfg.resolution <= 2048:
        raise TrainError(f"resolution: {cfg.resolution} must be between 64 and 2048 (or empty for the model's)")
    if params.kind == LORA:
        if not 1 <= cfg.rank <= 256:
            raise TrainError(f"rank: {cfg.rank} must be between 1 and 256")
        if cfg.unet_lr < 0 or (cfg.te_lr is not None and cfg.te_lr < 0):
            raise TrainError("learning rate: must be 0 (automatic) or more")
    else:
        if not 1 <= cfg.vectors <= 75:
            raise TrainError(f"vectors per token: {cfg.vectors} must be between 1 and 75")
        if cfg.lr < 0:
            raise TrainError("learning rate: must be 0 (automatic) or more")
    if params.sample.every < 0:
        raise TrainError("sample every: must be 0 (no samples) or more")


def dataset_items(state, params: TrainParams, remote: bool) -> list[CaptionedImage]:
    """The request's images with their captions (TrainError when there are none or a folder is not allowed)."""
    if params.uploads:
        return scan_uploads(params.uploads)
    if not params.folder:
        raise TrainError("dataset: choose a folder of images with .txt captions, or upload images")
    try:
        folder = typed_folder("dataset folder", params.folder, Path(state.options.data_dir),
                              state.options.allowed_output_roots, remote)
        return scan_folder(folder)
    except (ValueError, OSError) as e:  # not allowed, not there, no images
        raise TrainError(f"dataset: {e}") from None


def scan_uploads(uploads: tuple[str, ...]) -> list[CaptionedImage]:
    """Uploaded images with the caption of the uploaded ``.txt`` file of the same name ("" without one)."""
    paths = [Path(p) for p in uploads]
    captions = {p.stem: p.read_text(encoding="utf-8").strip() for p in paths if p.suffix.lower() == ".txt"}
    items = [CaptionedImage(p, captions.get(p.stem, ""), "upload") for p in sorted(paths, key=lambda p: p.name)
             if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise TrainError("dataset: the uploaded files hold no image (.png, .jpg, .jpeg, .webp, .bmp)")
    return items


def _copy_uploads(uploads: tuple[str, ...], target: Path) -> Path:
    """Copy uploaded images and captions into the run's dataset folder (replacing an older upload)."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for p in map(Path, uploads):
        if p.suffix.lower() in UPLOAD_SUFFIXES:
            shutil.copyfile(p, target / p.name)
    return target


def _naming(name: str, items: list[CaptionedImage]) -> list[str]:
    """The captions that hold ``name`` as a word."""
    word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    return [i.caption for i in items if word.search(i.caption)]


def _default_sample_prompt(params: TrainParams, items: list[CaptionedImage]) -> str:
    if params.kind == EMBEDDING:
        return (_naming(params.name, items) or [params.name])[0]
    return next((i.caption for i in items if i.caption), "")


def prepare(state, params: TrainParams, remote: bool) -> tuple[TrainParams, list[CaptionedImage]]:
    """Check a request (TrainError naming the field): names, numbers, the dataset (an embedding's captions must
    contain its name). Returns the request with its sample prompt filled in, and the dataset."""
    from modules.sampling import resolve

    _check(params)
    try:
        resolve(params.sample.sampler_name, "Automatic")
    except ValueError as e:
        raise TrainError(f"sample sampler: {e}") from None
    items = dataset_items(state, params, remote)
    if params.kind == EMBEDDING and not _naming(params.name, items):
        raise TrainError(f"dataset: no caption contains the embedding's name {params.name!r}; the trained vectors "
                         "replace that word in the captions")
    sample = params.sample
    if not sample.prompt.strip():
        sample = replace(sample, prompt=_default_sample_prompt(params, items))
    return replace(params, sample=sample), items


# --- the job ------------------------------------------------------------------------------------------------

def automatic_rates(model) -> tuple[float, float, float]:
    """Learning rates for a rate of 0 ("automatic"): (UNet, text encoder, embedding). For a small UNet (the bundled
    model's 5.8 M parameters) 5e-3 / 1e-3 / 2e-2: measured over 150 steps of batch 4, the loss stays below 0.2 at
    these, while 1e-2 / 2e-3 and 2e-2 / 5e-3 learn a star shape faster but spike to a loss of 1.0–1.4 and can
    diverge. A full-size UNet takes kohya's usual 1e-4 / 5e-5 and A1111's 5e-3 for embeddings."""
    small = sum(p.numel() for p in model.unet.parameters()) < SMALL_UNET
    return (5e-3, 1e-3, 2e-2) if small else (1e-4, 5e-5, 5e-3)


def with_rates(params: TrainParams, model) -> TrainParams:
    """``params`` with every automatic (0) learning rate replaced by :func:`automatic_rates`' for ``model``."""
    unet, te, emb = automatic_rates(model)
    lora = replace(params.lora, unet_lr=params.lora.unet_lr or unet,
                   te_lr=te if params.lora.te_lr == 0 else params.lora.te_lr)
    return replace(params, lora=lora, embedding=replace(params.embedding, lr=params.embedding.lr or emb))


def _settings_key(params: TrainParams, model_source: Path, items: list[CaptionedImage]) -> str:
    """What must match for a saved state to be resumed: every setting except the number of steps, the model, and
    the dataset's content (file names, sizes and captions: the same images resume however they arrive)."""
    cfg = asdict(params.lora if params.kind == LORA else params.embedding)
    cfg.pop("steps")
    cfg.pop("checkpoint_minutes")
    dataset = hashlib.sha256(json.dumps([(i.path.name, i.path.stat().st_size, i.caption, i.repeats)
                                         for i in items]).encode()).hexdigest()
    return json.dumps({"config": cfg, "model": str(model_source), "dataset": dataset}, sort_keys=True)


def _resume_or_start_over(run: TrainRun, key: str) -> None:
    """Keep the run folder's state when it was saved with the same settings; else remove it (noted)."""
    marker = run.work_dir / "settings.json"
    state_file = run.work_dir / "state.pt"
    if state_file.exists() and (not marker.exists() or marker.read_text(encoding="utf-8") != key):
        state_file.unlink()
        run.notes.append("A saved state of this name had other settings: training started over")
    run.work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, lambda f: f.write(key.encode("utf-8")))


def _strip_own_tag(prompt: str, name: str) -> str:
    """The sample prompt without a ``<lora:name:…>`` tag of the LoRA being trained (it is attached already)."""
    return re.sub(rf"<lora:{re.escape(name)}(:[^>]*)?>", "", prompt).strip()


class _Trainer:
    """Runs one TrainRun inside a queue job: the observer's callbacks, samples, and the files at the end."""

    def __init__(self, state, run: TrainRun, progress: JobProgress):
        self.state, self.run, self.progress = state, run, progress
        self.total = run.config.steps
        self.lock = threading.Lock()

    def on_step(self, step: int, loss: float) -> None:
        run, progress = self.run, self.progress
        if not run.losses and not run.resumed_from and step > 1:
            run.resumed_from = step - 1
            progress.begin(self.total - run.resumed_from, 1)
        with self.lock:
            run.losses.append((step, loss))
        progress.step = step - run.resumed_from
        progress.textinfo = f"Training {run.params.kind} {run.params.name}: step {step}/{self.total}, loss {loss:.4f}"

    def on_save(self, step: int) -> None:
        every = self.run.params.sample.every
        if every and (step % every == 0 or step == self.total) and not self.should_stop():
            self.sample(step)

    def sample(self, step: int):
        """Generate the sample image at ``step`` with the network as it is now (shown as the live preview)."""
        from modules.processing.runner import run_job

        run, s = self.run, self.run.params.sample
        if run.params.kind == EMBEDDING:
            self.state.networks.refresh()  # the file was just written: the prompt uses it by name
        prompt = _strip_own_tag(s.prompt, run.params.name) if run.params.kind == LORA else s.prompt
        model = self.state.models.current
        width, height = model.native_size if run.config.resolution is None else (run.config.resolution,) * 2
        params = Txt2ImgParams(prompt=prompt, negative_prompt=s.negative_prompt, steps=s.steps,
                               cfg_scale=s.cfg_scale, seed=s.seed, sampler_name=s.sampler_name, width=width,
                               height=height, do_not_save_samples=True, do_not_save_grid=True)
        try:
            result = run_job(self.state, params, JobProgress(control=self.progress.control))
        finally:  # LoRAs named in the sample prompt leave the weights that go on training
            self.state.networks.activate(model, [], [], {})
        if result.images:
            image = result.images[0]
            with self.lock:
                run.samples.append((step, image))
            self.progress.show_preview(image)
        return result

    def should_stop(self) -> bool:
        return self.progress.control.interrupted


def _finish_files(state, run: TrainRun, model) -> None:
    """Preview image and metadata sidecar beside the new file; rescan so that it shows as a card."""
    if run.samples:
        image = run.samples[-1][1]
        atomic_write(run.output.with_name(run.output.stem + ".preview.png"), lambda f: image.save(f, "PNG"))
    existing = read_user_metadata(run.output) if run.output.with_suffix(".json").exists() else UserMetadata()
    cfg, p = run.config, run.params
    done = run.stopped_at if run.stopped_at is not None else cfg.steps
    what = (f"LoRA rank {cfg.rank}, alpha {cfg.alpha:g}" if p.kind == LORA
            else f"embedding, {cfg.vectors} vectors from '{cfg.init_word}'")
    description = p.description or existing.description or (
        f"Trained in the Train tab on {Path(model.source).name}: {what}, {done} steps of batch {cfg.batch}")
    family = model.family.value if model.family.value in ("SD1", "SD2", "SDXL") else "Unknown"
    meta = replace(existing, description=description, sd_version=family,
                   activation_text=p.activation_text or existing.activation_text,
                   preferred_weight=existing.preferred_weight or 1.0)
    write_user_metadata(run.output, meta)
    state.networks.refresh()


def submit_training(state, params: TrainParams, remote: bool = False):
    """Check ``params`` now (TrainError) and queue the training as one job; returns (Job, TrainRun).

    ``remote``: the request comes from another machine, so a dataset folder must lie inside the data folder or an
    ``--allowed-output-roots`` root."""
    params, items = prepare(state, params, remote)
    run = TrainRun(params, output_path(state, params.kind, params.name), work_dir(state, params.kind, params.name))
    folder = run.work_dir / "dataset" if params.uploads else typed_folder(
        "dataset folder", params.folder, Path(state.options.data_dir), state.options.allowed_output_roots, remote)

    def work(progress: JobProgress):
        model = state.models.current
        if model is None:
            raise TrainError("no checkpoint is loaded: choose one first")
        run.params = with_rates(params, model)
        _resume_or_start_over(run, _settings_key(run.params, Path(model.source), items))
        data = _copy_uploads(params.uploads, folder) if params.uploads else folder
        trainer = _Trainer(state, run, progress)
        cfg = run.config
        observer = TrainObserver(trainer.on_step, trainer.on_save, trainer.should_stop, params.sample.every)
        progress.begin(cfg.steps, 1)
        state.networks.activate(model, [], [], {})  # no generation's LoRA stays patched into the weights
        started = time.perf_counter()
        network = None
        try:
            if run.params.kind == LORA:
                network = train_lora(model, data, run.output, cfg, run.work_dir, progress=True, observer=observer)
            else:
                train_embedding(model, data, run.output, cfg, run.work_dir, progress=True, observer=observer)
            run.stopped_at = observer.stopped_at
            if not run.samples and run.stopped_at is None:
                trainer.sample(cfg.steps)  # every card gets a preview
        finally:
            if network is not None:
                network.detach()
            release_model(model)
        _finish_files(state, run, model)
        log.info("%s in %.1f s", run.summary, time.perf_counter() - started)
        progress.finish()
        return run

    return state.queue.submit(work, f"train {params.kind}"), run

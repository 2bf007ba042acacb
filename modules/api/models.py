"""Request and response bodies of the A1111-compatible HTTP API (``/sdapi/v1``), with A1111's field names and defaults.

Limits come from :mod:`modules.processing.params`, so that the OpenAPI schema (``/openapi.json``, ``/docs``) tells
clients what the engine accepts; values outside them are refused with 422 before a job is queued. Fields that A1111
clients send but this engine has no use for (``s_churn``, ``firstphase_width``, …) are accepted and ignored.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from modules.processing import extras
from modules.processing import params as limits


class GenerationRequest(BaseModel):
    """Fields common to txt2img and img2img."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list, description="names from /prompt-styles")
    seed: int = Field(-1, description="-1: random")
    subseed: int = -1
    subseed_strength: float = Field(0.0, ge=0, le=1)
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = Field(None, description="a name or alias from /samplers; empty: the default sampler")
    sampler_index: str | None = Field(None, description="deprecated: used when sampler_name is empty")
    scheduler: str | None = Field(None, description="a name or label from /schedulers; empty: Automatic")
    batch_size: int = Field(1, ge=1, le=limits.MAX_BATCH_SIZE)
    n_iter: int = Field(1, ge=1, le=limits.MAX_N_ITER)
    steps: int = Field(50, ge=1, le=limits.MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=0, le=100)
    width: int = Field(512, ge=limits.MIN_SIZE, le=limits.MAX_SIZE, description="floored to a multiple of 8")
    height: int = Field(512, ge=limits.MIN_SIZE, le=limits.MAX_SIZE, description="floored to a multiple of 8")
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = Field(None, ge=0, le=10, description="noise per step of the ancestral / SDE samplers and "
                                                         "DDIM; empty: the eta_ancestral / eta_ddim setting")
    s_min_uncond: float | None = Field(None, ge=0, le=100,
                                       description="NGMS: skip the negative prompt on every other step below this "
                                                   "sigma; empty: the s_min_uncond setting")
    denoising_strength: float | None = Field(None, ge=0, le=1)
    refiner_checkpoint: str | None = Field(None, description='a checkpoint from /sd-models that runs the last steps; '
                                                             'empty or "None": no refiner')
    refiner_switch_at: float | None = Field(None, gt=0, lt=1, description="the fraction of the steps after which the "
                                                                          "refiner takes over; empty: 0.8")
    override_settings: dict[str, Any] | None = Field(None, description="settings for this request only")
    override_settings_restore_afterwards: bool = Field(True, description="accepted; overrides never outlive a job")
    script_name: str | None = Field(None, description="a selectable script from /scripts")
    script_args: list[Any] | dict[str, Any] = Field(default_factory=list, description="positional list or by name")
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict, description='{"Title": {"args": [...] or {...}}}')
    infotext: str | None = Field(None, description="fills fields not given in the request from an infotext")


class Txt2ImgRequest(GenerationRequest):
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1, le=4)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=limits.MAX_STEPS)
    hr_resize_x: int = Field(0, ge=0, le=limits.MAX_SIZE)
    hr_resize_y: int = Field(0, ge=0, le=limits.MAX_SIZE)
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    firstphase_width: int = 0
    firstphase_height: int = 0


class Img2ImgRequest(GenerationRequest):
    init_images: list[str] = Field(default_factory=list, description="base64 images (data: URLs accepted)")
    resize_mode: int = Field(0, ge=0, le=3)
    denoising_strength: float = Field(0.75, ge=0, le=1)
    image_cfg_scale: float | None = None
    mask: str | None = Field(None, description="base64 image; white = repaint")
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(0, ge=0, le=1024)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = Field(None, ge=0, le=2)
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs carrying their infotext")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    queue_waiting: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class PngInfoRequest(BaseModel):
    image: str = Field(description="base64 image")


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float = -1
    need_inner_model: bool = False


class ExtrasBaseRequest(BaseModel):
    """A1111's extras fields (``/extra-single-image``, ``/extra-batch-images``)."""

    resize_mode: Literal[0, 1] = Field(0, description="0: scale by upscaling_resize; 1: scale to "
                                                      "upscaling_resize_w × upscaling_resize_h")
    show_extras_results: bool = Field(True, description="accepted; the images are always returned, as in A1111")
    gfpgan_visibility: float = Field(0, ge=0, le=1, description="face restoration is not available offline: a "
                                                                 "value above 0 gives a warning")
    codeformer_visibility: float = Field(0, ge=0, le=1, description="as gfpgan_visibility")
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, gt=0, le=extras.MAX_SCALE, description="the factor of resize_mode 0")
    upscaling_resize_w: int = Field(512, ge=1, le=extras.MAX_OUTPUT_SIDE, description="the width of resize_mode 1")
    upscaling_resize_h: int = Field(512, ge=1, le=extras.MAX_OUTPUT_SIDE, description="the height of resize_mode 1")
    upscaling_crop: bool = Field(True, description="resize_mode 1: cut the image to that size around its centre")
    upscaler_1: str = Field("None", description="a name from /upscalers; None: the image is not resized")
    upscaler_2: str = Field("None", description="a name from /upscalers, blended in")
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1, description="how much of upscaler_2's image")
    upscale_first: bool = Field(False, description="accepted; without face restoration there is nothing to order")


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="base64 image (data: URLs accepted)")


class FileData(BaseModel):
    data: str = Field(description="base64 image")
    name: str = Field("", description="its file name (used in saved names)")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(description="the images")  # noqa: N815 - A1111's field name


class ExtrasSingleImageResponse(BaseModel):
    html_info: str = Field(description="the postprocessing text (and warnings) as HTML paragraphs")
    image: str | None = Field(None, description="base64 PNG with the postprocessing text; none when interrupted")
    warnings: list[str] = Field(default_factory=list)


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str = Field(description="the last image's postprocessing text (and warnings) as HTML paragraphs")
    images: list[str] = Field(description="base64 PNGs with the postprocessing text")
    warnings: list[str] = Field(default_factory=list)


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscaleModeItem(BaseModel):
    name: str


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem | str]


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class ScriptArg(BaseModel):
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str
    is_alwayson: bool
    is_img2img: bool
    args: list[ScriptArg]


class ExtensionItem(BaseModel):
    name: str
    remote: str = ""
    branch: str = ""
    commit_hash: str = ""
    version: str = ""
    commit_date: int = 0
    enabled: bool


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class ErrorResponse(BaseModel):
    error: str
    detail: str
    errors: list[dict[str, Any]] | None = None


# --- training (A1111's create/embedding and train/embedding, and train/lora in the same style) -----------------------

class CreateEmbeddingRequest(BaseModel):
    name: str = Field(..., description="the word for prompts and the file name (letters, digits, '-', '_')")
    init_text: str = Field("*", description="the vectors start as this text's token embeddings")
    num_vectors_per_token: int = Field(1, ge=1, le=75)
    overwrite_old: bool = False


class TrainRequestBase(BaseModel):
    """What both trainers take (A1111's names where it has them)."""

    data_root: str = Field(..., description="a folder of images with .txt captions, inside the data folder or an "
                                            "--allowed-output-roots root (relative: below the data folder)")
    learn_rate: float | str = Field(..., description="one learning rate (A1111's step schedules are refused)")
    batch_size: int = Field(1, ge=1, le=64)
    steps: int = Field(100, ge=1, le=100_000)
    training_width: int = Field(512, ge=64, le=2048, description="the training resolution (square; buckets keep "
                                                                 "the area with varsize)")
    training_height: int = Field(512, ge=64, le=2048, description="must equal training_width")
    varsize: bool = Field(False, description="bucket images by aspect ratio instead of centre-cropping")
    repeats: int = Field(1, ge=1, le=1000)
    seed: int = 0
    gradient_checkpointing: bool = Field(False, description="less memory, slower steps")
    create_image_every: int = Field(0, ge=0, description="a sample image (the progress preview) every N steps")
    preview_prompt: str = Field("", description="the sample's prompt; empty: the first caption")
    preview_negative_prompt: str = ""
    preview_steps: int = Field(20, ge=1, le=limits.MAX_STEPS)
    preview_sampler_name: str = Field("DPM++ 2M", description="a sampler name from /samplers")
    preview_cfg_scale: float = Field(7.0, ge=0, le=100)
    preview_seed: int = 1


class TrainEmbeddingRequest(TrainRequestBase):
    embedding_name: str = Field(..., description="an embedding made by /create/embedding (its vector count and "
                                                 "initialization text are used), or a new name")
    learn_rate: float | str = "0.005"
    num_vectors_per_token: int = Field(1, ge=1, le=75, description="for a new name only")
    init_text: str = Field("*", description="for a new name only")


class TrainLoraRequest(TrainRequestBase):
    lora_name: str = Field(..., description="the new LoRA's file name in the LoRA folder")
    learn_rate: float | str = Field(1e-3, description="the UNet's learning rate")
    text_encoder_lr: float = Field(0.0, ge=0, description="0: the text encoders get no LoRA")
    network_dim: int = Field(8, ge=1, le=256, description="the rank")
    network_alpha: float = Field(8.0, gt=0)
    min_snr_gamma: float = Field(0.0, ge=0, description="0: off")
    activation_text: str = Field("", description="written into the card's metadata")


class CreateResponse(BaseModel):
    info: str


class TrainResponse(BaseModel):
    info: str
    filename: str | None = None
    step: int = 0
    losses: list[float] = Field(default_factory=list, description="the loss of each step run by this request")

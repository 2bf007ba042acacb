"""Load checkpoints (single-file original layout or diffusers folders) and VAE files, offline.

Models are built on the meta device and filled with ``assign=True`` from memory-mapped safetensors, so nothing
is randomly initialised and no tensor is copied more than once (twice when the dtype changes).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import builders, keymap
from .safetensors_file import ModelFileError, load_state_dict, read_shapes
from .spec import (
    UNET_PREFIX,
    VAE_PREFIX,
    Family,
    ModelSpec,
    UnknownLayoutError,
    VAESpec,
    detect,
    detect_vae,
    guess_prediction,
    v_pred_probe_key,
)

SAMPLE_SIZE = {Family.SD1: 64, Family.SD2: 64, Family.SDXL: 128, Family.SDXL_REFINER: 128}


class RecycledModelLost(ModelFileError):
    """Loading failed after the model given as ``recycle`` was partly overwritten: it must be reloaded."""


@dataclass(frozen=True)
class LoadOptions:
    allow_pickle: bool = False
    use_ema: bool = False
    prediction: str | None = None  # per-model override: "eps" or "v"
    dtype: object = None  # torch dtype to convert UNet/text encoders to while loading (None: keep the file's)
    vae_dtype: object = None
    channels_last: bool = False  # UNet and VAE 4-D weights in channels_last memory format (converted in the same copy)


@dataclass
class SDModel:
    """A loaded Stable Diffusion checkpoint: spec plus the diffusers / transformers components."""

    spec: ModelSpec
    unet: object
    vae: object
    text_encoders: list
    source: Path
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def family(self) -> Family:
        return self.spec.family

    @property
    def native_size(self) -> tuple[int, int]:
        """The (width, height) the model was trained at."""
        return native_resolution(self.spec, self.metadata)


def _target_dtype(v, dtype):
    return dtype if dtype is not None and v.is_floating_point() else v.dtype


def _owned(v, dtype, into=None, channels_last: bool = False):
    """One copy out of the file mapping (fused with the dtype and memory-format change): aligned, writable,
    file-independent.

    Zero-copy views into a memory-mapped file are not 64-byte aligned, which changes SIMD reduction order (the
    same weights would give slightly different outputs) and would tie in-place weight patches to file pages.
    ``into``: an existing tensor of the right shape, dtype and layout to copy into instead of allocating.
    """
    if into is not None:
        return into.copy_(v)
    target = _target_dtype(v, dtype)
    if channels_last and v.dim() == 4:
        import torch

        return v.to(target, memory_format=torch.channels_last, copy=True)
    return v.to(target) if v.dtype != target else v.clone()


def _convert(sd: dict, dtype, recycled: dict | None = None, channels_last: bool = False) -> dict:
    recycled = recycled or {}
    return {k: _owned(v, dtype, recycled.get(k), channels_last) for k, v in sd.items()}


def _recyclable(converted: dict, own: dict, dtype) -> dict | None:
    """``own`` (a module's tensors by name) when they can take ``converted`` exactly (same names, shapes, dtypes;
    dense in either memory format)."""
    import torch

    if own.keys() != converted.keys():
        return None
    for k, v in converted.items():
        t = own[k]
        dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
        if tuple(t.shape) != tuple(v.shape) or t.dtype != _target_dtype(v, dtype) or not dense:
            return None
    return own


def _ema_keys(sd: dict) -> dict:
    """Replace UNet weights by their EMA copies (``model_ema.`` keys with the dots removed)."""
    out = dict(sd)
    for k in [k for k in sd if k.startswith(UNET_PREFIX)]:
        ema = "model_ema.diffusion_model" + k[len(UNET_PREFIX):].replace(".", "")
        if ema in sd:
            out[k] = sd[ema]
    return out


def native_resolution(spec: ModelSpec, metadata: dict[str, str]) -> tuple[int, int]:
    """The (width, height) a checkpoint was trained at: ModelSpec's ``modelspec.resolution`` ("512x512") when
    declared, else the family's (SD1 512, SD2 512 or 768 with v-prediction, SDXL 1024)."""
    try:
        width, height = (int(v) for v in metadata["modelspec.resolution"].lower().split("x"))
        return width, height
    except (KeyError, ValueError):
        side = 8 * (96 if spec.family is Family.SD2 and spec.prediction == "v" else SAMPLE_SIZE[spec.family])
        return side, side


def file_resolution(path: Path, allow_pickle: bool = False) -> tuple[int, int] | None:
    """:func:`native_resolution` of a checkpoint from its header (single file) or UNet config (diffusers folder),
    without reading weights; None when it cannot be told."""
    path = Path(path)
    try:
        if path.is_dir():
            side = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))["sample_size"] * 8
            return side, side
        shapes, metadata = read_shapes(path, allow_pickle)
        spec = detect(shapes, metadata)
        if _sidecar_prediction(path) == "v":
            spec = replace(spec, prediction="v")
        return native_resolution(spec, metadata)
    except (OSError, ValueError, KeyError, TypeError):  # ModelFileError, UnknownLayoutError are ValueErrors
        return None


def _sample_size(spec: ModelSpec, metadata: dict[str, str]) -> int:
    """Native latent size (of the width)."""
    return native_resolution(spec, metadata)[0] // 8


def _sidecar_prediction(path: Path) -> str | None:
    """A1111-style ``<checkpoint>.yaml`` next to the file: ``parameterization: "v"`` means v-prediction."""
    yaml = path.with_suffix(".yaml")
    if not yaml.is_file():
        return None
    text = yaml.read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        if line.strip().startswith("parameterization:"):
            return "v" if line.split(":", 1)[1].strip().strip("\"'") == "v" else "eps"
    return None


def load_checkpoint(path: str | Path, options: LoadOptions = LoadOptions(), recycle: SDModel | None = None) -> SDModel:
    """Load a checkpoint file or a diffusers folder. Raises ModelFileError naming the file on any failure.

    ``recycle``: a model being discarded whose memory may hold the new weights. It is used only when the new file
    has the same architecture, names, shapes and dtypes in every component, checked before anything is written
    (then copying into memory that is already allocated and mapped is much faster than allocating it again); on
    any failure before that point ``recycle`` is untouched. Its modules must not be used afterwards.
    The weights are ordinary tensors even when a job loads the model inside ``torch.inference_mode`` (a refiner):
    inference tensors keep no version counter, which LoRA patches and blocked convolution weights rely on.
    """
    import torch

    path = Path(path)
    try:
        with torch.inference_mode(False):
            if path.is_dir():
                return _load_diffusers_folder(path, options)
            return _load_single_file(path, options, recycle)
    except ModelFileError:
        raise
    except (UnknownLayoutError, ValueError, KeyError, RuntimeError) as e:
        raise ModelFileError(f"{path.name}: cannot load as a Stable Diffusion checkpoint ({e})") from e


def _load_single_file(path: Path, options: LoadOptions, recycle: SDModel | None = None) -> SDModel:
    shapes, metadata = read_shapes(path, options.allow_pickle)
    spec = detect(shapes, metadata)
    sd = load_state_dict(path, options.allow_pickle)
    if options.use_ema:
        sd = _ema_keys(sd)
    prediction = options.prediction or _sidecar_prediction(path)
    if prediction is None:
        probe = sd.get(v_pred_probe_key(shapes) or "")
        prediction = guess_prediction(spec, float(probe.float().std(unbiased=False)) if probe is not None else None)
    spec = replace(spec, prediction=prediction)
    notes: list[str] = list(spec.notes)

    unet_sd, unmapped = keymap.convert_unet(sd, spec.unet, UNET_PREFIX)
    if unmapped:
        raise UnknownLayoutError(f"unknown UNet tensors, e.g. {unmapped[:3]}")
    vae_sd, unmapped = keymap.convert_vae(sd, spec.vae, VAE_PREFIX)
    if unmapped:
        raise UnknownLayoutError(f"unknown VAE tensors, e.g. {unmapped[:3]}")
    te_sds = []
    for te_spec in spec.text_encoders:
        te_sd, unmapped = keymap.convert_text_encoder(sd, te_spec)
        if unmapped:
            notes.append(f"ignored text encoder tensors: {unmapped[:3]}")
        te_sds.append(te_sd)
    vae_dtype = options.vae_dtype or options.dtype
    pools = _recycling_pools(recycle, spec, unet_sd, vae_sd, te_sds, options.dtype, vae_dtype)
    try:
        unet = builders.build_unet(spec.unet, spec.family,
                                   _convert(unet_sd, options.dtype, pools[0], options.channels_last),
                                   _sample_size(spec, metadata))
        del unet_sd
        vae = builders.build_vae(spec.vae, spec.vae_scale, _convert(vae_sd, vae_dtype, pools[1], options.channels_last))
        del vae_sd
        tes = [builders.build_text_encoder(te_spec, _convert(te_sd, options.dtype, pool))
               for te_spec, te_sd, pool in zip(spec.text_encoders, te_sds, pools[2:])]
    except Exception as e:
        if pools[0] is not None:
            raise RecycledModelLost(f"{path.name}: loading failed after the previous model's memory was reused ({e})") from e
        raise
    return SDModel(spec, unet, vae, tes, path, metadata, notes)


def _recycling_pools(old: SDModel | None, spec: ModelSpec, unet_sd, vae_sd, te_sds, dtype, vae_dtype) -> list:
    """Per component (UNet, VAE, text encoders…), the old model's tensors by name, or all None.

    All or nothing: the old model is either left intact or entirely overwritten with the new weights.
    """
    none = [None] * (2 + len(te_sds))
    if old is None or replace(old.spec, prediction=spec.prediction, notes=spec.notes) != spec:
        return none
    pools = [_recyclable(unet_sd, old.unet.state_dict(), dtype), _recyclable(vae_sd, old.vae.state_dict(), vae_dtype)]
    pools += [_recyclable(sd, builders.canonical_text_encoder_state(te), dtype)
              for sd, te in zip(te_sds, old.text_encoders)]
    return pools if all(p is not None for p in pools) else none


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: cannot read ({e})") from e


def _weights_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).is_file():
            return folder / name
    raise ModelFileError(f"{folder}: no {stem}.safetensors (pickle .bin weights in diffusers folders are not loaded)")


def _load_diffusers_folder(path: Path, options: LoadOptions) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    index = _read_json(path / "model_index.json")
    unet_cfg = _read_json(path / "unet" / "config.json")
    unet_spec = builders.unet_spec_from_config(unet_cfg)
    unet = builders.build_on_meta(lambda: UNet2DConditionModel.from_config(unet_cfg))
    builders.fill(unet, _convert(load_state_dict(_weights_file(path / "unet", "diffusion_pytorch_model")), options.dtype,
                                 channels_last=options.channels_last), "UNet")
    vae_cfg = _read_json(path / "vae" / "config.json")
    vae = builders.build_on_meta(lambda: AutoencoderKL.from_config(vae_cfg))
    vae_dtype = options.vae_dtype or options.dtype
    builders.fill(vae, _convert(load_state_dict(_weights_file(path / "vae", "diffusion_pytorch_model")), vae_dtype,
                                options.channels_last), "VAE")

    if unet_spec.adm_in_channels:
        family = Family.SDXL if "text_encoder" in index else Family.SDXL_REFINER
    else:
        family = Family.SD1 if unet_spec.context_dim == 768 and not unet_spec.linear_projection else Family.SD2
        if unet_spec.context_dim not in (768, 1024):
            family = Family.SD2 if unet_spec.linear_projection else Family.SD1
    te_dirs = [d for d in ("text_encoder", "text_encoder_2") if d in index]
    tes, te_specs = [], []
    for i, d in enumerate(te_dirs):
        cfg = CLIPTextConfig.from_json_file(str(path / d / "config.json"))
        te_sd = load_state_dict(_weights_file(path / d, "model"))
        cls = CLIPTextModelWithProjection if "text_projection.weight" in te_sd else CLIPTextModel
        te = builders.build_on_meta(lambda: cls(cfg))
        canonical = {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v for k, v in te_sd.items()}
        builders.fill(te, builders.text_encoder_state_for(te, _convert(canonical, options.dtype)), "text encoder")
        tes.append(te.eval().requires_grad_(False))
        openclip = family is Family.SD2 or (family is Family.SDXL and i == 1) or family is Family.SDXL_REFINER
        te_spec = builders.text_encoder_spec_from_model(te, "openclip" if openclip else "hf", "")
        if family in (Family.SDXL, Family.SDXL_REFINER):
            te_spec = replace(te_spec, default_skip=1, final_norm=False)
        te_specs.append(te_spec)  # SD2 folders hold 23 layers: their last layer is the original penultimate
    sched = path / "scheduler" / "scheduler_config.json"
    prediction = options.prediction or (
        "v" if sched.is_file() and _read_json(sched).get("prediction_type") == "v_prediction" else "eps"
    )
    variant = {4: "base", 9: "inpaint", 8: "pix2pix"}.get(unet_spec.in_channels, "base")
    spec = ModelSpec(family, variant, prediction, unet_spec, builders.vae_spec_from_config(vae_cfg), tuple(te_specs))
    unet.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    return SDModel(spec, unet, vae, tes, path, {})


def load_vae_file(path: str | Path, expected: VAESpec | None, scaling_factor: float, options: LoadOptions = LoadOptions()):
    """Load a standalone VAE: original layout (with or without ``first_stage_model.``) or diffusers layout; ordinary
    tensors also inside ``torch.inference_mode``, as :func:`load_checkpoint`."""
    import torch

    with torch.inference_mode(False):
        return _load_vae_file(Path(path), expected, scaling_factor, options)


def _load_vae_file(path: Path, expected: VAESpec | None, scaling_factor: float, options: LoadOptions):
    try:
        shapes, _ = read_shapes(path, options.allow_pickle)
        sd = load_state_dict(path, options.allow_pickle)
        dtype = options.vae_dtype or options.dtype
        if any(k.startswith("encoder.down_blocks.") or k.startswith("decoder.up_blocks.") for k in shapes):
            spec = _vae_spec_from_diffusers_shapes(shapes)
            vae_sd = sd
        else:
            prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in shapes) else ""
            spec = detect_vae(shapes, prefix)
            vae_sd, unmapped = keymap.convert_vae(sd, spec, prefix)
            if unmapped:
                raise UnknownLayoutError(f"unknown VAE tensors, e.g. {unmapped[:3]}")
        if expected is not None and (spec.latent_channels != expected.latent_channels):
            raise UnknownLayoutError(f"VAE has {spec.latent_channels} latent channels, the model needs {expected.latent_channels}")
        return builders.build_vae(spec, scaling_factor, _convert(vae_sd, dtype, channels_last=options.channels_last))
    except ModelFileError:
        raise
    except (UnknownLayoutError, ValueError, KeyError, RuntimeError) as e:
        raise ModelFileError(f"{path.name}: cannot load as a VAE ({e})") from e


def _vae_spec_from_diffusers_shapes(shapes: dict) -> VAESpec:
    import re

    levels = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    layers = len({m.group(1) for k in shapes if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))})
    return VAESpec(
        block_out_channels=tuple(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in levels),
        layers_per_block=layers,
        latent_channels=shapes["post_quant_conv.weight"][0],
        in_channels=shapes["encoder.conv_in.weight"][1],
        mid_attention="encoder.mid_block.attentions.0.to_q.weight" in shapes,
    )


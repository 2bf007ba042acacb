"""Write loaded models back to the single-file original (LDM) layout that users share."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from . import builders, keymap
from .spec import SD1_TE, SD2_TE, SDXL_TE1, SDXL_TE2, REFINER_TE, UNET_PREFIX, VAE_PREFIX, Family

TE_PREFIXES = {
    Family.SD1: [(SD1_TE, "hf")],
    Family.SD2: [(SD2_TE, "openclip")],
    Family.SDXL: [(SDXL_TE1, "hf"), (SDXL_TE2, "openclip")],
    Family.SDXL_REFINER: [(REFINER_TE, "openclip")],
}


def original_state_dict(unet, vae, text_encoders, family: Family, dtype=None) -> dict:
    """Tensors of the given diffusers/transformers modules under their original single-file names."""
    out = keymap.export_unet(unet.state_dict(), builders.unet_spec_from_config(unet.config), UNET_PREFIX)
    out.update(keymap.export_vae(vae.state_dict(), builders.vae_spec_from_config(vae.config), VAE_PREFIX))
    for te, (prefix, layout) in zip(text_encoders, TE_PREFIXES[family], strict=True):
        spec = builders.text_encoder_spec_from_model(te, layout, prefix)
        out.update(keymap.export_text_encoder(builders.canonical_text_encoder_state(te), spec))
    if dtype is not None:
        out = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in out.items()}
    return {k: v.detach().contiguous() for k, v in out.items()}


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a safetensors file (a crash never leaves a half-written file behind)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is shared like any other
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_checkpoint(path, unet, vae, text_encoders, family: Family, metadata: dict[str, str] | None = None, dtype=None) -> Path:
    """Write a single-file checkpoint in the original key layout."""
    return save_safetensors(original_state_dict(unet, vae, text_encoders, family, dtype), path, metadata)


def export_sd1_checkpoint(path, unet, vae, text_encoder, metadata: dict[str, str] | None = None, dtype=None) -> Path:
    """Write an SD1-layout single-file checkpoint (used for the bundled demo model)."""
    return export_checkpoint(path, unet, vae, [text_encoder], Family.SD1, metadata, dtype)


def export_model(model, path, metadata: dict[str, str] | None = None, dtype=None) -> Path:
    """Write a loaded :class:`~modules.models.loader.SDModel` back to a single file (v-prediction is declared)."""
    metadata = dict(metadata or {})
    if model.spec.prediction == "v":
        metadata.setdefault("modelspec.prediction_type", "v")
    return export_checkpoint(path, model.unet, model.vae, model.text_encoders, model.family, metadata, dtype)

"""Network files on disk: safe loading and the LoRA listing (hashes come from the app's disk-backed HashCache).

Everything here except `load_tensor_file` works on file bytes alone, so listing LoRAs does not import torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.hashing import HashCache
from modules.models.safetensors_file import PICKLE_SUFFIXES, SafetensorsHeader, TensorEntry, read_header
from modules.networks.user_metadata import tag_frequency

log = logging.getLogger(__name__)

TRIGGER_WORD_COUNT = 10


class PickleNotAllowedError(ValueError):
    """A pickle-based file was refused because pickle loading is not enabled."""


def file_identity(path: str | os.PathLike) -> str:
    """A string that changes when the file at `path` is replaced or modified (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def load_tensor_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """Load a tensor file into CPU memory: (state dict, safetensors metadata).

    `.safetensors` always; pickle formats (.pt/.pth/.ckpt/.bin) only with `allow_pickle`, and even then through
    `torch.load(weights_only=True)`, which refuses arbitrary objects.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        read_header(path)  # a clear error for a corrupt or truncated file
        try:
            return load_file(path, device="cpu"), dict(read_header(path).metadata)
        except SafetensorError as e:
            raise ValueError(f"{path}: unreadable safetensors file ({e})") from e
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleNotAllowedError(
                f"{path}: '{suffix}' files are Python pickles that can run arbitrary code when loaded; "
                "convert it to .safetensors, or start with --allow-pickle to load it (restricted to tensors "
                "and plain data)"
            )
        import pickle

        import torch

        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            raise ValueError(f"{path}: could not be loaded as a weights-only pickle ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
        return data, {}
    raise ValueError(f"{path}: unsupported file type '{suffix}'")


@dataclass(frozen=True)
class LoraInfo:
    """One LoRA-family file as listed to users (A1111's /sdapi/v1/loras fields plus what the metadata says)."""

    name: str
    path: Path
    alias: str
    base_model: str | None
    trigger_words: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


_BASE_MODEL_PREFIXES = (
    ("sdxl", "SDXL"),
    ("stable-diffusion-xl", "SDXL"),
    ("sd_v2", "SD2"),
    ("stable-diffusion-v2", "SD2"),
    ("sd_v1", "SD1"),
    ("stable-diffusion-v1", "SD1"),
)
_CONTEXT_FAMILIES = {768: "SD1", 1024: "SD2", 2048: "SDXL"}


def _family_from_text(value: str) -> str:
    lowered = value.strip().lower()
    for prefix, family in _BASE_MODEL_PREFIXES:
        if lowered.startswith(prefix):
            return family
    return value


def _family_from_keys(tensors: Mapping[str, TensorEntry]) -> str | None:
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in tensors):
        return "SDXL"
    down_widths = {
        key: info.shape[1]
        for key, info in tensors.items()
        if key.endswith((".lora_down.weight", ".lora_A.weight")) and len(info.shape) == 2
    }
    for key, width in down_widths.items():
        if "attn2_to_k" in key or "attn2.to_k" in key:
            return _CONTEXT_FAMILIES.get(width)
    for key, width in down_widths.items():
        if "q_proj" in key:
            return {768: "SD1", 1024: "SD2"}.get(width)
    return None


def base_model_of(header: SafetensorsHeader) -> str | None:
    """The base-model family a LoRA was trained for: from its metadata, else from its key names and shapes.

    Returns "SD1", "SD2", "SDXL", the raw metadata value for other architectures, or None when unknown.
    """
    meta = header.metadata
    if meta.get("ss_base_model_version"):
        return _family_from_text(meta["ss_base_model_version"])
    if meta.get("modelspec.architecture"):
        return _family_from_text(meta["modelspec.architecture"].split("/")[0])
    if meta.get("ss_v2") == "True":
        return "SD2"
    return _family_from_keys(header.tensors)


def trigger_words_of(metadata: Mapping[str, str], count: int = TRIGGER_WORD_COUNT) -> tuple[str, ...]:
    """The most frequent training tags (kohya's `ss_tag_frequency`, summed over dataset folders)."""
    return tuple(tag for tag, _ in tag_frequency(metadata, count))


def describe_lora(path: str | os.PathLike) -> LoraInfo:
    """Read a LoRA file's header and describe it (name = file stem)."""
    path = Path(path)
    header = read_header(path)
    metadata = {k: str(v) for k, v in header.metadata.items()}
    return LoraInfo(
        name=path.stem,
        path=path,
        alias=metadata.get("ss_output_name") or path.stem,
        base_model=base_model_of(header),
        trigger_words=trigger_words_of(metadata),
        metadata=metadata,
    )


class LoraCatalog:
    """The LoRA files under one folder (recursive `*.safetensors`), with lazily computed and cached hashes."""

    def __init__(self, root: str | os.PathLike, hashes: HashCache):
        self.root = Path(root)
        self._hashes = hashes
        self._items: tuple[LoraInfo, ...] = ()
        self.errors: dict[Path, str] = {}

    @property
    def items(self) -> tuple[LoraInfo, ...]:
        """The LoRAs found by the last `refresh()`, sorted by path."""
        return self._items

    def refresh(self) -> tuple[LoraInfo, ...]:
        """Re-scan the folder. Unreadable files are left out and recorded in `errors` (and logged)."""
        items, errors = [], {}
        paths = sorted(self.root.rglob("*.safetensors")) if self.root.is_dir() else []
        for path in paths:
            try:
                items.append(describe_lora(path))
            except (OSError, ValueError) as e:
                errors[path] = str(e)
                log.warning("skipping LoRA %s: %s", path, e)
        self._items, self.errors = tuple(items), errors
        return self._items

    def find(self, name: str) -> LoraInfo | None:
        """The LoRA called `name` (file stem first, then the training alias); None if there is none."""
        for attr in ("name", "alias"):
            for info in self._items:
                if getattr(info, attr) == name:
                    return info
        return None

    def hash(self, info: LoraInfo) -> str:
        """The full addnet sha256 of a listed LoRA (computed on first use, cached by path+size+mtime)."""
        return self._hashes.get(info.path, "addnet")

    def short_hash(self, info: LoraInfo) -> str:
        """The 12-hex-digit hash A1111 writes in infotext ("Lora hashes")."""
        return self.hash(info)[:12]

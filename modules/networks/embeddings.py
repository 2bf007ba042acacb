"""Textual-inversion embeddings: the A1111 file formats, a typed record per embedding, and folder discovery.

Formats: `.safetensors` with `emb_params` (SD1/SD2), `string_to_param.*`, or `clip_l` + `clip_g` (SDXL);
A1111 `.pt` dicts with `string_to_param`; diffusers' one-token `.bin`/`.safetensors` ({token: vector}).
Pickle files (`.pt`, `.bin`) load only with `allow_pickle=True`, and then as weights-only.
Vectors are kept per text-encoder role ("te1" = CLIP-L / OpenCLIP-H, "te2" = SDXL's OpenCLIP-bigG).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.models.safetensors_file import PICKLE_SUFFIXES, read_header
from modules.networks.catalog import PickleNotAllowedError, load_tensor_file

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
_FAMILIES = {(("te1", 768),): "SD1", (("te1", 1024),): "SD2", (("te1", 768), ("te2", 1280)): "SDXL"}
_SDXL_KEYS = {"clip_l": "te1", "clip_g": "te2"}
_PARAM_PREFIX = "string_to_param."


@dataclass(frozen=True, eq=False)
class Embedding:
    """One textual-inversion embedding: its name (file stem) and vectors (count × dim) per text-encoder role."""

    name: str
    vectors: Mapping[str, torch.Tensor]
    path: Path | None = None

    @property
    def vector_count(self) -> int:
        """How many token positions the embedding takes in a prompt."""
        return next(iter(self.vectors.values())).shape[0]

    @property
    def dims(self) -> dict[str, int]:
        """Vector width per role, e.g. {"te1": 768} or {"te1": 768, "te2": 1280}."""
        return {role: v.shape[1] for role, v in sorted(self.vectors.items())}

    @property
    def family(self) -> str:
        """The model family the vectors fit: SD1 (768; for SDXL only the CLIP-L half), SD2 (1024),
        SDXL (768 + 1280), or "unknown"."""
        return _FAMILIES.get(tuple(self.dims.items()), "unknown")

    def fits(self, encoder_dims: Mapping[str, int]) -> bool:
        """Whether the embedding has vectors of the right width for every text encoder of a model."""
        dims = self.dims
        return all(dims.get(role) == width for role, width in encoder_dims.items())


def _as_vectors(value: Any, what: str) -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor) or value.dim() not in (1, 2) or value.numel() == 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{what} is not a vector or a list of vectors ({shape})")
    value = value.detach()
    return value.unsqueeze(0) if value.dim() == 1 else value


def _single(items: Mapping[str, Any], what: str) -> Any:
    if len(items) != 1:
        raise ValueError(f"expected one {what}, found {len(items)}")
    return next(iter(items.values()))


def embedding_from_state(data: Mapping[str, Any], name: str, path: Path | None = None) -> Embedding:
    """Interpret a loaded embedding file (any supported format) as an `Embedding`. Raises ValueError."""
    if data.keys() & _SDXL_KEYS.keys():
        vectors = {role: _as_vectors(data[key], key) for key, role in _SDXL_KEYS.items() if key in data}
        if len({v.shape[0] for v in vectors.values()}) != 1:
            shapes = {role: tuple(v.shape) for role, v in vectors.items()}
            raise ValueError(f"clip_l and clip_g have different vector counts: {shapes}")
    elif "emb_params" in data:
        vectors = {"te1": _as_vectors(data["emb_params"], "emb_params")}
    elif isinstance(data.get("string_to_param"), Mapping):
        vectors = {"te1": _as_vectors(_single(data["string_to_param"], "string_to_param entry"), "string_to_param")}
    elif flat := {k: v for k, v in data.items() if k.startswith(_PARAM_PREFIX)}:
        vectors = {"te1": _as_vectors(_single(flat, "string_to_param entry"), "string_to_param")}
    elif len(data) == 1:
        key = next(iter(data))
        vectors = {"te1": _as_vectors(data[key], f"tensor {key!r}")}
    else:
        raise ValueError(f"not a textual-inversion embedding (keys: {sorted(data)[:8]})")
    return Embedding(name=name, vectors=vectors, path=path)


def _embedding_tensor_names(names: Sequence[str]) -> list[str]:
    """Which tensors of a safetensors file hold embedding vectors (decided from the header alone)."""
    wanted = [n for n in names if n in _SDXL_KEYS or n == "emb_params" or n.startswith(_PARAM_PREFIX)]
    if not wanted and len(names) == 1:
        wanted = list(names)
    if not wanted:
        raise ValueError(f"not a textual-inversion embedding (tensors: {sorted(names)[:8]})")
    return wanted


def load_embedding(path: str | os.PathLike, *, allow_pickle: bool = False) -> Embedding:
    """Load one embedding file; pickles (.pt/.bin) need `allow_pickle`. Raises ValueError (or its subclass
    PickleNotAllowedError) with the file named."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import SafetensorError, safe_open

            names = _embedding_tensor_names(list(read_header(path).tensors))
            try:
                with safe_open(path, framework="pt", device="cpu") as f:
                    data = {n: f.get_tensor(n) for n in names}
            except SafetensorError as e:
                raise ValueError(f"unreadable safetensors file ({e})") from e
        else:
            data, _ = load_tensor_file(path, allow_pickle=allow_pickle)
        return embedding_from_state(data, path.stem, path)
    except PickleNotAllowedError:
        raise
    except ValueError as e:
        message = str(e)
        raise ValueError(message if str(path) in message else f"{path}: {message}") from e


@dataclass(frozen=True)
class EmbeddingScan:
    """The result of scanning embedding folders: embeddings by name, and files left out with the reason."""

    embeddings: Mapping[str, Embedding] = field(default_factory=dict)
    skipped: Mapping[Path, str] = field(default_factory=dict)


def default_embedding_dirs(root: str | os.PathLike) -> tuple[Path, Path]:
    """The folders users keep embeddings in: A1111's `embeddings/`, then `models/embeddings/`."""
    root = Path(root)
    return root / "embeddings", root / "models" / "embeddings"


def scan_embeddings(dirs: Sequence[str | os.PathLike], *, allow_pickle: bool = False) -> EmbeddingScan:
    """Load every embedding under `dirs` (recursively). The first file of a name wins; unreadable, pickled
    (without `allow_pickle`) and duplicate files are reported in `skipped` and logged."""
    embeddings: dict[str, Embedding] = {}
    skipped: dict[Path, str] = {}
    for folder in map(Path, dirs):
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in EMBEDDING_SUFFIXES and p.is_file()):
            if path.stem in embeddings:
                skipped[path] = f"duplicate name {path.stem!r}, already loaded from {embeddings[path.stem].path}"
                continue
            try:
                embeddings[path.stem] = load_embedding(path, allow_pickle=allow_pickle)
            except (OSError, ValueError) as e:
                skipped[path] = str(e)
    pickles = [p for p, why in skipped.items() if p.suffix.lower() in PICKLE_SUFFIXES and "--allow-pickle" in why]
    if pickles:
        log.warning("%d pickled embedding(s) not loaded (start with --allow-pickle to load them)", len(pickles))
    for path, why in skipped.items():
        if path not in pickles:
            log.warning("embedding %s skipped: %s", path, why)
    return EmbeddingScan(embeddings=embeddings, skipped=skipped)
